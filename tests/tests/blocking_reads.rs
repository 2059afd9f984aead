//! Blocking reads (`offers/next`, `wait`, `events_pipe`) give way to signals: Ctrl-C ends them
//! promptly, and a SIGKILLed reader never hangs in the kernel.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesofs_tests::{can_run, Dev, Mounted};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Starts `cat path`, lets it block, signals it, and returns how long it took to exit.
fn signal_blocked_reader(dev: &Dev, rel: &str, signal: Signal) -> Duration {
    let mut child = Command::new("cat")
        .arg(dev.mount.join(rel))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cat");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "{rel} blocks while nothing is there"
    );
    let sent = Instant::now();
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            return sent.elapsed();
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{rel}: reader still alive 5 s after {signal:?}\n{}",
            dev.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn blocked_readers_return_promptly_on_sigint_and_sigkill() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    // The first framework holds the only agent's offer, so the second has none.
    dev.sh_ok(
        "mkdir frameworks/holder && cat frameworks/holder/offers/next && mkdir frameworks/waiter",
    );
    let offer = dev
        .sh_ok("cat frameworks/holder/offers/next")
        .trim()
        .to_string();
    dev.sh_ok(&format!(
        "echo 'name=s -- sleep 603' > frameworks/holder/offers/{offer}/launch"
    ));

    for (rel, signal) in [
        ("frameworks/waiter/offers/next", Signal::SIGINT),
        ("frameworks/waiter/offers/next", Signal::SIGKILL),
        ("frameworks/holder/tasks/s/wait", Signal::SIGINT),
        ("frameworks/holder/tasks/s/wait", Signal::SIGKILL),
        ("frameworks/waiter/events_pipe", Signal::SIGTERM),
    ] {
        let took = signal_blocked_reader(&dev, rel, signal);
        // The figure is printed; the assertion is generous because machines are noisy.
        println!("{rel}: reader gone {took:?} after {signal:?}");
        assert!(
            took < Duration::from_secs(2),
            "{rel} took {took:?} after {signal:?}"
        );
    }
    dev.sh_ok("echo > frameworks/holder/tasks/s/kill");
}
