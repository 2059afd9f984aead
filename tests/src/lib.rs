//! The integration-test harness: starts real `mesofs` processes (`dev`, or a master, an agent
//! and a mount apart) on temporary directories and drives them through their real FUSE mount
//! with shell commands, as a user would.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

pub mod masters;
pub mod netns;
pub mod probe;
pub mod vm;

/// Resources the dev agent offers in tests: small and fixed, so tests do not depend on the
/// machine.
pub const TEST_RESOURCES: &str = "cpus:4;mem:4096;disk:1024;ports:[31000-31099]";

/// True when this machine can run the integration tests (root and /dev/fuse). Otherwise says
/// so loudly; under `CI=true` that is a failure.
pub fn can_run() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let fuse = Path::new("/dev/fuse").exists();
    if root && fuse {
        return true;
    }
    let why =
        format!("integration tests need root and /dev/fuse (root: {root}, /dev/fuse: {fuse})");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true, so this is a failure");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {why} !!!!!!!!\n");
    false
}

/// The `mesofs` binary, built once per test run.
pub fn mesofs_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "mesofs-tools", "--bin", "mesofs"])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build for the mesofs binary");
        assert!(status.success(), "building the mesofs binary failed");
        target_dir().join("debug").join("mesofs")
    })
    .clone()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// One `mesofs` process started by a test, logging to its own file.
pub struct Process {
    name: String,
    args: Vec<OsString>,
    /// The network namespace it runs in (`/run/netns/<name>`), if not the test's.
    netns: Option<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `mesofs` with these arguments, logging to `log`.
    pub fn start(name: &str, args: Vec<OsString>, log: PathBuf) -> Process {
        Process::start_in(name, None, args, log)
    }

    /// Starts `mesofs` in a network namespace made with `ip netns add` (its mount namespace
    /// stays the test's, so a mount it makes is the test's too).
    pub fn start_in(name: &str, netns: Option<&str>, args: Vec<OsString>, log: PathBuf) -> Process {
        let mut p = Process {
            name: name.to_string(),
            args,
            netns: netns.map(String::from),
            child: None,
            log,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        // nsenter execs mesofs in place, so the child's pid is mesofs's.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(mesofs_bin());
                c
            }
            None => Command::new(mesofs_bin()),
        };
        let child = cmd
            .args(&self.args)
            .env("RUST_LOG", "info,mesofs_kernel=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting mesofs {}: {e}", self.name));
        self.child = Some(child);
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.pid() as i32), sig)
            .unwrap_or_else(|e| panic!("sending {sig} to mesofs {}: {e}", self.name));
    }

    /// SIGKILLs it (no cleanup at all) and waits for it to die.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it with SIGSTOP: alive, connected, and silent.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a paused process go on with SIGCONT.
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// Sends SIGTERM and waits up to 30 s for it to exit; returns how it exited.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(Signal::SIGTERM);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "mesofs {} did not exit within 30 s of SIGTERM\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again with the same arguments (after [`Process::kill9`] or [`Process::stop`]).
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop or kill mesofs {} first",
            self.name
        );
        self.spawn();
    }

    /// How it ended, if it has.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        format!(
            "---- mesofs {} log ----\n{s}---- end of log ----\n",
            self.name
        )
    }

    /// SIGTERM (after SIGCONT, should it be paused), then SIGKILL if it lingers past 15 s.
    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGCONT);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A cluster mounted for a test and driven through the mount with shell commands.
pub trait Mounted {
    /// Where the cluster is mounted.
    fn mountpoint(&self) -> &Path;

    /// The processes behind the mount, for their logs.
    fn processes(&self) -> Vec<&Process>;

    /// The processes behind the mount, to notice one exiting.
    fn processes_mut(&mut self) -> Vec<&mut Process>;

    /// Every process's log so far.
    fn log_text(&self) -> String {
        self.processes().iter().map(|p| p.log_text()).collect()
    }

