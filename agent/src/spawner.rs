//! The spawner: one small process per agent, exec'd once (`mesofs supervise --spawner`), that
//! forks each task's supervisor. A fork of it is a supervisor at once, with no exec of the
//! whole binary, no dynamic loading and no relocations. At each exec, glibc alone spends about
//! half a millisecond reading the processor's caches with `cpuid`, which traps on a virtual
//! machine. A forked supervisor also shares the spawner's pages until it writes to them.
//!
//! The spawner is the supervisors' parent and a child subreaper, so it also reaps whatever
//! the tasks orphan. It serves the agent over a socket pair, one request at a time, and ends
//! when the agent closes its end (or dies); the supervisors it forked live on without it.
//!
//! A request is a supervisor's [`Exec`] (its command line `mesofs supervise ...`,
//! environment and working directory) with three descriptors: its standard output and error
//! and the pipe it holds as descriptor 3 until its command runs. The reply is the
//! supervisor's pid with a pidfd for it, or why it could not be started. Each message is a
//! 4-byte little-endian length and that many bytes; strings in it end with a NUL.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use tracing::{info, warn};

use crate::isolator::Joiner;
use crate::process::{disable_huge_pages, reset_signals, spawn_isolated, Exec};
use crate::procfs;
use crate::supervisor::{self, Plan};

/// The flag of `mesofs supervise` that runs the spawner.
pub const FLAG: &str = "--spawner";
/// The spawner's descriptor of its end of the socket pair.
const SOCKET_FD: RawFd = 3;
/// Descriptors that come with a request: stdout, stderr, and the started pipe.
const REQUEST_FDS: usize = 3;
/// Room the spawner's command line leaves for its supervisors' (they show theirs in it).
const ROOM: usize = 4096;
/// The longest message either side accepts (a task's command line and environment are
/// bounded far below this by the master's request limit).
const MAX_MESSAGE: usize = 64 << 20;

/// The agent's side: a connection to its spawner, started again if the spawner has died.
pub(crate) struct Spawner {
    bin: PathBuf,
    conn: Mutex<Option<Conn>>,
}

/// A running spawner: our end of its socket. Dropping it closes the socket, and the
/// spawner ends.
struct Conn {
    sock: UnixStream,
    pid: i32,
}

impl Spawner {
    /// A spawner of the `mesofs` binary `bin`, started now if it can be (else at first use).
    pub(crate) fn new(bin: PathBuf) -> Spawner {
        let conn = match Conn::start(&bin) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(error = %e, "cannot start the spawner of supervisors yet; trying again at the first launch");
                None
            }
        };
        Spawner {
            bin,
            conn: Mutex::new(conn),
        }
    }

    /// The `mesofs` binary it runs.
    pub(crate) fn bin(&self) -> &Path {
        &self.bin
    }

    /// Starts `exec`, a supervisor's (`mesofs supervise ...`), as a child of the spawner, in
    /// a session of its own, with `started` as its descriptor 3; returns its pid and a pidfd.
    pub(crate) fn spawn(&self, exec: &Exec, started: BorrowedFd) -> io::Result<(i32, OwnedFd)> {
        let request = encode(exec);
        let [stdout, stderr] = exec.outputs();
        let fds = [stdout.as_raw_fd(), stderr.as_raw_fd(), started.as_raw_fd()];
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut sent = false;
        for _ in 0..2 {
            if conn.is_none() {
                *conn = Some(Conn::start(&self.bin)?);
            }
            let c = conn.as_mut().expect("started just now");
            match send(&c.sock, &request, &fds) {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(e) => {
                    // The spawner is gone (killed, or it failed) before it had the whole
                    // request, so it started nothing: a new one, once.
                    warn!(pid = c.pid, error = %e, "lost the spawner of supervisors; starting another");
                    *conn = None;
                }
            }
        }
        let Some(c) = conn.as_mut().filter(|_| sent) else {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the spawner of supervisors takes no requests",
            ));
        };
        match c.answer() {
            Ok(answer) => answer,
            Err(e) => {
                // It had the request and may have acted on it: not asked again (the launch
                // fails, and its isolation goes with whatever started); the next launch
                // starts a new spawner.
                warn!(pid = c.pid, error = %e, "lost the spawner of supervisors during a launch");
                *conn = None;
                Err(e)
            }
        }
    }
}

