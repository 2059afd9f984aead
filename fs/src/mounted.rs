//! Tests through a real mount: a local copy fed watch events by the test (no master), a
//! MasterClient pointing at an unused address (so commands fail with EIO), an in-test agent
//! Files service, and the tree driven with std::fs and shell commands.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesofs_kernel::client::{Connector, MasterClient};
use mesofs_kernel::proto::files_server::{Files, FilesServer};
use mesofs_kernel::proto::{
    HealthCheckResult, ReadReply, ReadRequest, TaskUsage, UsageReply, UsageRequest,
};
use mesofs_kernel::state::TaskState;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::fixture::{standard, Cluster};
use crate::{mount, Mount};

/// Whether FUSE tests can run here; loud when not, fatal under CI=true.
fn can_mount() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let fuse = Path::new("/dev/fuse").exists();
    if root && fuse {
        return true;
    }
    let why = format!("root: {root}, /dev/fuse: {fuse}");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the FUSE tests cannot run ({why}) and CI=true");
    }
    eprintln!("\n########## SKIPPING mesofs-fs FUSE tests: they need root and /dev/fuse ({why}) ##########\n");
    false
}

/// Sandbox files an in-test agent serves, by (task id, file).
type SandboxContent = Arc<Mutex<HashMap<(String, String), Vec<u8>>>>;

/// Usage an in-test agent reports, and when it says it measured it.
type UsageContent = Arc<Mutex<(Vec<TaskUsage>, u64)>>;

struct TestFiles(SandboxContent, UsageContent);

#[tonic::async_trait]
impl Files for TestFiles {
    async fn read(
        &self,
        request: tonic::Request<ReadRequest>,
    ) -> Result<tonic::Response<ReadReply>, tonic::Status> {
        let r = request.into_inner();
        let files = self.0.lock().unwrap();
        let data = files.get(&(r.task_id, r.file)).cloned().unwrap_or_default();
        let start = (r.offset as usize).min(data.len());
        let end = (start + r.length as usize).min(data.len());
        Ok(tonic::Response::new(ReadReply {
            data: data[start..end].to_vec(),
            size: data.len() as u64,
        }))
    }

    async fn usage(
        &self,
        _request: tonic::Request<UsageRequest>,
    ) -> Result<tonic::Response<UsageReply>, tonic::Status> {
        let (tasks, measured_ms) = self.1.lock().unwrap().clone();
        Ok(tonic::Response::new(UsageReply { tasks, measured_ms }))
    }
}

