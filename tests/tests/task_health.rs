//! Health checks, run by each task's supervisor: a task's `healthy` file, `status.json` and
//! the framework's `events` follow its health; after too many failures in a row the task is
//! killed and ends `TASK_KILLED` with `REASON_HEALTH_CHECK_FAILED`; an agent SIGKILLed and
//! restarted meanwhile loses no health change.

use std::path::PathBuf;
use std::time::Duration;

use mesofs_tests::{can_run, process_running, Dev, Mounted};

/// A web server on `$PORT0` answering 200 to every GET, or 503 once a file `sick` exists in
/// its working directory (the sandbox); `$0` names the process.
const WEB_SERVER: &str = r#"
use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $ENV{PORT0},
    Listen => 5, ReuseAddr => 1) or die "listen: $!";
$| = 1;
print "listening\n";
while (my $c = $s->accept) {
    my $request = <$c>;
    while (my $line = <$c>) { last if $line =~ /^\r?\n$/; }
    if (-e "sick") {
        print $c "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nsick\n";
    } else {
        print $c "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
    }
    close $c;
}
"#;

/// A TCP listener on `$PORT0` that closes its socket once a file `sick` exists in its working
/// directory, and lives on.
const TCP_SERVER: &str = r#"
use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $ENV{PORT0},
    Listen => 5, ReuseAddr => 1) or die "listen: $!";
$| = 1;
print "listening\n";
use IO::Select;
my $ready = IO::Select->new($s);
until (-e "sick") {
    if ($ready->can_read(0.05)) { my $c = $s->accept; close $c if $c; }
}
close $s;
sleep 600;
"#;

/// A `mesofs dev` with framework `f`, offering ports `first..first+9`: each test its own, as
/// tests run at once and every dev offers the same ports by default.
fn dev_with_ports(first: u16) -> Dev {
    let resources = format!("cpus:4;mem:4096;disk:1024;ports:[{first}-{}]", first + 9);
    Dev::with_framework(&["--resources", &resources])
}