impl Conn {
    fn start(bin: &Path) -> io::Result<Conn> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let argv: Vec<OsString> = vec![
            bin.as_os_str().into(),
            supervisor::SUBCOMMAND.into(),
            FLAG.into(),
            // Room for the command lines of the supervisors, which are copies of this process.
            " ".repeat(ROOM).into(),
        ];
        // Its messages go where the agent's do.
        let stderr = || io::stderr().as_fd().try_clone_to_owned();
        // MIMALLOC_ALLOW_THP=0: the binary's allocator then disables transparent huge pages
        // for the spawner before its first allocation (else two 2 MiB pages of its arena
        // would be most of its memory, and shared with every supervisor). It cannot be set
        // from here: the spawner's child shares the agent's memory until it execs, and the
        // setting belongs to the memory, not the process.
        let exec = Exec::new(
            bin.as_os_str(),
            &argv,
            [
                ("PATH", crate::containerizer::DEFAULT_PATH),
                ("MIMALLOC_ALLOW_THP", "0"),
            ],
            Path::new("/"),
            stderr()?,
            stderr()?,
        )?;
        let pid = spawn_isolated(&exec, &Joiner::none(), None, Some(theirs.as_raw_fd()))?;
        drop(theirs);
        info!(pid, "started the spawner of supervisors");
        // Its end is reaped here, where nothing else waits for it.
        std::thread::Builder::new()
            .name("spawner-wait".into())
            .spawn(move || {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            })?;
        Ok(Conn {
            sock: UnixStream::from(ours),
            pid,
        })
    }

    /// Reads the answer to the request sent: `Err` when the spawner could not be heard,
    /// `Ok(Err)` when it could not start the supervisor.
    fn answer(&mut self) -> io::Result<io::Result<(i32, OwnedFd)>> {
        let (reply, mut fds) = recv(&self.sock)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the spawner closed its socket",
            )
        })?;
        decode_reply(&reply, fds.pop())
    }
}

/// A supervisor's command line, environment and working directory, as one message body.
fn encode(exec: &Exec) -> Vec<u8> {
    let (argv, env, dir) = exec.words();
    let mut body = Vec::new();
    let mut push = |s: &[u8]| {
        body.extend_from_slice(s);
        body.push(0);
    };
    push(dir.to_bytes());
    push(argv.len().to_string().as_bytes());
    for word in argv.iter().chain(env) {
        push(word.to_bytes());
    }
    body
}

/// A request as the spawner reads it.
struct Request {
    dir: CString,
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdout: OwnedFd,
    stderr: OwnedFd,
    started: OwnedFd,
}

impl Request {
    fn decode(body: &[u8], fds: Vec<OwnedFd>) -> Result<Request, String> {
        let Ok([stdout, stderr, started]) = <[OwnedFd; REQUEST_FDS]>::try_from(fds) else {
            return Err("a request comes with three descriptors".into());
        };
        let body = body.strip_suffix(&[0]).ok_or("a request ends with a NUL")?;
        let mut words = body.split(|&b| b == 0);
        let dir = CString::new(words.next().ok_or("no directory")?).expect("split at NULs");
        let argc: usize = std::str::from_utf8(words.next().ok_or("no argument count")?)
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or("a bad argument count")?;
        let argv: Vec<OsString> = words
            .by_ref()
            .take(argc)
            .map(|w| OsStr::from_bytes(w).to_os_string())
            .collect();
        if argv.len() != argc {
            return Err("fewer arguments than counted".into());
        }
        let env = words
            .map(|w| {
                let eq = w
                    .iter()
                    .position(|&b| b == b'=')
                    .ok_or("a variable without =")?;
                Ok((
                    OsStr::from_bytes(&w[..eq]).to_os_string(),
                    OsStr::from_bytes(&w[eq + 1..]).to_os_string(),
                ))
            })
            .collect::<Result<_, &str>>()?;
        Ok(Request {
            dir,
            argv,
            env,
            stdout,
            stderr,
            started,
        })
    }
}

fn decode_reply(reply: &[u8], pidfd: Option<OwnedFd>) -> io::Result<io::Result<(i32, OwnedFd)>> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "a malformed reply from the spawner",
        )
    };
    let text = std::str::from_utf8(reply).map_err(|_| bad())?;
    if let Some(pid) = text.strip_prefix("ok ") {
        let pid = pid.parse().map_err(|_| bad())?;
        return Ok(Ok((pid, pidfd.ok_or_else(bad)?)));
    }
    let (errno, message) = text
        .strip_prefix("err ")
        .and_then(|t| t.split_once(' '))
        .ok_or_else(bad)?;
    let errno: i32 = errno.parse().map_err(|_| bad())?;
    let os = io::Error::from_raw_os_error(errno);
    Ok(Err(io::Error::new(os.kind(), format!("{message}: {os}"))))
}

