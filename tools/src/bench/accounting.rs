//! Who spends the launch benchmark's CPU and makes its fsyncs: the master, the agent and the
//! mount each run on threads named for them (a runtime of their own, and the threads they
//! start), so that their CPU time is read per thread from `/proc`; the agent's spawner and the
//! supervisors and commands it forks are processes of their own. Fsyncs are counted by the
//! kernel (the `fsync` and `fdatasync` system call tracepoints, through `perf_event_open`), on
//! every thread of this process and on the spawner, and on whatever they start meanwhile.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use perf_event_open_sys::bindings::{perf_event_attr, PERF_FLAG_FD_CLOEXEC, PERF_TYPE_TRACEPOINT};

/// A part of mesofs, as its threads are named.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Part {
    Master,
    Agent,
    Mount,
}

impl Part {
    /// Every part, in the order figures are printed.
    pub const ALL: [Part; 3] = [Part::Master, Part::Agent, Part::Mount];

    /// The name of the threads of its runtime.
    pub fn thread_name(self) -> &'static str {
        match self {
            Part::Master => "mesofs-master",
            Part::Agent => "mesofs-agent",
            Part::Mount => "mesofs-mount",
        }
    }

    /// The part a thread belongs to, by its name (`comm`), if any: its runtime's threads, the
    /// agent's thread that waits for its spawner, the mount's FUSE threads.
    fn of_thread(comm: &str) -> Option<Part> {
        Part::ALL
            .into_iter()
            .find(|p| comm == p.thread_name())
            .or(match comm {
                "spawner-wait" => Some(Part::Agent),
                c if c.starts_with("fuser-") => Some(Part::Mount),
                _ => None,
            })
    }

    /// How it is printed.
    pub fn label(self) -> &'static str {
        match self {
            Part::Master => "master",
            Part::Agent => "agent",
            Part::Mount => "mount",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A runtime for one part, its threads named for it. Its blocking threads are kept for the
/// whole run, so that none ends (and takes its CPU time out of `/proc`) between two samples.
pub fn runtime(part: Part) -> Result<PartRuntime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(part.thread_name())
        .thread_keep_alive(Duration::from_secs(24 * 3600))
        .enable_all()
        .build()
        .map(|rt| PartRuntime(Some(rt)))
        .with_context(|| format!("starting the {}'s runtime", part.label()))
}

/// A part's runtime, shut down without waiting when dropped: the benchmark drops it from
/// within its own runtime, where a blocking shutdown would panic.
pub struct PartRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for PartRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("a runtime until dropped")
    }
}

impl Drop for PartRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// CPU time (user and system) spent so far.
#[derive(Clone, Copy, Default)]
pub struct Cpu {
    /// By the threads of each part (indexed as [`Part::ALL`]).
    pub parts: [Duration; 3],
    /// How many times a thread of each part was switched in to run.
    pub switches: [u64; 3],
    /// By this process in all (its parts, the benchmark's driver, the floor).
    pub process: Duration,
    /// By the agent's spawner itself.
    pub spawner: Duration,
    /// By the processes this process and the spawner waited for: the supervisors and their
    /// commands (and the floor's launches, which do not run while mesofs is measured).
    pub tasks: Duration,
}

impl Cpu {
    /// The CPU time spent now.
    pub fn now() -> Cpu {
        let mut cpu = Cpu {
            process: rusage(libc::RUSAGE_SELF),
            tasks: rusage(libc::RUSAGE_CHILDREN),
            ..Cpu::default()
        };
        for (tid, comm) in threads() {
            let Some(part) = Part::of_thread(&comm) else {
                continue;
            };
            // schedstat: the time on a CPU (ns), the time spent waiting for one (ns), and how
            // many times the thread was switched in.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
            else {
                continue;
            };
            let figures: Vec<u64> = stat
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            if let [ran, _, switched] = figures[..] {
                cpu.parts[part.index()] += Duration::from_nanos(ran);
                cpu.switches[part.index()] += switched;
            }
        }
        for pid in children() {
            if let Some((own, waited)) = process_cpu(pid) {
                cpu.spawner += own;
                cpu.tasks += waited;
            }
        }
        cpu
    }

    /// What was spent between `before` and this.
    pub fn since(&self, before: &Cpu) -> Cpu {
        let mut parts = [Duration::ZERO; 3];
        let mut switches = [0; 3];
        for i in 0..3 {
            parts[i] = self.parts[i].saturating_sub(before.parts[i]);
            switches[i] = self.switches[i].saturating_sub(before.switches[i]);
        }
        Cpu {
            parts,
            switches,
            process: self.process.saturating_sub(before.process),
            spawner: self.spawner.saturating_sub(before.spawner),
            tasks: self.tasks.saturating_sub(before.tasks),
        }
    }

    /// All of it: this process, the spawner and the tasks.
    pub fn total(&self) -> Duration {
        self.process + self.spawner + self.tasks
    }

