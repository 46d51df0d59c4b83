//! Reading the machine: per-process CPU, memory, PSS, disk writes and file descriptors, by
//! component of the cluster.

use std::collections::HashMap;
use std::path::Path;

/// Which of our processes a pid belongs to (nearest ancestor we know), for CPU attribution.
pub(crate) fn component_of(pid: sysinfo::Pid, sys: &sysinfo::System, roots: &HashMap<u32, String>) -> Option<String> {
    let me = sys.process(pid)?;
    let mut cur = Some(pid);
    let mut descendant = false;
    while let Some(p) = cur {
        if let Some(name) = roots.get(&p.as_u32()) {
            return Some(if descendant { format!("{} ({name})", me.name().to_string_lossy()) } else { name.clone() });
        }
        descendant = true;
        cur = sys.process(p).and_then(|pr| pr.parent());
    }
    None
}

/// The first number after `key` on its line in a `/proc` key/value file (`Pss:`, `MemTotal:`,
/// `write_bytes:`, ...).
pub(crate) fn proc_field<T: std::str::FromStr>(text: &str, key: &str) -> Option<T> {
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// A process' proportional set size from `/proc/<pid>/smaps_rollup`, KiB (0 if unreadable).
pub(crate) fn pss_kib(pid: u32) -> f64 {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    proc_field(&t, "Pss:").unwrap_or(0.0)
}

/// The machine's memory in use, MemTotal − MemAvailable from `/proc/meminfo`, MiB.
pub(crate) fn machine_used_mib() -> f64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |k: &str| proc_field::<f64>(&m, k).unwrap_or(0.0);
    (kib("MemTotal:") - kib("MemAvailable:")) / 1024.0
}

/// Bytes a process (with its reaped children) sent to storage, less those cancelled by
/// truncating or deleting dirty pages before writeback: `/proc/<pid>/io`.
pub(crate) fn disk_write_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let bytes = |k: &str| proc_field::<u64>(&io, k).unwrap_or(0);
    bytes("write_bytes:").saturating_sub(bytes("cancelled_write_bytes:"))
}

/// A process' CPU time with its reaped children (utime + stime + cutime + cstime), seconds;
/// Linux reports them in USER_HZ = 100 ticks per second.
pub(crate) fn cpu_secs_with_children(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return 0.0 };
    // Fields after the command name start at field 3 (state); utime is field 14.
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11..15).map_or(0.0, |v| v.iter().filter_map(|x| x.parse::<f64>().ok()).sum::<f64>() / 100.0)
}

pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}