/// Sends one message with `fds` attached to its first byte.
fn send(sock: &UnixStream, body: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if body.len() > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too large a message",
        ));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(body);
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let sent = loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&frame)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r?,
        }
    };
    (&*sock).write_all(&frame[sent..])
}

/// Reads one message and the descriptors that came with it; `None` at the end of the stream.
fn recv(sock: &UnixStream) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut header = [0u8; 4];
    let mut space = nix::cmsg_space!([RawFd; REQUEST_FDS]);
    let (got, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut header)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(msg) => {
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(raw) = cmsg {
                        // SAFETY: descriptors the kernel just installed for us.
                        fds.extend(
                            raw.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                break (msg.bytes, fds);
            }
        }
    };
    if got == 0 {
        return Ok(None);
    }
    (&*sock).read_exact(&mut header[got..])?;
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too large a message",
        ));
    }
    let mut body = vec![0u8; len];
    (&*sock).read_exact(&mut body)?;
    Ok(Some((body, fds)))
}

/// Runs the spawner (`mesofs supervise --spawner`, its socket as descriptor 3); never returns.
pub fn serve() -> ! {
    // Its own command line, without the room it keeps.
    let mut own = Vec::new();
    for arg in std::env::args_os().take(3) {
        own.extend_from_slice(arg.as_bytes());
        own.push(0);
    }
    // Read once: every supervisor's is at the same place.
    let area = argument_area();
    show_as(area, &own);
    // Inherited by every supervisor, which gives commands the agent's setting back (if the
    // allocator did not disable them already, its first pages are huge, but nothing more).
    disable_huge_pages(true);
    // SAFETY: descriptor 3 is the socket the agent gave us, and nothing else owns it.
    let sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(SOCKET_FD) });
    // SAFETY: fcntl on our own descriptor: no supervisor or command inherits it.
    unsafe { libc::fcntl(SOCKET_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("mesofs spawner: cannot become a child subreaper ({e}): orphans of tasks will be reaped by init");
    }
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGCHLD);
    let children = mask.thread_block().map_err(io::Error::from).and_then(|()| {
        nix::sys::signalfd::SignalFd::with_flags(
            &mask,
            nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
        )
        .map_err(io::Error::from)
    });
    let children = match children {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("mesofs spawner: cannot watch its children: {e}");
            std::process::exit(1)
        }
    };
    loop {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
            PollFd::new(children.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                eprintln!("mesofs spawner: poll: {e}");
                break;
            }
        }
        let request = fds[0].any().unwrap_or(false);
        while let Ok(Some(_)) = children.read_signal() {}
        reap_all();
        if !request {
            continue;
        }
        let (body, fds) = match recv(&sock) {
            Ok(Some(message)) => message,
            // The agent is gone.
            Ok(None) => break,
            Err(e) => {
                eprintln!("mesofs spawner: cannot read a request: {e}");
                break;
            }
        };
        let (reply, pidfd) = match start_supervisor(&body, fds, children.as_fd(), area) {
            Ok((pid, pidfd)) => (format!("ok {pid}"), Some(pidfd)),
            Err((e, what)) => (
                format!("err {} {what}", e.raw_os_error().unwrap_or(libc::EIO)),
                None,
            ),
        };
        let attached: Vec<RawFd> = pidfd.iter().map(|fd| fd.as_raw_fd()).collect();
        if let Err(e) = send(&sock, reply.as_bytes(), &attached) {
            eprintln!("mesofs spawner: cannot answer the agent: {e}");
            break;
        }
    }
    reap_all();
    std::process::exit(0)
}

/// Reaps every child that has exited: supervisors, and orphans of tasks.
fn reap_all() {
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own children, without blocking.
        if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
            return;
        }
    }
}

