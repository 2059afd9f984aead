//! Readers of `/proc`: the few per-process facts the reaper and the process-group isolation
//! need.

use std::fs;

/// What `/proc/<pid>/stat` says of one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// One-letter state; `Z` is a zombie.
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// Process group id.
    pub pgrp: i32,
    /// User plus system cpu time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, in pages.
    pub rss_pages: u64,
    /// When it started, in clock ticks after boot: with the pid, identifies a process.
    pub start_ticks: u64,
    /// Where its command line lies in its memory, start and end (0, 0 where the kernel does
    /// not say, before 3.5, or the reader may not see it).
    pub args: (u64, u64),
}

/// Reads `/proc/<pid>/stat`; `None` when the process is gone (fully reaped) or unreadable.
pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses one `stat` line. The command name may hold spaces and parentheses, so fields are
/// counted from its last `)`.
fn parse_stat(line: &str) -> Option<ProcStat> {
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12) ... starttime(19)
    // ... rss(21) ... arg_start(45) arg_end(46).
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        cpu_ticks: num(11)? + num(12)?,
        rss_pages: num(21)?,
        start_ticks: num(19)?,
        args: (num(45).unwrap_or(0), num(46).unwrap_or(0)),
    })
}

/// Every pid in `/proc` (processes, not threads).
pub(crate) fn all_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live (non-zombie) processes whose process group is `pgrp`.
pub(crate) fn group_members(pgrp: i32) -> Vec<(i32, ProcStat)> {
    all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .filter(|(_, s)| s.pgrp == pgrp && s.state != 'Z' && s.state != 'X')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let line = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 \
                    100 1000000 250 18446744073709551615";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 42);
        assert_eq!(s.cpu_ticks, 10);
        assert_eq!(s.rss_pages, 250);
        assert_eq!(s.start_ticks, 100);
    }

    #[test]
    fn this_process_is_readable() {
        let me = std::process::id() as i32;
        let s = stat(me).expect("own stat");
        assert_ne!(s.state, 'Z');
        assert!(all_pids().contains(&me));
    }
}