    /// This process's CPU outside the three parts: the benchmark's driver and runtime.
    pub fn driver(&self) -> Duration {
        self.process
            .saturating_sub(self.parts.iter().copied().sum::<Duration>())
    }
}

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// This process's threads: id and name.
fn threads() -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                comm.trim_end().to_string(),
            ))
        })
        .collect()
}

/// The pids of this process's living children (the agent's spawner; the floor's children
/// are waited for before it returns).
fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| Some(s[s.rfind(')')? + 2..].split_whitespace().nth(1)? == me))
                .unwrap_or(false)
        })
        .collect()
}

/// A process's own CPU time and that of the children it waited for, from `/proc/<pid>/stat`
/// (fields 14-15 and 16-17, in clock ticks).
fn process_cpu(pid: i32) -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<u64> = stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let d = |t: u64| Duration::from_secs_f64(t as f64 / ticks);
    Some((d(fields[0] + fields[1]), d(fields[2] + fields[3])))
}

/// The system calls counted as fsyncs.
const FSYNC_CALLS: [&str; 2] = ["fsync", "fdatasync"];

/// Kernel counters of fsyncs, on every thread of this process and on the spawner, each also
/// counting what that thread or process starts while they are open. Opening them slows every
/// system call on the machine a little (the kernel then traces them), so the benchmark opens
/// them only for a run of its own.
pub struct Fsyncs {
    /// Each counter, with the part it counts for (`None`: the spawner and its supervisors,
    /// or the benchmark's own threads).
    counters: Vec<(Option<Part>, OwnedFd)>,
}

impl Fsyncs {
    /// Opens the counters; an error says why fsyncs cannot be counted here.
    pub fn open() -> Result<Fsyncs> {
        let ids = FSYNC_CALLS
            .iter()
            .map(|call| tracepoint_id(call))
            .collect::<Result<Vec<u64>>>()?;
        let mut counters = Vec::new();
        let targets = threads()
            .into_iter()
            .filter_map(|(tid, comm)| Some((tid.parse::<i32>().ok()?, Part::of_thread(&comm))))
            .chain(children().into_iter().map(|pid| (pid, None)));
        for (tid, part) in targets {
            for &id in &ids {
                match counter(id, tid) {
                    Ok(fd) => counters.push((part, fd)),
                    // A thread that ended since the listing.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(e).context("perf_event_open of a syscall tracepoint"),
                }
            }
        }
        Ok(Fsyncs { counters })
    }

    /// The fsyncs counted so far, by part (indexed as [`Part::ALL`]), and in all.
    pub fn read(&self) -> ([u64; 3], u64) {
        let mut parts = [0; 3];
        let mut all = 0;
        for (part, fd) in &self.counters {
            let mut value = [0u8; 8];
            // SAFETY: reading 8 bytes into a buffer of 8 from a counter we own.
            let n = unsafe { libc::read(fd.as_raw_fd(), value.as_mut_ptr().cast(), 8) };
            if n != 8 {
                continue;
            }
            let v = u64::from_ne_bytes(value);
            all += v;
            if let Some(p) = part {
                parts[p.index()] += v;
            }
        }
        (parts, all)
    }
}

/// The id of a system call's entry tracepoint, from tracefs.
fn tracepoint_id(call: &str) -> Result<u64> {
    for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        let path = format!("{root}/events/syscalls/sys_enter_{call}/id");
        if let Ok(id) = std::fs::read_to_string(&path) {
            return id.trim().parse().with_context(|| format!("reading {path}"));
        }
    }
    bail!(
        "no tracepoint sys_enter_{call} under /sys/kernel/tracing or /sys/kernel/debug/tracing (tracefs not mounted, or a kernel without syscall tracepoints)"
    )
}

/// A counter of one tracepoint on one thread, and on what it starts from now on.
fn counter(id: u64, tid: i32) -> std::io::Result<OwnedFd> {
    let mut attr = perf_event_attr {
        type_: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<perf_event_attr>() as u32,
        config: id,
        ..Default::default()
    };
    attr.set_inherit(1);
    // SAFETY: a well-formed attribute; the descriptor returned is ours.
    let fd = unsafe {
        perf_event_open_sys::perf_event_open(&mut attr, tid, -1, -1, PERF_FLAG_FD_CLOEXEC.into())
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_belong_to_the_part_their_name_says() {
        assert_eq!(Part::of_thread("mesofs-master"), Some(Part::Master));
        assert_eq!(Part::of_thread("spawner-wait"), Some(Part::Agent));
        assert_eq!(Part::of_thread("fuser-3"), Some(Part::Mount));
        assert_eq!(Part::of_thread("tokio-runtime-w"), None);
    }

    #[test]
    fn fsyncs_this_thread_makes_are_counted() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "counting fsyncs needs root, which CI has"
            );
            eprintln!("SKIPPED: counting fsyncs with perf_event_open needs root");
            return;
        }
        let counted = Fsyncs::open().expect("counters");
        let (_, before) = counted.read();
        let file = tempfile::tempfile().unwrap();
        for _ in 0..3 {
            file.sync_all().unwrap();
            file.sync_data().unwrap();
        }
        let (_, after) = counted.read();
        assert!(after - before >= 6, "{before} then {after}");
    }
}