/// Forks a supervisor for the request; returns its pid and a pidfd, or why it could not run
/// (with what failed).
fn start_supervisor(
    body: &[u8],
    fds: Vec<OwnedFd>,
    children: BorrowedFd,
    area: Option<(usize, usize)>,
) -> Result<(i32, OwnedFd), (io::Error, String)> {
    let invalid = |what: String| (io::Error::from_raw_os_error(libc::EINVAL), what);
    let request = Request::decode(body, fds).map_err(invalid)?;
    let plan = match request.argv.get(1).map(OsString::as_os_str) {
        Some(s) if s == supervisor::SUBCOMMAND => {
            Plan::parse(request.argv[2..].iter().cloned()).map_err(invalid)?
        }
        _ => return Err(invalid("not a supervisor's command line".into())),
    };
    // Its command line as `ps` shows it: the same as an exec'd supervisor's.
    let mut cmdline = Vec::new();
    for arg in &request.argv {
        cmdline.extend_from_slice(arg.as_bytes());
        cmdline.push(0);
    }
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| (e.into(), "cannot make a pipe".to_string()))?;
    // SAFETY: this process is single-threaded, so the child may do anything.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err((io::Error::last_os_error(), "cannot fork".into()));
    }
    if pid == 0 {
        drop(report_r);
        // The socket, descriptor 3, is replaced there by the started pipe.
        become_supervisor(
            request,
            &plan,
            (area, cmdline),
            report_w,
            children.as_raw_fd(),
        );
    }
    drop(report_w);
    drop(request);
    // Opened before anything here reaps: the pid surely names our child.
    let pidfd = crate::process::pidfd_open(pid).ok();
    let mut errno = [0u8; 4];
    let failed = match (&File::from(report_r)).read(&mut errno) {
        Ok(4) => Some((
            io::Error::from_raw_os_error(i32::from_le_bytes(errno)),
            "cannot set the supervisor up".to_string(),
        )),
        Ok(_) => None,
        Err(e) => Some((e, "cannot learn whether the supervisor started".into())),
    };
    let failed = failed.or_else(|| {
        pidfd
            .is_none()
            .then(|| (io::Error::last_os_error(), "cannot open a pidfd".into()))
    });
    if let Some(e) = failed {
        let mut status = 0;
        // SAFETY: our own child, which exits (or is killed) and is waited for here.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
        return Err(e);
    }
    Ok((pid, pidfd.expect("checked")))
}

/// In the forked child: a session of its own, the task's streams, directory, environment and
/// command line, then the supervisor's work. A failure before that is written to `report` as
/// an errno; closing it unwritten says the supervisor runs.
fn become_supervisor(
    request: Request,
    plan: &Plan,
    (area, cmdline): (Option<(usize, usize)>, Vec<u8>),
    report: OwnedFd,
    spawners: RawFd,
) -> ! {
    let fail = |e: io::Error| -> ! {
        let errno = e.raw_os_error().unwrap_or(libc::EIO).to_le_bytes();
        // SAFETY: one write of 4 bytes to a pipe (atomic), then leaving the child without
        // running the spawner's exit handlers.
        unsafe {
            libc::write(report.as_raw_fd(), errno.as_ptr().cast(), errno.len());
            libc::_exit(126)
        }
    };
    reset_signals();
    // SAFETY: system calls on descriptors this child owns.
    unsafe {
        if libc::setsid() < 0 {
            fail(io::Error::last_os_error());
        }
    }
    let null = match File::open("/dev/null") {
        Ok(f) => OwnedFd::from(f),
        Err(e) => fail(e),
    };
    let streams = [
        (null.as_raw_fd(), 0),
        (request.stdout.as_raw_fd(), 1),
        (request.stderr.as_raw_fd(), 2),
        (request.started.as_raw_fd(), supervisor::STARTED_FD),
    ];
    // Every source is above 3, received or opened while the spawner's 0 to 3 were open, so
    // that no dup2 replaces a source before its own.
    if streams
        .iter()
        .any(|&(from, _)| from <= supervisor::STARTED_FD)
    {
        fail(io::Error::from_raw_os_error(libc::EBADF));
    }
    for (from, to) in streams {
        // SAFETY: dup2 onto the standard descriptors and 3, which this child owns.
        if unsafe { libc::dup2(from, to) } != to {
            fail(io::Error::last_os_error());
        }
    }
    // The originals go, or the supervisor would hold the started pipe open forever.
    drop(null);
    drop(request.stdout);
    drop(request.stderr);
    drop(request.started);
    // SAFETY: closing, in this child, the spawner's signalfd, which is nothing of its.
    unsafe { libc::close(spawners) };
    // SAFETY: chdir to a NUL-terminated path.
    if unsafe { libc::chdir(request.dir.as_ptr()) } != 0 {
        fail(io::Error::last_os_error());
    }
    // The task's environment and nothing else, as an exec'd supervisor has it.
    for (name, _) in std::env::vars_os() {
        std::env::remove_var(name);
    }
    for (name, value) in &request.env {
        std::env::set_var(name, value);
    }
    show_as(area, &cmdline);
    drop(report);
    supervisor::run(plan)
}

