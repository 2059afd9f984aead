//! The floor the launch benchmark compares mesofs with: what this machine's kernel takes to run
//! a task with nothing of mesofs in the way. One launch is the system calls an isolated launch
//! cannot do without, made directly (no cgroup library): create the task's cgroups (v1: one
//! each in the memory, cpu and pids hierarchies; v2: one with those controllers), set its
//! memory, cpu and pids limits, start a child (`clone(CLONE_VM | CLONE_VFORK)`, as mesofs
//! starts a task's), move it into them, exec `true`, wait for it, remove the cgroups.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// The cgroup roots a floor makes its launches' cgroups under, and what to write in each.
pub struct Floor {
    /// One directory per hierarchy (v1) or one (v2), made for this benchmark.
    parents: Vec<Parent>,
    /// `true`, found on PATH once.
    program: CString,
}

/// The benchmark's own cgroup in one hierarchy, and the limits a launch's cgroup gets there.
struct Parent {
    dir: PathBuf,
    limits: Vec<(&'static str, &'static str)>,
}

/// The limits of a launch: a core, 64 MiB, 64 processes, as the agent would set for a small task.
const V1: [(&str, &[(&str, &str)]); 3] = [
    ("memory", &[("memory.limit_in_bytes", "67108864")]),
    (
        "cpu",
        &[("cpu.shares", "1024"), ("cpu.cfs_quota_us", "100000")],
    ),
    ("pids", &[("pids.max", "64")]),
];
const V2: [(&str, &str); 3] = [
    ("memory.max", "67108864"),
    ("cpu.max", "100000 100000"),
    ("pids.max", "64"),
];
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl Floor {
    /// Makes the benchmark's cgroups (named with `tag` and this process's id) in whichever
    /// cgroup version the machine mounts.
    pub fn new(tag: &str) -> Result<Floor> {
        let name = format!("mesofs-floor-{tag}-{}", std::process::id());
        let root = Path::new(CGROUP_ROOT);
        let parents = if root.join("cgroup.controllers").exists() {
            let dir = root.join(&name);
            fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            let control = dir.join("cgroup.subtree_control");
            fs::write(&control, "+memory +cpu +pids")
                .with_context(|| format!("enabling controllers in {}", control.display()))?;
            vec![Parent {
                dir,
                limits: V2.to_vec(),
            }]
        } else {
            let mut parents = Vec::new();
            for (hierarchy, limits) in V1 {
                let dir = root.join(hierarchy).join(&name);
                fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
                parents.push(Parent {
                    dir,
                    limits: limits.to_vec(),
                });
            }
            parents
        };
        let program = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join("true"))
            .find(|p| p.is_file())
            .context("no `true` on PATH")?;
        Ok(Floor {
            parents,
            program: CString::new(program.as_os_str().as_bytes())?,
        })
    }

    /// Launches per second over `n` launches, `in_flight` at a time (each on its own thread).
    pub fn rate(&self, n: usize, in_flight: usize) -> Result<f64> {
        let next = AtomicUsize::new(0);
        let started = Instant::now();
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..in_flight.max(1))
                .map(|_| {
                    s.spawn(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        self.launch(i)?;
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("a floor thread panicked"))
                .collect::<Result<Vec<()>>>()
        })?;
        Ok(n as f64 / started.elapsed().as_secs_f64())
    }

    /// One launch, numbered `i` (its cgroups' name).
    fn launch(&self, i: usize) -> Result<()> {
        let dirs: Vec<PathBuf> = self
            .parents
            .iter()
            .map(|p| p.dir.join(i.to_string()))
            .collect();
        let mut made = 0;
        let ran = (|| {
            for (dir, parent) in dirs.iter().zip(&self.parents) {
                fs::create_dir(dir).with_context(|| format!("mkdir {}", dir.display()))?;
                made += 1;
                for (file, value) in &parent.limits {
                    fs::write(dir.join(file), value)
                        .with_context(|| format!("writing {value} to {}/{file}", dir.display()))?;
                }
            }
            self.run_in(&dirs)
        })();
        // Whatever was made is removed, whether the launch ran or not.
        for dir in &dirs[..made] {
            fs::remove_dir(dir).with_context(|| format!("rmdir {}", dir.display()))?;
        }
        ran
    }

    /// Starts a child that joins `dirs` and execs `true`; waits for it. The child is made
    /// with `clone(CLONE_VM | CLONE_VFORK)`, as mesofs makes a task's, so that the floor pays
    /// for no copy of this large benchmark process's page tables (a plain loop in a small
    /// process would not).
    fn run_in(&self, dirs: &[PathBuf]) -> Result<()> {
        // Everything the child needs, made before it exists: it may only make system calls.
        let procs: Vec<CString> = dirs
            .iter()
            .map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()))
            .collect::<Result<_, _>>()?;
        let procs: Vec<*const libc::c_char> = procs
            .iter()
            .map(|p| p.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let argv = [self.program.as_ptr(), std::ptr::null()];
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        let mut stack = vec![0u8; CHILD_STACK];
        // SAFETY: the child (`child_main`) calls only open, write, close, sigprocmask, execve
        // and _exit on memory made ready above, on a stack (aligned to 16) that outlives its
        // use: CLONE_VFORK returns once the child has exec'd or exited. Signals are blocked
        // around the clone so that no handler runs on the child's stack before it execs.
        let pid = unsafe {
            let mut args = ChildArgs {
                procs: procs.as_ptr(),
                program: self.program.as_ptr(),
                argv: argv.as_ptr(),
                envp: envp.as_ptr(),
                mask: std::mem::zeroed(),
            };
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut args.mask);
            let top = stack.as_mut_ptr().add(CHILD_STACK);
            let top = top.sub(top as usize % 16);
            let pid = libc::clone(
                child_main,
                top.cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::addr_of_mut!(args).cast(),
            );
            let err = std::io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &args.mask, std::ptr::null_mut());
            if pid < 0 {
                bail!("clone: {err}");
            }
            pid
        };
        drop(stack);
        let mut status = 0;
        // SAFETY: waiting for the child made above.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            bail!("waitpid: {}", std::io::Error::last_os_error());
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            bail!("the floor's `true` ended with wait status {status:#x} (126: it could not join its cgroup)");
        }
        Ok(())
    }
}

/// Stack of a floor launch's child until it execs.
const CHILD_STACK: usize = 64 * 1024;

/// What a floor launch's child reads: raw pointers into memory its parent keeps.
struct ChildArgs {
    /// The `cgroup.procs` files to join, null-ended.
    procs: *const *const libc::c_char,
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// The signal mask to exec with (the parent's before it blocked every signal).
    mask: libc::sigset_t,
}

/// A floor launch's child: joins the cgroups and execs `true`, with system calls only.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArgs its parent keeps until this child execs or exits; every
    // pointer in it is to memory the parent keeps as long.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        let mut path = a.procs;
        while !(*path).is_null() {
            let fd = libc::open(*path, libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(126);
            }
            libc::close(fd);
            path = path.add(1);
        }
        libc::sigprocmask(libc::SIG_SETMASK, &a.mask, std::ptr::null_mut());
        libc::execve(a.program, a.argv, a.envp);
        libc::_exit(127)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        for p in &self.parents {
            let _ = fs::remove_dir(&p.dir);
        }
    }
}