/// A mounted test cluster.
struct Mounted {
    cluster: Cluster,
    hello: String,
    idle: String,
    sandbox: SandboxContent,
    usage: UsageContent,
    mount: Option<Mount>,
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Mounted {
    fn start() -> Mounted {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let sandbox: SandboxContent = Arc::default();
        let usage: UsageContent = Arc::default();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let files_addr = listener.local_addr().unwrap().to_string();
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(FilesServer::new(TestFiles(sandbox.clone(), usage.clone())))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let (cluster, hello, idle) = standard(&files_addr);
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens on port 1: every command that reaches the network fails with EIO,
        // after a short wait for a leader.
        let client = MasterClient::new(vec!["127.0.0.1:1".into()], Connector::plain())
            .with_leader_wait(Duration::from_millis(300));
        let mount = mount(
            dir.path(),
            client,
            cluster.copy.clone(),
            rt.handle().clone(),
        )
        .expect("mount");
        Mounted {
            cluster,
            hello,
            idle,
            sandbox,
            usage,
            mount: Some(mount),
            dir,
            rt,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Runs bash in the mount as `uid` (root when 0).
    fn sh_as(&self, uid: u32, script: &str) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(script).current_dir(self.dir.path());
        if uid != 0 {
            // std drops root's supplementary groups when it sets the uid.
            cmd.uid(uid).gid(uid);
        }
        cmd.output().unwrap()
    }

    fn sh(&self, script: &str) -> String {
        let out = self.sh_as(0, script);
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a script that must fail; returns its stderr.
    fn sh_err(&self, uid: u32, script: &str) -> String {
        let out = self.sh_as(uid, script);
        assert!(!out.status.success(), "{script} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn cat(&self, rel: &str) -> Child {
        Command::new("cat")
            .arg(self.path(rel))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn unmount(mut self) {
        let mountpoint = self.dir.path().canonicalize().unwrap();
        self.mount.take().unwrap().unmount().expect("unmount");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.contains(&*mountpoint.to_string_lossy()),
            "unmounted"
        );
        drop(self.rt);
    }
}

/// Waits for a child to exit; returns how long it took and its output.
fn finish(child: Child, limit: Duration) -> (Duration, Output) {
    let started = Instant::now();
    let mut child = child;
    loop {
        if child.try_wait().unwrap().is_some() {
            let took = started.elapsed();
            return (took, child.wait_with_output().unwrap());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("child still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Asserts a child is still blocked after a while.
fn still_blocked(child: &mut Child, what: &str) {
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "{what} blocks");
}

#[test]
fn the_tree_lists_reads_sizes_and_links_like_a_filesystem() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::start();
    let hello = m.hello.clone();
    m.cluster.refused(&hello, "offer 9-9 is gone");
    let found = m.sh("find . | sort");
    for path in [
        "./README",
        "./cluster/leader",
        "./cluster/resources",
        "./agents/a1/available",
        "./agents/a1/tasks/hello.web",
        "./frameworks/hello/events",
        "./frameworks/hello/events_pipe",
        "./cluster/masters/ctl",
        "./cluster/masters/1/role",
        "./frameworks/hello/offers/next",
        "./frameworks/hello/offers/1-1/agent",
        "./frameworks/hello/offers/1-1/launch",
        "./frameworks/hello/tasks/batch/status.json",
        "./frameworks/hello/tasks/web/wait",
        "./frameworks/idle/offers/next",
    ] {
        assert!(
            found.lines().any(|l| l == path),
            "find lists {path}:\n{found}"
        );
    }
    assert!(m.sh("ls -a frameworks").lines().take(2).eq([".", ".."]));

    assert_eq!(m.read("cluster/leader"), "m1 127.0.0.1:5050\n");
    assert_eq!(m.read("frameworks/hello/id"), format!("{}\n", m.hello));
    assert_eq!(m.read("frameworks/hello/user"), "0 root\n");
    assert_eq!(m.read("frameworks/idle/role"), "*\n");
    assert_eq!(m.read("frameworks/hello/tasks/web/state"), "TASK_RUNNING\n");
    assert_eq!(m.read("frameworks/hello/offers/1-1/ports"), "31002-31099\n");
    assert!(m.read("README").contains("offers/next"));

    // Every rendered file's size is its content's length, by stat and by ls -l.
    let streams = [
        "next",
        "events_pipe",
        "wait",
        "launch",
        "decline",
        "reserve",
        "unreserve",
        "kill",
        "revive",
        "ctl",
        "stdout",
        "stderr",
        // Measured at open, by the task's agent (see the usage test).
        "usage",
    ];
    let mut checked = 0;
    for line in found.lines() {
        let rel = line.trim_start_matches("./");
        let p = m.path(rel);
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if !meta.is_file() || streams.iter().any(|s| rel.ends_with(s)) {
            continue;
        }
        let content = std::fs::read(&p).unwrap();
        assert!(
            !content.is_empty()
                || rel == "frameworks/idle/error"
                || rel == "frameworks/idle/events"
                || rel.ends_with("offers/why")
                || rel.ends_with("/reserved")
                // No health check, so no health.
                || rel.ends_with("/healthy"),
            "{rel} has content"
        );
        assert_eq!(meta.len(), content.len() as u64, "stat size of {rel}");
        let ls = m.sh(&format!("ls -l '{rel}'"));
        let size: u64 = ls.split_whitespace().nth(4).unwrap().parse().unwrap();
        assert_eq!(size, content.len() as u64, "ls -l size of {rel}: {ls}");
        checked += 1;
    }
    assert!(checked >= 20, "checked {checked} files");
    for rel in [
        "frameworks/hello/offers/next",
        "frameworks/hello/tasks/web/wait",
        "frameworks/hello/tasks/web/kill",
    ] {
        assert_eq!(std::fs::metadata(m.path(rel)).unwrap().len(), 0, "{rel}");
    }

    // Modes and owners.
    let stat = |rel: &str| {
        m.sh(&format!("stat -c '%A %u %g' {rel}"))
            .trim()
            .to_string()
    };
    assert_eq!(stat("frameworks"), "drwxrwxrwt 0 0");
    assert_eq!(stat("frameworks/idle"), "drwxr-xr-x 65534 65534");
    assert_eq!(stat("frameworks/idle/id"), "-r--r--r-- 65534 65534");
    assert_eq!(stat("frameworks/hello/offers/1-1/launch"), "--w------- 0 0");

    // Symlinks resolve.
    let link = m.path("agents/a1/tasks/hello.web");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        PathBuf::from("../../../frameworks/hello/tasks/web")
    );
    assert_eq!(
        std::fs::read_to_string(link.join("state")).unwrap(),
        "TASK_RUNNING\n"
    );
    assert_eq!(
        m.sh("cat frameworks/hello/tasks/web/agent/hostname"),
        "a1.example\n"
    );
    assert_eq!(
        m.sh("cat frameworks/hello/offers/1-1/agent/state"),
        "active\n"
    );

    // Inode numbers are stable per path and distinct between paths.
    let ino = |rel: &str| std::fs::metadata(m.path(rel)).unwrap().ino();
    assert_eq!(
        ino("frameworks/hello/tasks/web"),
        ino("frameworks/hello/tasks/web")
    );
    assert_ne!(
        ino("frameworks/hello/tasks/web"),
        ino("frameworks/hello/tasks/batch")
    );
    assert_eq!(ino("frameworks/hello/tasks/web/agent/"), ino("agents/a1"));

    // One open reads one version, even when the state changes between its reads.
    let mut file = std::fs::File::open(m.path("frameworks/hello/tasks/web/status.json")).unwrap();
    let mut first = [0u8; 10];
    std::io::Read::read_exact(&mut file, &mut first).unwrap();
    m.cluster.update(&hello, "web", TaskState::Finished, "", "");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut file, &mut rest).unwrap();
    let whole = format!("{}{rest}", String::from_utf8_lossy(&first));
    assert!(whole.contains("TASK_RUNNING") && !whole.contains("TASK_FINISHED"));
    assert!(serde_json::from_str::<serde_json::Value>(&whole).is_ok());
    assert_eq!(
        m.read("frameworks/hello/tasks/web/state"),
        "TASK_FINISHED\n"
    );

    // A vanished path is ENOENT.
    m.cluster.remove_offer("1-1", &hello, "accepted", false);
    let err = std::fs::metadata(m.path("frameworks/hello/offers/1-1")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    m.unmount();
}

#[test]
fn blocking_reads_wait_for_offers_task_ends_and_events() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::start();
    let idle = m.idle.clone();
    let hello = m.hello.clone();

    let err = m.sh_err(
        0,
        "dd if=frameworks/idle/offers/next iflag=nonblock status=none",
    );
    assert!(
        err.contains("Resource temporarily unavailable"),
        "O_NONBLOCK: EAGAIN, got {err}"
    );
    let mut next = m.cat("frameworks/idle/offers/next");
    still_blocked(&mut next, "offers/next without an offer");
    m.cluster
        .offer("1-7", &idle, "a1", "cpus:0.5", 1_700_000_006_000);
    let (took, out) = finish(next, Duration::from_secs(2));
    println!("offers/next returned {took:?} after the offer");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1-7\n");
    assert_eq!(
        m.sh("cat frameworks/idle/offers/next"),
        "1-7\n",
        "an outstanding offer answers at once"
    );

    let mut wait = m.cat("frameworks/hello/tasks/web/wait");
    still_blocked(&mut wait, "wait on a running task");
    m.cluster
        .update(&hello, "web", TaskState::Killed, "REASON_TASK_KILLED", "");
    let (_, out) = finish(wait, Duration::from_secs(2));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "TASK_KILLED\n");
    assert_eq!(
        m.sh("cat frameworks/hello/tasks/batch/wait"),
        "TASK_FINISHED\n"
    );

    // events is a log: what is there, then end-of-file.
    let log = m.read("frameworks/hello/events");
    assert!(log.starts_with("task web TASK_STAGING\n"), "{log}");
    assert!(log.ends_with("TASK_KILLED\n"), "{log}");
    // events_pipe: the lines so far, then each new one as it comes, then EOF after teardown.
    let events = std::fs::File::open(m.path("frameworks/hello/events_pipe")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(events);
        loop {
            let mut line = String::new();
            let n = lines.read_line(&mut line).unwrap();
            tx.send(line).unwrap();
            if n == 0 {
                return;
            }
        }
    });
    let recv = || {
        rx.recv_timeout(Duration::from_secs(2))
            .expect("an events line")
    };
    assert_eq!(recv(), "task web TASK_STAGING\n");
    for _ in 0..5 {
        recv();
    }
    assert!(recv().starts_with("task web TASK_KILLED"));
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "blocks at the end"
    );
    m.cluster.refused(&hello, "no space");
    assert_eq!(recv(), "error no space\n");
    m.cluster.teardown(&hello);
    assert_eq!(recv(), "", "EOF once torn down");
    reader.join().unwrap();
    m.unmount();
}

#[test]
fn blocked_readers_end_promptly_on_sigint_sigterm_and_sigkill() {
    if !can_mount() {
        return;
    }
    let m = Mounted::start();
    for (rel, signal) in [
        ("frameworks/idle/offers/next", Signal::SIGINT),
        ("frameworks/idle/offers/next", Signal::SIGKILL),
        ("frameworks/hello/tasks/web/wait", Signal::SIGINT),
        ("frameworks/hello/tasks/web/wait", Signal::SIGKILL),
        ("frameworks/idle/events_pipe", Signal::SIGTERM),
        ("frameworks/idle/events_pipe", Signal::SIGKILL),
    ] {
        let mut child = m.cat(rel);
        still_blocked(&mut child, rel);
        let pid = child.id();
        kill(Pid::from_raw(pid as i32), signal).unwrap();
        let (took, _) = finish(child, Duration::from_secs(5));
        println!("{rel}: reader gone {took:?} after {signal:?}");
        assert!(
            took < Duration::from_secs(2),
            "{rel} took {took:?} after {signal:?}"
        );
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the reader is gone, not stuck in D state"
        );
    }
    // The mount still serves after its readers were interrupted.
    assert_eq!(m.read("frameworks/idle/role"), "*\n");
    m.unmount();
}

