//! `ember-agent`: the first process of an Ember VM. Takes its host connection from fd 3 and hands
//! it to [`ember_agent::agent::run`]. Run as `ember-agent container-init` (by the agent itself), it
//! is [`ember_agent::container::init`] instead; as `ember-agent runtime-template`, a runtime
//! template's launcher ([`ember_agent::container::init::template_main`]).

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;

use ember_agent::agent::{self, HOST_FD};
use ember_agent::container::init;
use ember_stdx::error_chain;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::stat::{fstat, SFlag};

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == init::ARG)
    {
        return init::main();
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == init::TEMPLATE_ARG)
    {
        return init::template_main();
    }
    let is_socket = fcntl(HOST_FD, FcntlArg::F_GETFD).is_ok()
        && fstat(HOST_FD).is_ok_and(|st| {
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK
        });
    if !is_socket {
        eprintln!("ember-agent: fd {HOST_FD} is not a socket; start me through an Ember VM driver");
        return ExitCode::from(2);
    }
    // The driver hands fd 3 over without close-on-exec, as an exec needs it; kept so, every
    // container's init and runtime would inherit the host connection.
    if let Err(err) = fcntl(HOST_FD, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)) {
        eprintln!("ember-agent: cannot make fd {HOST_FD} close-on-exec: {err}");
        return ExitCode::FAILURE;
    }
    // SAFETY: fd 3 is open (checked above) and is a socket the driver passed to this process for
    // it alone; nothing else in this process refers to it, so the OwnedFd is its only owner.
    #[allow(unsafe_code)]
    let fd = unsafe { OwnedFd::from_raw_fd(HOST_FD) };
    let stream = std::os::unix::net::UnixStream::from(fd);
    // Each container holds a few descriptors here (its Runtime API socket, log pipe, cgroup
    // counter files): a VM with many containers needs more than the usual soft limit of 1024.
    // Containers get Lambda's limit back (`init::CONTAINER_OPEN_FILES`).
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }

    // To stderr, which is the server's: the VM's id on every line, warnings and errors unless
    // the driver passed a filter (`EMBER_AGENT_LOG`).
    let filter = std::env::var("EMBER_AGENT_LOG").unwrap_or_else(|_| "warn".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let vm_id = std::env::var("EMBER_VM_ID").unwrap_or_default();
    let _vm = tracing::info_span!("agent", vm_id = %vm_id).entered();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ember-agent: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        Ok::<_, std::io::Error>(agent::run(stream).await)
    });
    match result {
        Ok(Ok(_)) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            eprintln!("ember-agent: {}", error_chain(&err));
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("ember-agent: cannot use fd {HOST_FD}: {err}");
            ExitCode::FAILURE
        }
    }
}