/// Writes a script into a directory of the test's own (shared with tasks) and returns its path.
fn script(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The sandbox of task `name` of framework `f`.
fn sandbox(dev: &Dev, name: &str) -> PathBuf {
    let id = dev.status_json("f", name)["id"]
        .as_str()
        .unwrap()
        .to_string();
    dev.data.join("agent/sandboxes").join(id)
}

/// The framework's event lines about task `name`'s health and end, in order.
fn health_events(dev: &Dev, name: &str) -> Vec<String> {
    dev.read("frameworks/f/events")
        .lines()
        .filter(|l| {
            l.starts_with(&format!("health {name} "))
                || (l.starts_with(&format!("task {name} ")) && !l.contains("TASK_RUNNING"))
        })
        .filter(|l| !l.contains("TASK_STAGING") && !l.contains("TASK_STARTING"))
        .map(str::to_string)
        .collect()
}

/// Quick timing, so that a test takes seconds: first check at once, one every 300 ms, the
/// task killed at the third failure in a row; failures before the first pass (the task
/// starting) do not count.
const QUICK: &str = "health_delay=0 health_interval=300ms health_timeout=2s health_grace=20s \
                     health_failures=3 grace=1s";

#[test]
fn a_web_server_whose_http_check_fails_turns_unhealthy_and_is_killed_for_it() {
    if !can_run() {
        return;
    }
    let mut dev = dev_with_ports(30100);
    let dir = mesofs_tests::temp_dir();
    let server = script(&dir, "web.pl", WEB_SERVER);
    dev.launch(
        "f",
        &format!(
            "name=web ports=1 cpus=0.1 mem=64 health_http=0/healthz {QUICK} -- exec perl {} web-671",
            server.display()
        ),
    );
    dev.wait_running("f", "web");
    // Empty before the first result, then true.
    dev.wait_for_file(
        "frameworks/f/tasks/web/healthy",
        "true",
        Duration::from_secs(30),
    );
    let status = dev.status_json("f", "web");
    assert_eq!(status["healthy"], true, "{status}");
    assert_eq!(status["health"]["output"], "HTTP/1.1 200 OK", "{status}");
    // The latest check, live from the agent.
    assert_eq!(status["health"]["last_check"]["passed"], true, "{status}");
    assert_eq!(status["health"]["failures"], 0, "{status}");

    std::fs::write(sandbox(&dev, "web").join("sick"), "").unwrap();
    dev.wait_for_file(
        "frameworks/f/tasks/web/healthy",
        "false",
        Duration::from_secs(30),
    );
    let (state, status) = dev.end_of("f", "web");
    assert_eq!(state, "TASK_KILLED", "{status}");
    assert_eq!(status["reason"], "REASON_HEALTH_CHECK_FAILED", "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("3 consecutive failed health checks")
            && message.contains("HTTP/1.1 503 Service Unavailable"),
        "{message}"
    );
    // Killed with its kill policy: SIGTERM, which perl dies of.
    assert_eq!(status["signal"], 15, "{status}");
    assert_eq!(status["healthy"], false, "{status}");
    assert_eq!(
        health_events(&dev, "web"),
        [
            "health web true HTTP/1.1 200 OK",
            "health web false HTTP/1.1 503 Service Unavailable",
            &format!("task web TASK_KILLED REASON_HEALTH_CHECK_FAILED {message}"),
        ]
    );
}

#[test]
fn a_command_check_runs_inside_the_task_and_a_tcp_check_connects_to_its_port() {
    if !can_run() {
        return;
    }
    let mut dev = dev_with_ports(30110);
    // Healthy while the task's own /tmp holds `ready`, which only its mount namespace shows,
    // and while its own pid namespace shows its sleep.
    dev.launch(
        "f",
        &format!(
            "name=cmd cpus=0.1 mem=32 health_cmd=\"test -e /tmp/ready && ps ax | grep -q [s]leep.67[3]\" {QUICK} \
             -- touch /tmp/ready; sleep 673 & while [ ! -e sick ]; do sleep 0.05; done; rm /tmp/ready; wait"
        ),
    );
    let dir = mesofs_tests::temp_dir();
    let server = script(&dir, "tcp.pl", TCP_SERVER);
    dev.launch(
        "f",
        &format!(
            "name=tcp ports=1 cpus=0.1 mem=32 health_tcp=0 {QUICK} -- exec perl {} tcp-677",
            server.display()
        ),
    );
    for name in ["cmd", "tcp"] {
        dev.wait_running("f", name);
    }
    // The command task's sleep must be running for its check to pass.
    dev.wait_for("the command task's sleep", Duration::from_secs(30), || {
        process_running("sleep 673")
    });
    for name in ["cmd", "tcp"] {
        dev.wait_for_file(
            &format!("frameworks/f/tasks/{name}/healthy"),
            "true",
            Duration::from_secs(30),
        );
        std::fs::write(sandbox(&dev, name).join("sick"), "").unwrap();
    }
    for name in ["cmd", "tcp"] {
        let (state, status) = dev.end_of("f", name);
        assert_eq!(state, "TASK_KILLED", "{status}");
        assert_eq!(status["reason"], "REASON_HEALTH_CHECK_FAILED", "{status}");
        assert_eq!(status["healthy"], false, "{status}");
        let events = health_events(&dev, name);
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(
            events[0].starts_with(&format!("health {name} true")),
            "{events:?}"
        );
        assert!(
            events[1].starts_with(&format!("health {name} false")),
            "{events:?}"
        );
    }
    let cmd = dev.status_json("f", "cmd");
    assert!(
        cmd["message"]
            .as_str()
            .unwrap()
            .contains("the check exited with status 1"),
        "{cmd}"
    );
    let tcp = dev.status_json("f", "tcp");
    assert!(
        tcp["message"]
            .as_str()
            .unwrap()
            .contains("cannot connect to 127.0.0.1:"),
        "{tcp}"
    );
    assert!(!process_running("sleep 673"));
}

#[test]
fn health_changes_while_the_agent_is_down_are_reported_when_it_is_back() {
    if !can_run() {
        return;
    }
    let mut dev = dev_with_ports(30120);
    let dir = mesofs_tests::temp_dir();
    let server = script(&dir, "web.pl", WEB_SERVER);
    dev.launch(
        "f",
        &format!(
            "name=web ports=1 cpus=0.1 mem=64 health_http=0/ {QUICK} -- exec perl {} web-679",
            server.display()
        ),
    );
    dev.wait_for_file(
        "frameworks/f/tasks/web/healthy",
        "true",
        Duration::from_secs(30),
    );
    let sick = sandbox(&dev, "web").join("sick");
    dev.kill9();
    // With the agent down, the supervisor's checks go on: they fail, and it kills the task.
    std::fs::write(&sick, "").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while process_running("web-679") {
        assert!(
            std::time::Instant::now() < deadline,
            "the supervisor did not kill the task"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    dev.restart();
    let (state, status) = dev.end_of("f", "web");
    assert_eq!(state, "TASK_KILLED", "{status}");
    assert_eq!(status["reason"], "REASON_HEALTH_CHECK_FAILED", "{status}");
    // The restarted mount's events start at its restart: the change to false and the end
    // happened since. The change to true, reported again by the restarted agent, is not
    // taken twice.
    let events = health_events(&dev, "web");
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        events[0], "health web false HTTP/1.1 503 Service Unavailable",
        "{events:?}"
    );
    assert!(
        events[1].starts_with("task web TASK_KILLED REASON_HEALTH_CHECK_FAILED"),
        "{events:?}"
    );
    assert_eq!(status["healthy"], false, "{status}");
    assert_eq!(status["health"]["changes"], 2, "{status}");
}

#[test]
fn a_malformed_health_check_is_refused_with_einval_and_a_reason() {
    if !can_run() {
        return;
    }
    let dev = dev_with_ports(30130);
    let offer = dev.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    let out = dev.sh(&format!(
        "echo 'name=bad ports=1 health_http=1/healthz -- true' > frameworks/f/offers/{offer}/launch"
    ));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Invalid argument"), "{stderr}");
    let error = dev.read("frameworks/f/error");
    assert!(error.contains("health check port index 1"), "{error}");
    assert!(!dev.mountpoint().join("frameworks/f/tasks/bad").exists());
}
