//! Readers of `/proc`: the few per-process facts the reaper and the process-group isolation
//! need, and the sockets that listen, for the agent's watch of tasks' ports.

use std::collections::HashMap;
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

/// A socket that takes traffic on a local port: a TCP socket in `LISTEN`, or a UDP socket
/// bound to a port and connected to no peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Listening {
    /// `TCP` or `UDP`.
    pub proto: &'static str,
    /// The local port.
    pub port: u16,
}

/// The listening sockets of this network namespace by inode. A UDP socket on a port of the
/// kernel's ephemeral range (`ip_local_port_range`) is left out: the kernel binds a client's
/// unconnected socket to one on its first send, so it says nothing of a server.
pub(crate) fn listening_sockets() -> HashMap<u64, Listening> {
    let ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    let mut found = HashMap::new();
    for (file, proto) in [
        ("/proc/net/tcp", "TCP"),
        ("/proc/net/tcp6", "TCP"),
        ("/proc/net/udp", "UDP"),
        ("/proc/net/udp6", "UDP"),
    ] {
        if let Ok(text) = fs::read_to_string(file) {
            found.extend(parse_net(&text, proto, ephemeral));
        }
    }
    found
}

/// The listening sockets of one `/proc/net/{tcp,tcp6,udp,udp6}` table.
fn parse_net<'a>(
    text: &'a str,
    proto: &'static str,
    ephemeral: (u16, u16),
) -> impl Iterator<Item = (u64, Listening)> + 'a {
    // TCP_LISTEN, and TCP_CLOSE: the state of a UDP socket with no peer.
    const LISTEN: &str = "0A";
    const UNCONNECTED: &str = "07";
    let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    text.lines().skip(1).filter_map(move |line| {
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, state) = (f.get(1)?, f.get(2)?, *f.get(3)?);
        let inode: u64 = f.get(9)?.parse().ok()?;
        let port = port_of(local)?;
        let listens = match proto {
            "TCP" => state == LISTEN,
            _ => {
                state == UNCONNECTED
                    && port != 0
                    && port_of(remote) == Some(0)
                    && !(ephemeral.0..=ephemeral.1).contains(&port)
            }
        };
        (listens && inode != 0).then_some((inode, Listening { proto, port }))
    })
}

/// The inodes of the sockets process `pid` holds open (none once it is gone).
pub(crate) fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let target = fs::read_link(e.ok()?.path()).ok()?;
        let t = target.to_str()?;
        t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
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

    #[test]
    fn listening_tcp_and_bound_udp_sockets_are_found_and_clients_are_not() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 112 1 0 20 4 30 10 -1
";
        let found: Vec<_> = parse_net(tcp, "TCP", (32768, 60999)).collect();
        assert_eq!(
            found,
            [(
                111,
                Listening {
                    proto: "TCP",
                    port: 8080
                }
            )]
        );

        let udp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  10: 00000000000000000000000000000000:1389 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 201 2 0 0
  11: 00000000000000000000000000000000:9C41 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 202 2 0 0
  12: 0000000000000000FFFF00000100007F:7A12 0000000000000000FFFF00000100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 203 2 0 0
";
        let found: Vec<_> = parse_net(udp6, "UDP", (32768, 60999)).collect();
        // 5001 bound by a server; 40001 by a client's first send; 31250 connected to a peer.
        assert_eq!(
            found,
            [(
                201,
                Listening {
                    proto: "UDP",
                    port: 5001
                }
            )]
        );
    }

    #[test]
    fn a_process_shows_the_inodes_of_its_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mine = socket_inodes(std::process::id() as i32);
        let listening = listening_sockets();
        assert!(
            mine.iter()
                .any(|i| listening.get(i) == Some(&Listening { proto: "TCP", port })),
            "port {port} among {mine:?}"
        );
    }
}