/// Makes `/proc/self/cmdline` (what `ps` shows) read `cmdline` (NUL-ended words), cut to
/// the room this process's arguments took at its exec, `area` (the agent reserves [`ROOM`]);
/// a fork's is where its parent's was.
fn show_as(area: Option<(usize, usize)>, cmdline: &[u8]) {
    let Some((start, end)) = area else {
        return;
    };
    let room = end - start;
    if room == 0 {
        return;
    }
    let n = cmdline.len().min(room - 1);
    // SAFETY: [start, end) holds this process's arguments, on its own stack, written by the
    // kernel at exec and read by nothing since (the standard library copies them when asked,
    // and the spawner asked before it forked).
    unsafe {
        let area = start as *mut u8;
        std::ptr::copy_nonoverlapping(cmdline.as_ptr(), area, n);
        std::ptr::write_bytes(area.add(n), 0, room - n);
    }
}

/// Where this process's arguments lie.
fn argument_area() -> Option<(usize, usize)> {
    let (start, end) = procfs::stat(std::process::id() as i32)?.args;
    (start > 0 && end >= start).then_some((start as usize, end as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_survives_its_trip_through_the_socket() {
        let out = tempfile::tempfile().unwrap();
        let argv: Vec<OsString> = ["/bin/mesofs", "supervise", "--exit-file", "/x", "--", "a b"]
            .iter()
            .map(OsString::from)
            .collect();
        let exec = Exec::new(
            OsStr::new("/bin/mesofs"),
            &argv,
            [("A", "1=2"), ("EMPTY", "")],
            Path::new("/tmp"),
            out.try_clone().unwrap().into(),
            out.try_clone().unwrap().into(),
        )
        .unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let fds: Vec<RawFd> = exec
            .outputs()
            .iter()
            .map(|fd| fd.as_raw_fd())
            .chain([out.as_raw_fd()])
            .collect();
        send(&a, &encode(&exec), &fds).unwrap();
        let (body, fds) = recv(&b).unwrap().expect("a message");
        let request = Request::decode(&body, fds).expect("well-formed");
        assert_eq!(request.dir.as_c_str(), c"/tmp");
        assert_eq!(request.argv, argv);
        assert_eq!(
            request.env,
            vec![("A".into(), "1=2".into()), ("EMPTY".into(), "".into())]
        );
        drop(a);
        assert!(recv(&b).unwrap().is_none(), "the end of the stream");
    }

    #[test]
    fn a_malformed_request_is_refused() {
        let decode = |body: &[u8], n: usize| {
            let fds = (0..n)
                .map(|_| OwnedFd::from(File::open("/dev/null").unwrap()))
                .collect();
            Request::decode(body, fds).err()
        };
        assert!(
            decode(b"/\x002\x00a\x00b\x00", 2).is_some(),
            "two descriptors"
        );
        assert!(decode(b"/\x002\x00a\x00b", 3).is_some(), "no final NUL");
        assert!(
            decode(b"/\x003\x00a\x00b\x00", 3).is_some(),
            "short of arguments"
        );
        assert!(decode(b"/\x00x\x00a\x00", 3).is_some(), "no count");
        assert!(
            decode(b"/\x001\x00a\x00NOEQUALS\x00", 3).is_some(),
            "a bad variable"
        );
        assert!(decode(b"/\x001\x00a\x00K=V\x00", 3).is_none());
    }

    #[test]
    fn replies_say_the_pid_or_why_not() {
        let fd = || Some(OwnedFd::from(File::open("/dev/null").unwrap()));
        let (pid, _) = decode_reply(b"ok 42", fd()).unwrap().unwrap();
        assert_eq!(pid, 42);
        let e = decode_reply(b"err 2 cannot set the supervisor up", None)
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(
            e.to_string().contains("cannot set the supervisor up"),
            "{e}"
        );
        assert!(decode_reply(b"ok 42", None).is_err(), "ok without a pidfd");
        assert!(decode_reply(b"what", None).is_err());
    }
}
