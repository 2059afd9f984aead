//! Reads through a real FUSE mount over a simulated cluster, timed as a user in a framework's
//! directory sees them: `cat tasks/<t>/state` and `ls -l tasks/`. A small cluster is mounted
//! beside the large one and read in turn with it, so that their ratio, measured in one run,
//! says how reads grow with the cluster.
//!
//! The mount serves a local copy fed the simulated state as a snapshot and a leader that leads
//! it, as a mount's watch streams would; its client points at nothing, since reads never
//! write. The mount answers with attribute and entry timeouts of zero and direct I/O, so the
//! kernel caches nothing: every path component, `stat` and read below reaches the mount.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mesofs_kernel::client::{Connector, LocalCopy, MasterClient};
use mesofs_kernel::watch::{LeaderEvent, LeaderInfo, MasterStatus, StateEvent};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode};

use super::simulated::Simulated;

/// How long both mounts are read, untimed, before the timed reads.
const WARM_UP: Duration = Duration::from_secs(2);

/// How many different tasks `cat` reads in turn.
const CAT_TASKS: usize = 5;

/// The address the mounts' client would write to: no command is ever sent, so it is never
/// dialed.
const NO_MASTER: &str = "127.0.0.1:1";

/// A simulated cluster mounted on a temporary directory, with one framework's directory open
/// as a user's working directory would be.
struct Mounted {
    /// Dropped (closed) first: an open directory would keep the mount busy.
    framework: File,
    framework_path: std::path::PathBuf,
    mount: mesofs_fs::Mount,
    /// Dropped after the mount: it is the mountpoint.
    dir: tempfile::TempDir,
    /// The `tasks/<t>/state` paths `cat` reads, relative to the framework's directory, all of
    /// this framework's tasks.
    cat_paths: Vec<String>,
}

/// The figures of one mounted cluster.
#[derive(Default)]
pub struct Reads {
    /// Each `cat` of a `state` file.
    pub cat: Vec<Duration>,
    /// Each readdir plus lstat of every entry of `tasks/`.
    pub ls: Vec<Duration>,
    /// Each run of the `ls -l tasks/` command.
    pub ls_command: Vec<Duration>,
    /// How many entries `tasks/` lists.
    pub entries: usize,
    /// How many different `state` files `cat` read.
    pub files: usize,
}

/// Mounts `sim` (taking its state: the copy holds its own) on a new temporary directory, with
/// the directory of the framework of task 0 open.
fn mount(sim: Simulated) -> Result<Mounted> {
    let (framework_name, _) = sim.task_path(0);
    // The same framework's tasks, spread over the task numbers: t, t + F, t + 2F...
    let per_framework = sim.tasks.div_ceil(sim.frameworks);
    let step = (per_framework / CAT_TASKS).max(1);
    let cat_paths: Vec<String> = (0..per_framework)
        .step_by(step)
        .take(CAT_TASKS)
        .map(|k| format!("tasks/{}/state", sim.task_path(k * sim.frameworks).1))
        .collect();
    let copy = LocalCopy::default();
    let index = sim.index;
    copy.apply_state(StateEvent::Snapshot {
        index,
        state: sim.state,
    });
    let address = NO_MASTER.to_string();
    copy.apply_leader(&LeaderEvent::Leading {
        seq: 1,
        leader: LeaderInfo {
            id: 1,
            address: address.clone(),
            term: 1,
        },
        offers: Vec::new(),
        masters: vec![MasterStatus {
            id: 1,
            address: address.clone(),
            role: "leader".into(),
            applied: index,
        }],
        why: Default::default(),
    });
    let dir = tempfile::Builder::new()
        .prefix("mesofs-bench-mount-")
        .tempdir()
        .context("creating a mountpoint")?;
    let client = MasterClient::new(vec![address], Connector::plain());
    let mount = mesofs_fs::mount(dir.path(), client, copy, tokio::runtime::Handle::current())
        .with_context(|| {
            format!(
                "mounting the simulated cluster at {} (needs root and /dev/fuse; --no-mount skips the mount's figures)",
                dir.path().display()
            )
        })?;
    let framework_path = dir.path().join("frameworks").join(&framework_name);
    let framework = File::open(&framework_path)
        .with_context(|| format!("opening {}", framework_path.display()))?;
    Ok(Mounted {
        framework,
        framework_path,
        mount,
        dir,
        cat_paths,
    })
}

