//! The integration-test harness: starts real `mesofs dev` processes on temporary directories
//! and drives them through their real FUSE mount with shell commands, as a user would.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target"));
        target.join("debug").join("mesofs")
    })
    .clone()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// A running `mesofs dev`: master, agent and mount in one process.
pub struct Dev {
    child: Option<Child>,
    /// Where the cluster is mounted.
    pub mount: PathBuf,
    /// The data directory (reuse it to restart with the same state).
    pub data: PathBuf,
    log: PathBuf,
    extra_args: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl Dev {
    /// Starts a dev cluster on fresh directories and waits until it is mounted with its agent
    /// registered.
    pub fn start() -> Dev {
        Dev::start_with(&[])
    }

    /// Like [`Dev::start`], with extra `mesofs dev` flags (e.g. `--offer-timeout 1`).
    pub fn start_with(extra_args: &[&str]) -> Dev {
        let tmp = tempfile::Builder::new()
            .prefix("mesofs-test-")
            .tempdir()
            .expect("temp dir");
        let mount = tmp.path().join("mnt");
        let data = tmp.path().join("data");
        let log = tmp.path().join("dev.log");
        let mut dev = Dev {
            child: None,
            mount,
            data,
            log,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            _tmp: tmp,
        };
        dev.spawn();
        dev
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(mesofs_bin())
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--resources",
                TEST_RESOURCES,
            ])
            .arg("--mount")
            .arg(&self.mount)
            .arg("--data-dir")
            .arg(&self.data)
            .args(&self.extra_args)
            .env("RUST_LOG", "info,mesofs_kernel=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting mesofs dev");
        self.child = Some(child);
        let mount = self.mount.clone();
        self.wait_for(
            "the mount to show a leader and an agent",
            Duration::from_secs(60),
            || {
                let leader =
                    std::fs::read_to_string(mount.join("cluster/leader")).unwrap_or_default();
                let agents = std::fs::read_dir(mount.join("agents"))
                    .map(|d| d.count())
                    .unwrap_or(0);
                !leader.trim().is_empty() && agents > 0
            },
        );
    }

    /// Polls `ready` every 20 ms until it holds; fails the test with the log after `timeout`.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ready() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "mesofs dev exited ({status}) while waiting for {what}\n{}",
                        self.log_text()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}\n{}", self.log_text());
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        format!("---- mesofs dev log ----\n{s}---- end of log ----")
    }

    /// Runs a bash script with the mount as its working directory.
    pub fn sh(&self, script: &str) -> Output {
        Command::new("bash")
            .args(["-c", script])
            .current_dir(&self.mount)
            .output()
            .expect("running bash")
    }

    /// Runs a bash script that must succeed; returns its stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "script failed ({}):\n{script}\nstdout:\n{}\nstderr:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Reads a file under the mount, trimmed.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.mount.join(rel))
            .unwrap_or_else(|e| panic!("reading {rel}: {e}\n{}", self.log_text()))
            .trim()
            .to_string()
    }

    /// The process id of `mesofs dev`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILLs the process (no cleanup at all) and waits for it to die.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit; returns its exit status code.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("sending SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "mesofs dev did not exit within 30 s of SIGTERM\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `mesofs dev` again on the same data directory and mountpoint.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill it first");
        self.spawn();
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
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

/// Whether any process's command line contains `needle`.
pub fn process_running(needle: &str) -> bool {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .chars()
                        .all(|c| c.is_ascii_digit())
                })
                .any(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .map(|c| {
                            let c: Vec<u8> = c
                                .into_iter()
                                .map(|b| if b == 0 { b' ' } else { b })
                                .collect();
                            String::from_utf8_lossy(&c).contains(needle)
                        })
                        .unwrap_or(false)
                })
        })
        .unwrap_or(false)
}