#[test]
fn writes_and_permissions_give_the_documented_errnos() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::start();
    let idle = m.idle.clone();
    m.cluster
        .offer("1-2", &idle, "a1", "cpus:0.5", 1_700_000_006_000);

    // The master is unreachable: commands that pass the local checks fail with EIO.
    let kill = std::fs::write(m.path("frameworks/hello/tasks/web/kill"), "x\n").unwrap_err();
    assert_eq!(kill.raw_os_error(), Some(libc::EIO));
    let err = m.sh_err(0, "mkdir frameworks/new");
    assert!(err.contains("Input/output error"), "{err}");
    let err = m.sh_err(
        65534,
        "echo 'name=t -- true' > frameworks/idle/offers/1-2/launch",
    );
    assert!(
        err.contains("Input/output error"),
        "the owner passes the local checks: {err}"
    );
    let err = m.sh_err(65534, "echo > frameworks/idle/offers/1-2/decline");
    assert!(err.contains("Input/output error"), "{err}");

    // Others may read, not write.
    let out = m.sh_as(
        65534,
        "cat frameworks/hello/id frameworks/hello/tasks/web/state",
    );
    assert!(out.status.success());
    for script in [
        "echo x > frameworks/hello/tasks/web/kill",
        "echo x >> frameworks/hello/offers/1-1/launch",
        "rmdir frameworks/hello",
        "cat frameworks/hello/tasks/web/kill",
    ] {
        let err = m.sh_err(65534, script);
        assert!(err.contains("Permission denied"), "{script}: {err}");
    }
    let err = m.sh_err(0, "echo x > frameworks/hello/tasks/web/state");
    assert!(
        err.contains("Permission denied"),
        "read-only even for root: {err}"
    );
    assert!(m
        .sh_as(65534, "test -w frameworks/idle/offers/1-2/launch")
        .status
        .success());
    assert!(!m
        .sh_as(65534, "test -w frameworks/hello/tasks/web/kill")
        .status
        .success());
    assert!(m.sh_as(65534, "test -w frameworks").status.success());

    // Names and shapes the tree does not allow.
    let err = m.sh_err(65534, "mkdir frameworks/-bad");
    assert!(err.contains("Invalid argument"), "{err}");
    let err = m.sh_err(0, "mkdir frameworks/hello");
    assert!(err.contains("File exists"), "{err}");
    for script in [
        "mkdir frameworks/hello/x",
        "rmdir frameworks/hello/tasks",
        "rm frameworks/hello/id",
        "touch frameworks/hello/newfile",
        "chmod 777 frameworks/hello/id",
        "mv frameworks/hello/id frameworks/hello/id2",
        "ln -s x frameworks/hello/link",
    ] {
        let err = m.sh_err(0, script);
        assert!(err.contains("Operation not permitted"), "{script}: {err}");
    }
    let err = m.sh_err(0, "rmdir frameworks/nope");
    assert!(err.contains("No such file"), "{err}");
    // Truncation and touch of a control file are accepted (no command is sent).
    m.sh(": > frameworks/hello/tasks/web/kill; touch frameworks/hello/tasks/web/kill");
    m.unmount();
}

