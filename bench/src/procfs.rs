//! What the kernel says about the daemon process: resident memory, CPU time
//! and context switches, read from /proc.

/// Resident memory (VmRSS) in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    status_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Peak resident memory (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64, String> {
    status_field(&format!("/proc/{pid}/status"), "VmHWM:")
}

fn status_field(path: &str, key: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{path} has no {key}"))
}

/// CPU time of the whole process (all threads, user + system), in seconds.
pub fn cpu_secs(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // Fields after the command name (which may contain spaces) in parentheses;
    // utime and stime are fields 14 and 15, i.e. 12th and 13th after ")".
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
        return Err(format!("{path} is not in the expected format"));
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((utime + stime) as f64 / hz)
}

/// Context switches summed over the process's live threads: (voluntary,
/// involuntary). Voluntary switches are sleeps, i.e. each is one wake-up.
pub fn context_switches(pid: u32) -> Result<(u64, u64), String> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let (mut voluntary, mut involuntary) = (0, 0);
    for task in tasks.flatten() {
        let status = task.path().join("status");
        let status = status.to_string_lossy();
        // A thread may exit between listing and reading: skip it.
        voluntary += status_field(&status, "voluntary_ctxt_switches:").unwrap_or(0);
        involuntary += status_field(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0);
    }
    Ok((voluntary, involuntary))
}

/// Voluntary context switches of each live thread, by thread id.
pub fn thread_switches(pid: u32) -> Result<std::collections::HashMap<String, u64>, String> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let mut out = std::collections::HashMap::new();
    for task in tasks.flatten() {
        let status = task.path().join("status");
        if let Ok(n) = status_field(&status.to_string_lossy(), "voluntary_ctxt_switches:") {
            out.insert(task.file_name().to_string_lossy().into_owned(), n);
        }
    }
    Ok(out)
}

/// CPU time of a process and of its children it has waited for (user +
/// system), and its parent's pid: fields 4, 14–17 of /proc/PID/stat.
fn stat_times(pid: u32) -> Result<(u32, f64), String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    let (Some(ppid), Some(u), Some(s), Some(cu), Some(cs)) =
        (num(1), num(11), num(12), num(13), num(14))
    else {
        return Err(format!("{path} is not in the expected format"));
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ppid as u32, (u + s + cu + cs) as f64 / hz))
}

/// CPU time of a process tree one level deep (a server and its workers):
/// the process with the children it has reaped, plus its live children.
pub fn tree_cpu_secs(pid: u32) -> Result<f64, String> {
    let (_, mut total) = stat_times(pid)?;
    let procs = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    for p in procs.flatten() {
        let Some(child) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process may exit between listing and reading: skip it.
        if let Ok((ppid, secs)) = stat_times(child)
            && ppid == pid
        {
            total += secs;
        }
    }
    Ok(total)
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
