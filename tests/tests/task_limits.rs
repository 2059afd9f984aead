//! The ports and disk a task was given are enforced by its agent: a task that listens on a
//! port it was not given, or whose sandbox grows past its `disk`, is killed and fails with a
//! reason saying which; agent flags turn each off.

use std::time::Duration;

use mesofs_tests::{can_run, process_running, Dev, Mounted};

/// A command that listens on TCP port `port` (0: one the kernel picks), prints the port and
/// sleeps; `sleep` names the process.
fn tcp_listener(port: &str, sleep: u32) -> String {
    format!(
        "exec perl -MIO::Socket::INET -e '\"'\"'$s = IO::Socket::INET->new(LocalAddr => \"127.0.0.1\", \
         LocalPort => {port}, Listen => 1, ReuseAddr => 1) or die \"listen: $!\"; $| = 1; \
         print $s->sockport, \"\\n\"; sleep {sleep}'\"'\"'"
    )
}

/// A UDP port that nothing uses now, outside the kernel's ephemeral range.
fn free_udp_port() -> u16 {
    // Tests run in parallel: each starts looking at a place of its own.
    let start = (std::process::id() % 10000) as u16;
    (0..10000)
        .map(|i| 20000 + (start + i) % 10000)
        .find(|&p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok())
        .expect("a free UDP port")
}

#[test]
fn a_task_listening_on_a_port_it_was_not_given_fails_naming_the_port_and_its_own_port_is_fine() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::with_framework(&[]);
    // Listens on its own port: lawful.
    dev.launch(
        "f",
        &format!(
            "name=own ports=1 cpus=0.1 mem=32 -- {}",
            tcp_listener("$ENV{PORT0}", 641)
        ),
    );
    dev.wait_running("f", "own");
    let own_port = dev.status_json("f", "own")["ports"][0].to_string();
    dev.wait_for_file(
        "frameworks/f/tasks/own/stdout",
        &own_port,
        Duration::from_secs(30),
    );

    // Listens on a port the kernel picks, given none.
    dev.launch(
        "f",
        &format!("name=stray cpus=0.1 mem=32 -- {}", tcp_listener("0", 643)),
    );
    let (state, status) = dev.end_of("f", "stray");
    assert_eq!(state, "TASK_FAILED", "{status}");
    assert_eq!(status["reason"], "REASON_CONTAINER_LIMITATION", "{status}");
    let port = dev.read("frameworks/f/tasks/stray/stdout");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "listens on TCP port {port}, which it was not given"
        )),
        "{message}"
    );
    assert!(!process_running("sleep 643"));

    // A UDP server on a port it was not given.
    let udp = free_udp_port();
    dev.launch(
        "f",
        &format!(
            "name=udp cpus=0.1 mem=32 -- exec perl -MIO::Socket::INET -e '\"'\"'$s = IO::Socket::INET->new(LocalAddr => \"127.0.0.1\", \
             LocalPort => {udp}, Proto => \"udp\") or die \"bind: $!\"; sleep 647'\"'\"'"
        ),
    );
    let (state, status) = dev.end_of("f", "udp");
    assert_eq!(state, "TASK_FAILED", "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains(&format!("listens on UDP port {udp}")),
        "{status}"
    );

    // Every look at the stray's sockets looked at the lawful task's too.
    assert_eq!(dev.read("frameworks/f/tasks/own/state"), "TASK_RUNNING");
    dev.sh_ok("echo > frameworks/f/tasks/own/kill");
    assert_eq!(dev.end_of("f", "own").0, "TASK_KILLED");
}

#[test]
fn a_task_whose_sandbox_grows_past_its_disk_fails_with_the_disk_reason() {
    if !can_run() {
        return;
    }
    let dev = Dev::with_framework(&[]);
    dev.launch(
        "f",
        "name=hog disk=1 cpus=0.1 mem=32 -- head -c 3000000 /dev/zero > ballast; sleep 653",
    );
    let (state, status) = dev.end_of("f", "hog");
    assert_eq!(state, "TASK_FAILED", "{status}");
    assert_eq!(
        status["reason"], "REASON_CONTAINER_LIMITATION_DISK",
        "{status}"
    );
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("more than its disk of 1 MB"),
        "{status}"
    );
    assert!(!process_running("sleep 653"));
}

#[test]
fn limits_are_enforced_on_tasks_a_restarted_agent_takes_back() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::with_framework(&[]);
    // Listens only once the test says so, after the agent's SIGKILL and restart.
    dev.launch(
        "f",
        &format!(
            "name=later cpus=0.1 mem=32 -- while [ ! -e go ]; do sleep 0.05; done; {}",
            tcp_listener("0", 659)
        ),
    );
    dev.wait_running("f", "later");
    let id = dev.status_json("f", "later")["id"]
        .as_str()
        .unwrap()
        .to_string();
    dev.kill9();
    dev.restart();
    std::fs::write(dev.data.join("agent/sandboxes").join(id).join("go"), "").unwrap();
    let (state, status) = dev.end_of("f", "later");
    assert_eq!(state, "TASK_FAILED", "{status}");
    assert_eq!(status["reason"], "REASON_CONTAINER_LIMITATION", "{status}");
    assert!(!process_running("sleep 659"));
}

#[test]
fn agent_flags_turn_port_and_disk_enforcement_off() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::with_framework(&["--no-port-enforcement", "--no-disk-enforcement"]);
    dev.launch(
        "f",
        &format!(
            "name=free disk=1 cpus=0.1 mem=32 -- head -c 3000000 /dev/zero > ballast; {}",
            tcp_listener("0", 661)
        ),
    );
    dev.wait_running("f", "free");
    // The sandbox measured past its disk twice: an enforced limit would have ended it at the
    // first.
    let usage = dev.mount.join("frameworks/f/tasks/free/usage");
    let measured = || -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(&usage).ok()?;
        let figure = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        };
        Some((figure("disk_bytes")?, figure("disk_time_ms")?))
    };
    let mut first = None;
    dev.wait_for(
        "two measurements past the disk",
        Duration::from_secs(30),
        || match (first, measured()) {
            (None, Some((bytes, at))) if bytes > 1 << 20 => {
                first = Some(at);
                false
            }
            (Some(at), Some((_, later))) => later > at,
            _ => false,
        },
    );
    // Its listener has been up for as long; port looks come twice a second.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(dev.read("frameworks/f/tasks/free/state"), "TASK_RUNNING");
    assert!(process_running("sleep 661"));
    dev.sh_ok("echo > frameworks/f/tasks/free/kill");
    assert_eq!(dev.end_of("f", "free").0, "TASK_KILLED");
}
