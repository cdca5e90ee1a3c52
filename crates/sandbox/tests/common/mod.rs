//! What the privileged integration tests share: the rule for running without root.

/// Whether a test that needs root may run. As root: yes. Otherwise the test fails loudly, unless
/// `EMBER_TEST_UNPRIVILEGED=1` says skipping is intended (CI runs as root and never sets it).
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("EMBER_TEST_UNPRIVILEGED").is_some_and(|v| v == "1") {
        eprintln!("not root and EMBER_TEST_UNPRIVILEGED=1: skipping this privileged test");
        return false;
    }
    panic!("this test needs root (CI runs as root); set EMBER_TEST_UNPRIVILEGED=1 to skip it");
}