    /// Polls `ready` every 20 ms until it holds; fails the test with the logs after `timeout`,
    /// or as soon as one of the processes exits.
    fn wait_for(&mut self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ready() {
                return;
            }
            let exited = self
                .processes_mut()
                .into_iter()
                .find_map(|p| p.exited().map(|status| (p.name.clone(), status)));
            if let Some((name, status)) = exited {
                panic!(
                    "mesofs {name} exited ({}) while waiting for {what}\n{}",
                    describe(status),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}\n{}", self.log_text());
    }

    /// Waits until reading `rel` under the mount gives `want` (trimmed).
    fn wait_for_file(&mut self, rel: &str, want: &str, timeout: Duration) {
        let path = self.mountpoint().join(rel);
        self.wait_for(&format!("{rel} to read {want:?}"), timeout, || {
            std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == want)
        });
    }

    /// Runs a bash script with the mount as its working directory.
    fn sh(&self, script: &str) -> Output {
        Command::new("bash")
            .args(["-c", script])
            .current_dir(self.mountpoint())
            .output()
            .expect("running bash")
    }

    /// Runs a bash script that must succeed; returns its stdout.
    fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        if !out.status.success() {
            panic!(
                "script failed ({}):\n{script}\nstdout:\n{}\nstderr:\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_text()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Reads a file under the mount, trimmed.
    fn read(&self, rel: &str) -> String {
        match std::fs::read_to_string(self.mountpoint().join(rel)) {
            Ok(s) => s.trim().to_string(),
            Err(e) => panic!("reading {rel}: {e}\n{}", self.log_text()),
        }
    }

    /// Launches one task, `spec` being a launch line, on framework `framework`'s next offer.
    fn launch(&self, framework: &str, spec: &str) {
        let offer = self
            .sh_ok(&format!("cat frameworks/{framework}/offers/next"))
            .trim()
            .to_string();
        self.sh_ok(&format!(
            "echo '{spec}' > frameworks/{framework}/offers/{offer}/launch"
        ));
    }

    /// A task's `status.json`.
    fn status_json(&self, framework: &str, task: &str) -> serde_json::Value {
        serde_json::from_str(
            &self.read(&format!("frameworks/{framework}/tasks/{task}/status.json")),
        )
        .expect("status.json is JSON")
    }

    /// Waits for a task to end (a minute at most: a test whose task does not end fails
    /// rather than hangs); returns its final state and `status.json`.
    fn end_of(&self, framework: &str, task: &str) -> (String, serde_json::Value) {
        let state = self
            .sh_ok(&format!(
                "timeout 60 cat frameworks/{framework}/tasks/{task}/wait"
            ))
            .trim()
            .to_string();
        (state, self.status_json(framework, task))
    }

    /// Waits (30 s at most) until a task runs.
    fn wait_running(&mut self, framework: &str, task: &str) {
        let state = format!("frameworks/{framework}/tasks/{task}/state");
        self.wait_for_file(&state, "TASK_RUNNING", Duration::from_secs(30));
    }
}

/// A cluster CA of a test's own, and certificates from it, made as an operator would with
/// `mesofs ca init` and `mesofs cert issue`.
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    /// Makes a CA under `dir`.
    pub fn new(dir: &Path) -> TestCa {
        let ca = TestCa {
            dir: dir.to_path_buf(),
        };
        ca.mesofs(&["ca", "init", "--dir"], &[dir.join("ca").as_os_str()]);
        ca
    }

    fn mesofs(&self, args: &[&str], more: &[&std::ffi::OsStr]) {
        let out = Command::new(mesofs_bin())
            .args(args)
            .args(more)
            .output()
            .expect("running mesofs");
        assert!(
            out.status.success(),
            "mesofs {args:?} {more:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A name no other test's component has (agents on one machine must differ: an agent's
    /// cgroups are named by its id, and a starting agent takes the unknown ones there for its
    /// own leftovers).
    pub fn unique(&self, prefix: &str) -> String {
        let tag: String = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        format!("{prefix}-{tag}")
    }

    /// The master flags of a test cluster's ACLs: `extra` if it names its own `--acls`, else
    /// `--acls` with a file that lets every principal run tasks as root (tests run as root),
    /// and otherwise the defaults.
    pub fn acl_args(&self, extra: &[&str]) -> Vec<OsString> {
        if extra.contains(&"--acls") {
            return Vec::new();
        }
        let path = self.dir.join("acls.json");
        // Replaced whole, never truncated in place: a master started for an earlier call may
        // be reading it right now.
        let tmp = self.dir.join("acls.json.tmp");
        std::fs::write(
            &tmp,
            r#"{"run_tasks": [{"principals": {"type": "ANY"}, "users": {"values": ["root"]}}]}"#,
        )
        .expect("writing acls.json");
        std::fs::rename(&tmp, &path).expect("renaming acls.json into place");
        vec!["--acls".into(), path.into_os_string()]
    }

    /// Issues a certificate for `kind`/`name`, valid for `hosts`; returns its TLS directory.
    pub fn issue(&self, kind: &str, name: &str, hosts: &[&str]) -> PathBuf {
        let out = self.dir.join("tls").join(format!("{kind}-{name}"));
        let mut args = vec!["cert", "issue", "--kind", kind, "--name", name];
        for h in hosts {
            args.extend(["--host", h]);
        }
        args.push("--ca");
        let ca = self.dir.join("ca");
        self.mesofs(&args, &[ca.as_os_str(), "--out".as_ref(), out.as_os_str()]);
        out
    }
}

/// A fresh temporary directory for one test's processes.
pub fn temp_dir() -> tempfile::TempDir {
    // Not under /tmp (nor a checkout there): a task's /tmp is its own (it runs in a mount
    // namespace of its own), and tests share files with their tasks.
    let var_tmp = Path::new("/var/tmp");
    let under = if var_tmp.is_dir() {
        var_tmp.to_path_buf()
    } else {
        target_dir().join("tmp")
    };
    std::fs::create_dir_all(&under).expect("a directory for the tests' files");
    tempfile::Builder::new()
        .prefix("mesofs-test-")
        .tempdir_in(under)
        .expect("temp dir")
}

/// The build's target directory.
fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"))
}

/// Waits for a fresh mount to show a leader and a registered agent.
pub fn wait_until_ready(m: &mut impl Mounted) {
    let mount = m.mountpoint().to_path_buf();
    m.wait_for(
        "the mount to show a leader and an agent",
        Duration::from_secs(60),
        || {
            let leader = std::fs::read_to_string(mount.join("cluster/leader")).unwrap_or_default();
            let agents = std::fs::read_dir(mount.join("agents"))
                .map(|d| d.count())
                .unwrap_or(0);
            !leader.trim().is_empty() && agents > 0
        },
    );
}

/// A running `mesofs dev`: master, agent and mount in one process.
pub struct Dev {
    /// The `mesofs dev` process.
    pub process: Process,
    /// Where the cluster is mounted.
    pub mount: PathBuf,
    /// The data directory (reuse it to restart with the same state).
    pub data: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Dev {
    /// Starts a dev cluster on fresh directories and waits until it is mounted with its agent
    /// registered.
    pub fn start() -> Dev {
        Dev::start_with(&[])
    }

    /// Like [`Dev::start`], with extra `mesofs dev` flags (e.g. `--offer-timeout 1`); a
    /// `--resources` among them replaces the tests' usual resources.
    pub fn start_with(extra_args: &[&str]) -> Dev {
        let tmp = temp_dir();
        let mount = tmp.path().join("mnt");
        let data = tmp.path().join("data");
        let mut args: Vec<OsString> = ["dev", "--listen", "127.0.0.1:0"]
            .iter()
            .map(OsString::from)
            .collect();
        if !extra_args.contains(&"--resources") {
            args.extend(["--resources".into(), TEST_RESOURCES.into()]);
        }
        args.extend(["--mount".into(), mount.clone().into_os_string()]);
        args.extend(["--data-dir".into(), data.clone().into_os_string()]);
        args.extend(extra_args.iter().map(OsString::from));
        let process = Process::start("dev", args, tmp.path().join("dev.log"));
        let mut dev = Dev {
            process,
            mount,
            data,
            _tmp: tmp,
        };
        wait_until_ready(&mut dev);
        dev
    }

    /// The process id of `mesofs dev`.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// SIGKILLs `mesofs dev` and waits for it to die.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Sends SIGTERM and waits for a clean exit; returns how it exited.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.process.stop()
    }

    /// Like [`Dev::start_with`], with framework `f` registered.
    pub fn with_framework(extra_args: &[&str]) -> Dev {
        let dev = Dev::start_with(extra_args);
        dev.sh_ok("mkdir frameworks/f");
        dev
    }

    /// Starts `mesofs dev` again on the same data directory and mountpoint.
    pub fn restart(&mut self) {
        self.process.restart();
        wait_until_ready(self);
    }
}

impl Mounted for Dev {
    fn mountpoint(&self) -> &Path {
        &self.mount
    }

    fn processes(&self) -> Vec<&Process> {
        vec![&self.process]
    }

    fn processes_mut(&mut self) -> Vec<&mut Process> {
        vec![&mut self.process]
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.process.terminate();
        let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A cluster of separate processes: `mesofs master`, `mesofs agent` and `mesofs mount`, so
/// that each can be stopped, paused or killed on its own.
pub struct Cluster {
    /// The master.
    pub master: Process,
    /// The agent.
    pub agent: Process,
    /// The mount.
    pub mounter: Process,
    /// Where the cluster is mounted.
    pub mount: PathBuf,
    /// The agent's work directory.
    pub agent_work_dir: PathBuf,
    /// The master's address.
    pub master_addr: String,
    /// The CA the cluster's certificates come from.
    pub ca: TestCa,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts a master (with extra `mesofs master` flags), an agent and a mount on fresh
    /// directories, and waits until the mount shows the agent registered.
    pub fn start(master_args: &[&str]) -> Cluster {
        let tmp = temp_dir();
        // A fixed port, so that a restarted master is found where the agent and mount look.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let master_addr = format!("127.0.0.1:{port}");
        let mount = tmp.path().join("mnt");
        let ca = TestCa::new(tmp.path());
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let mut args = os(&["master", "--listen", &master_addr, "--data-dir"]);
        args.push(tmp.path().join("master").into_os_string());
        args.push("--tls".into());
        args.push(ca.issue("master", "1", &["127.0.0.1"]).into_os_string());
        args.extend(ca.acl_args(master_args));
        args.extend(master_args.iter().map(OsString::from));
        let master = Process::start("master", args, tmp.path().join("master.log"));
        let mut args = os(&[
            "agent",
            "--master",
            &master_addr,
            "--listen",
            "127.0.0.1:0",
            "--resources",
            TEST_RESOURCES,
            "--work-dir",
        ]);
        let agent_work_dir = tmp.path().join("agent");
        args.push(agent_work_dir.clone().into_os_string());
        args.push("--tls".into());
        let agent_name = ca.unique("agent");
        args.push(
            ca.issue("agent", &agent_name, &["127.0.0.1"])
                .into_os_string(),
        );
        let agent = Process::start("agent", args, tmp.path().join("agent.log"));
        let mut args = os(&["mount", "--master", &master_addr, "--mount"]);
        args.push(mount.clone().into_os_string());
        args.push("--tls".into());
        args.push(ca.issue("mount", "mount", &[]).into_os_string());
        let mounter = Process::start("mount", args, tmp.path().join("mount.log"));
        let mut cluster = Cluster {
            master,
            agent,
            mounter,
            mount,
            agent_work_dir,
            master_addr,
            ca,
            _tmp: tmp,
        };
        wait_until_ready(&mut cluster);
        cluster
    }

    /// The id of the one agent.
    pub fn agent_id(&self) -> String {
        self.sh_ok("ls agents").trim().to_string()
    }
}

impl Mounted for Cluster {
    fn mountpoint(&self) -> &Path {
        &self.mount
    }

    fn processes(&self) -> Vec<&Process> {
        vec![&self.master, &self.agent, &self.mounter]
    }

    fn processes_mut(&mut self) -> Vec<&mut Process> {
        vec![&mut self.master, &mut self.agent, &mut self.mounter]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The agent first, while the master can still take its tasks' last updates.
        self.agent.terminate();
        self.mounter.terminate();
        self.master.terminate();
        let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// How a process ended, in words, for assertion messages.
pub fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => "unknown".into(),
    }
}

/// The pids of the processes whose command line contains `needle`.
pub fn pids_of(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c: Vec<u8> = c
                    .into_iter()
                    .map(|b| if b == 0 { b' ' } else { b })
                    .collect();
                String::from_utf8_lossy(&c).contains(needle)
            })
        })
        .collect()
}

/// Whether any process's command line contains `needle`.
pub fn process_running(needle: &str) -> bool {
    !pids_of(needle).is_empty()
}