#[test]
fn stdout_and_stderr_come_from_the_agent_at_the_read_offset() {
    if !can_mount() {
        return;
    }
    let m = Mounted::start();
    let web = format!("{}.web", m.hello);
    m.sandbox.lock().unwrap().insert(
        (web.clone(), "stdout".into()),
        b"line one\nline two\n".to_vec(),
    );
    let stdout = "frameworks/hello/tasks/web/stdout";
    assert_eq!(std::fs::metadata(m.path(stdout)).unwrap().len(), 18);
    assert_eq!(m.read(stdout), "line one\nline two\n");
    assert_eq!(m.sh(&format!("tail -c 9 {stdout}")), "line two\n");
    assert_eq!(m.read("frameworks/hello/tasks/web/stderr"), "");

    // tail -f follows the file as the agent's copy grows.
    let mut tail = Command::new("tail")
        .args(["-f", "-s", "0.1", "-n", "+1"])
        .arg(m.path(stdout))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "line one");
    assert_eq!(lines.next().unwrap().unwrap(), "line two");
    m.sandbox
        .lock()
        .unwrap()
        .get_mut(&(web, "stdout".into()))
        .unwrap()
        .extend_from_slice(b"line three\n");
    assert_eq!(lines.next().unwrap().unwrap(), "line three");
    tail.kill().unwrap();
    tail.wait().unwrap();
    m.unmount();
}