impl Mounted {
    /// `cat <path>`, as cat does it: open, fstat, read to the end, close. Returns the time and
    /// what it read.
    fn cat(&self, path: &str, buf: &mut Vec<u8>) -> Result<Duration> {
        buf.clear();
        let started = Instant::now();
        let fd: OwnedFd = openat(
            self.framework.as_fd(),
            path,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {path}"))?;
        let mut file = File::from(fd);
        file.metadata()
            .with_context(|| format!("fstat of {path}"))?;
        file.read_to_end(buf)
            .with_context(|| format!("reading {path}"))?;
        drop(file);
        Ok(started.elapsed())
    }

    /// `ls -l tasks/`'s calls to the filesystem: open the directory and fstat it, read every
    /// entry, and lstat each as `tasks/<entry>` from the framework's directory. (GNU ls also
    /// asks each entry for two extended attributes; [`Mounted::ls_command`] includes those.)
    fn ls(&self) -> Result<(Duration, usize)> {
        let started = Instant::now();
        let fd = openat(
            self.framework.as_fd(),
            "tasks",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .context("opening tasks/")?;
        fstat(&fd).context("fstat of tasks/")?;
        let mut dir = nix::dir::Dir::from_fd(fd).context("reading tasks/")?;
        let mut entries = 0;
        for entry in dir.iter() {
            let entry = entry.context("reading tasks/")?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let path = Path::new("tasks").join(name);
            fstatat(
                self.framework.as_fd(),
                &path,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .with_context(|| format!("lstat of {}", path.display()))?;
            entries += 1;
        }
        Ok((started.elapsed(), entries))
    }

    /// Runs `ls -l tasks/` in the framework's directory (its output discarded), process start
    /// included.
    fn ls_command(&self) -> Result<Duration> {
        let started = Instant::now();
        let status = Command::new("ls")
            .args(["-l", "tasks/"])
            .current_dir(&self.framework_path)
            .stdout(Stdio::null())
            .status()
            .context("running ls -l")?;
        if !status.success() {
            bail!("ls -l tasks/ failed: {status}");
        }
        Ok(started.elapsed())
    }

    /// Closes the framework's directory and unmounts.
    fn unmount(self) -> Result<()> {
        drop(self.framework);
        self.mount.unmount().with_context(|| {
            format!(
                "unmounting the simulated cluster at {}",
                self.dir.path().display()
            )
        })?;
        drop(self.dir);
        Ok(())
    }
}

/// Mounts both clusters and times `cat_samples` reads of `state` files and `rounds` listings
/// of `tasks/` in each, in turn (large, small, large...), so that both see the machine alike.
/// Returns the figures of the large cluster and of the small one. Blocks: call it off the
/// async workers.
pub fn measure(
    large: Simulated,
    small: Simulated,
    cat_samples: usize,
    rounds: usize,
) -> Result<(Reads, Reads)> {
    let mounts = [mount(large)?, mount(small)?];
    let mut reads = [Reads::default(), Reads::default()];
    let mut buf = Vec::new();
    for (m, r) in mounts.iter().zip(&mut reads) {
        // Each file once untimed (inode numbers are given out on the first lookup), and a
        // check that what is read is what the state says.
        for path in &m.cat_paths {
            m.cat(path, &mut buf)?;
            if buf != b"TASK_RUNNING\n" {
                bail!(
                    "{path} in the mount reads {:?}, not TASK_RUNNING",
                    String::from_utf8_lossy(&buf)
                );
            }
        }
        r.entries = m.ls()?.1;
        r.files = m.cat_paths.len();
    }
    // Untimed reads first, for a while: in the first second or so after a large state is
    // mounted, reads of it run several times slower than later ones (measured: 0.86 ms, then
    // 0.19 ms, at 100,000 tasks), which would say more about that moment than about the state.
    let warm_until = Instant::now() + WARM_UP;
    let mut i = 0;
    while Instant::now() < warm_until {
        for m in &mounts {
            m.cat(&m.cat_paths[i % m.cat_paths.len()], &mut buf)?;
        }
        i += 1;
    }
    for i in 0..cat_samples {
        for (m, r) in mounts.iter().zip(&mut reads) {
            let path = &m.cat_paths[i % m.cat_paths.len()];
            r.cat.push(m.cat(path, &mut buf)?);
        }
    }
    for _ in 0..rounds {
        for (m, r) in mounts.iter().zip(&mut reads) {
            r.ls.push(m.ls()?.0);
            r.ls_command.push(m.ls_command()?);
        }
    }
    for m in mounts {
        m.unmount()?;
    }
    let [large, small] = reads;
    Ok((large, small))
}
