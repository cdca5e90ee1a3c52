//! Helpers the agent's modules share, below all of them: the resident memory of the processes
//! a VM's agent can see.

use std::path::Path;

/// Resident memory of every process this agent can see under `proc` (in a VM: the VM's own),
/// rounded up to whole MB. Processes that vanish while being read are skipped.
pub fn resident_mb(proc: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return 0;
    };
    let kb: u64 = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter_map(|status| vm_rss_kb(&status))
        .sum();
    kb.div_ceil(1024)
}

/// The `VmRSS` line of a `/proc/<pid>/status`, in kB. Kernel threads have none.
fn vm_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tcat\nVmPeak:\t  5000 kB\nVmRSS:\t    1536 kB\nThreads:\t1\n";
        assert_eq!(vm_rss_kb(status), Some(1536));
        assert_eq!(vm_rss_kb("Name:\tkthreadd\nThreads:\t1\n"), None);
        assert_eq!(vm_rss_kb("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn sums_resident_memory_of_a_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        for (pid, rss) in [("1", "VmRSS:\t 1024 kB\n"), ("42", "VmRSS:\t 1 kB\n")] {
            std::fs::create_dir(dir.path().join(pid)).unwrap();
            std::fs::write(dir.path().join(pid).join("status"), rss).unwrap();
        }
        std::fs::create_dir(dir.path().join("self")).unwrap();
        std::fs::write(dir.path().join("self/status"), "VmRSS:\t 9999999 kB\n").unwrap();
        assert_eq!(
            resident_mb(dir.path()),
            2,
            "1025 kB round up to 2 MB; `self` skipped"
        );
    }
}