#[test]
fn a_running_tasks_usage_and_latest_health_check_are_its_agents_answer() {
    if !can_mount() {
        return;
    }
    let m = Mounted::start();
    *m.usage.lock().unwrap() = (
        vec![TaskUsage {
            task_id: format!("{}.web", m.hello),
            cpu_ns: 2_500_000_000,
            cpu_user_ns: Some(2_000_000_000),
            cpu_system_ns: Some(500_000_000),
            mem_bytes: 4096,
            mem_peak_bytes: Some(8192),
            pids: Some(3),
            disk_bytes: Some(12288),
            disk_measured_ms: Some(1_700_000_009_000),
            last_check: Some(HealthCheckResult {
                passed: false,
                counted: true,
                output: "HTTP/1.1 503 Service Unavailable".into(),
                time_ms: 1_700_000_008_000,
                took_ms: 3,
                failures: 2,
            }),
        }],
        1_700_000_009_500,
    );
    assert_eq!(
        m.read("frameworks/hello/tasks/web/usage"),
        "cpu_seconds 2.500000\ncpu_user_seconds 2.000000\ncpu_system_seconds 0.500000\n\
         mem_bytes 4096\nmem_peak_bytes 8192\npids 3\ndisk_bytes 12288\n\
         disk_time_ms 1700000009000\ntime_ms 1700000009500\n"
    );
    let status: serde_json::Value =
        serde_json::from_str(&m.read("frameworks/hello/tasks/web/status.json")).unwrap();
    assert_eq!(status["usage"]["cpu_seconds"], 2.5);
    assert_eq!(status["usage"]["pids"], 3);
    assert_eq!(status["usage"]["time_ms"], 1_700_000_009_500u64);
    // The latest check, live from the agent; no health changes are recorded yet.
    let check = &status["health"]["last_check"];
    assert_eq!(
        check["output"], "HTTP/1.1 503 Service Unavailable",
        "{status}"
    );
    assert_eq!(
        (check["passed"].clone(), check["took_ms"].clone()),
        (false.into(), 3.into())
    );
    assert_eq!(status["health"]["failures"], 2, "{status}");
    assert!(status["health"].get("healthy").is_none(), "{status}");
    // An ended task has no usage: the file is empty and status.json has none.
    assert_eq!(m.read("frameworks/hello/tasks/batch/usage"), "");
    let status: serde_json::Value =
        serde_json::from_str(&m.read("frameworks/hello/tasks/batch/status.json")).unwrap();
    assert!(status.get("usage").is_none(), "{status}");
    m.unmount();
}

