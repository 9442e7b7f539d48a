//! The process's own resource readings for `/v1/metrics`, from `/proc/self`
//! where there is one (Linux); elsewhere each reading is absent.

/// Resident memory in bytes: `VmRSS` of `/proc/self/status`.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_rss_bytes(&status)
}

/// Open file descriptors: the entries of `/proc/self/fd` (the one this
/// count opens included, as other exporters count it).
pub fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.count() as u64)
}

/// `VmRSS:   1234 kB` as bytes.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_resident_memory_is_read_from_vm_rss_in_kib() {
        let status = "Name:\ttokend\nVmPeak:\t  9 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(vm_rss_bytes(status), Some(1234 * 1024));
        assert_eq!(vm_rss_bytes("Name:\ttokend\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn metrics_process_readings_exist_on_linux() {
        assert!(resident_memory_bytes().unwrap() > 0);
        assert!(open_fds().unwrap() >= 3);
    }
}