#[test]
fn tail_f_follows_events() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::start();
    let hello = m.hello.clone();
    let events = m.path("frameworks/hello/events");
    let size = std::fs::metadata(&events).unwrap().len();
    assert!(size > 0, "the size counts the lines so far");
    let mut tail = Command::new("tail")
        .args(["-f", "-s", "0.1", "-n", "2"])
        .arg(&events)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let recv = || {
        rx.recv_timeout(Duration::from_secs(3))
            .expect("tail printed a line")
    };
    assert!(recv().starts_with("task batch TASK_FINISHED"));
    assert!(recv().starts_with("offer 1-1 "));
    m.cluster.refused(&hello, "late refusal");
    assert_eq!(recv(), "error late refusal");
    m.cluster.update(
        &hello,
        "web",
        TaskState::Failed,
        "REASON_COMMAND_EXITED",
        "exit 3",
    );
    assert_eq!(recv(), "task web TASK_FAILED REASON_COMMAND_EXITED exit 3");
    assert!(
        std::fs::metadata(&events).unwrap().len() > size,
        "the size grew"
    );
    tail.kill().unwrap();
    tail.wait().unwrap();
    m.unmount();
}

#[test]
fn unmounting_releases_blocked_readers() {
    if !can_mount() {
        return;
    }
    let m = Mounted::start();
    let mut next = m.cat("frameworks/idle/offers/next");
    still_blocked(&mut next, "offers/next");
    let started = Instant::now();
    m.unmount();
    println!("unmounted in {:?} with a blocked reader", started.elapsed());
    let (_, out) = finish(next, Duration::from_secs(2));
    assert!(!out.status.success(), "the reader got an error");
}

/// Whether `stat` sees the reader's stdin: `stat -L /dev/stdin` fstats the inherited fd.
fn fstat_size_in_child(file: &std::fs::File) -> String {
    let out = Command::new("stat")
        .args(["-L", "-c", "%s", "/dev/stdin"])
        .stdin(file.try_clone().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fstat in a child: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn an_open_file_stays_fstatable_after_its_node_vanished() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::start();
    let hello = m.hello.clone();
    let mut resources =
        std::fs::File::open(m.path("frameworks/hello/offers/1-1/resources")).unwrap();
    let mut id = std::fs::File::open(m.path("frameworks/hello/id")).unwrap();
    let id_text = format!("{hello}\n");
    m.cluster.remove_offer("1-1", &hello, "declined", false);
    m.cluster.teardown(&hello);
    assert!(!m.path("frameworks/hello").exists());

    let meta = resources.metadata().expect("fstat of an offer's open file");
    assert!(meta.is_file());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut resources, &mut text).unwrap();
    assert_eq!(meta.len(), text.len() as u64, "the size of what it reads");
    assert_eq!(fstat_size_in_child(&resources), meta.len().to_string());

    assert_eq!(
        id.metadata()
            .expect("fstat of a framework's open file")
            .len(),
        id_text.len() as u64
    );
    // cat fstats its input: `exec 7<fw/id; rmdir fw; cat <&7`.
    let out = Command::new("cat")
        .stdin(id.try_clone().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), id_text);
    let mut again = String::new();
    std::io::Seek::rewind(&mut id).unwrap();
    std::io::Read::read_to_string(&mut id, &mut again).unwrap();
    assert_eq!(again, id_text);
    drop((resources, id));
    m.unmount();
}

#[test]
fn fstat_gives_the_size_of_the_version_an_open_reads_and_stat_the_current_one() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::start();
    let hello = m.hello.clone();
    let rel = "frameworks/hello/tasks/web/status.json";
    let mut file = std::fs::File::open(m.path(rel)).unwrap();
    let opened = file.metadata().unwrap().len();
    m.cluster.update(
        &hello,
        "web",
        TaskState::Killed,
        "REASON_TASK_KILLED",
        "killed by the test",
    );
    let current = std::fs::read(m.path(rel)).unwrap().len() as u64;
    assert_ne!(current, opened, "the new version has another size");

    assert_eq!(
        file.metadata().unwrap().len(),
        opened,
        "fstat: the open's version"
    );
    assert_eq!(
        fstat_size_in_child(&file),
        opened.to_string(),
        "fstat of an inherited fd"
    );
    // SEEK_END comes with the handle.
    let end = std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).unwrap();
    assert_eq!(end, opened, "SEEK_END: the open's version");
    std::io::Seek::rewind(&mut file).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).unwrap();
    assert_eq!(text.len() as u64, opened);

    // By path, from this process or another: the current version.
    assert_eq!(std::fs::metadata(m.path(rel)).unwrap().len(), current);
    assert_eq!(
        m.sh(&format!("stat -c %s {rel}")).trim(),
        current.to_string()
    );
    let ls = m.sh(&format!("ls -l {rel}"));
    assert_eq!(
        ls.split_whitespace().nth(4),
        Some(&*current.to_string()),
        "{ls}"
    );
    // And fstat once more: the lookups above did not turn it into a path stat.
    assert_eq!(file.metadata().unwrap().len(), opened);
    drop(file);
    assert_eq!(std::fs::metadata(m.path(rel)).unwrap().len(), current);
    m.unmount();
}

#[test]
fn a_write_that_may_reach_the_mount_in_pieces_is_refused_whole_with_efbig() {
    if !can_mount() {
        return;
    }
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let m = Mounted::start();
    let launch = m.path("frameworks/hello/offers/1-1/launch");
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&launch)
            .unwrap()
    };
    let limit = crate::write_limit::DEFAULT_COMMAND_LIMIT;
    let mut text = b"name=big -- true\n".to_vec();
    text.resize(1_500_045, b'#');
    // One write(2) each, not write_all: the kernel splits it, the first piece is refused.
    for (what, result) in [
        ("write", open().write(&text)),
        ("pwrite at an offset", open().write_at(&text, 1_000_000)),
        (
            "append",
            std::fs::OpenOptions::new()
                .append(true)
                .open(&launch)
                .unwrap()
                .write(&text),
        ),
        ("a write of the limit", open().write(&text[..limit])),
        // An unaligned buffer makes the first piece up to a page short of 1 MiB.
        ("a first piece", open().write(&text[3024..3024 + 1_045_552])),
    ] {
        let err = result.expect_err(what);
        assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{what}: {err}");
    }
    let error = m.read("frameworks/hello/error");
    assert!(error.starts_with("write too large: "), "{error}");
    assert!(error.contains(&format!("under {limit} bytes")), "{error}");
    let events = std::fs::File::open(m.path("frameworks/hello/events")).unwrap();
    let mut last = String::new();
    for line in BufReader::new(events).lines().take(64) {
        let line = line.unwrap();
        if line.starts_with("error write too large") {
            last = line;
            break;
        }
    }
    assert!(!last.is_empty(), "an error line in events");
    // One byte less fits one request and goes to the (unreachable) master.
    let err = open().write(&text[1..limit]).expect_err("no master");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    m.unmount();
}
