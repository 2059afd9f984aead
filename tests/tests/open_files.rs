//! Open files behave as on any Unix filesystem: an open fd stays fstat-able after its node
//! vanished, and its size is that of the version it reads; one write(2) to a control file is
//! one command even when it is too large for one FUSE request (it is refused whole).

use std::time::Duration;

use mesofs_tests::{can_run, Dev, Mounted};

#[test]
fn an_open_fd_stays_readable_and_fstatable_after_its_node_vanished() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    dev.sh_ok("mkdir frameworks/fw");
    let offer = dev
        .sh_ok("cat frameworks/fw/offers/next")
        .trim()
        .to_string();
    let resources = dev.read(&format!("frameworks/fw/offers/{offer}/resources"));
    // cat fstats its input: this printed `cat: -: No such file or directory`.
    let out = dev.sh_ok(&format!(
        "o=frameworks/fw/offers/{offer} && exec 8<$o/resources && echo 5s > $o/decline \
         && test ! -e $o && cat <&8 && stat -L -c %s /dev/fd/8"
    ));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(&*resources), "{out}");
    assert_eq!(
        lines.next(),
        Some(&*(resources.len() + 1).to_string()),
        "{out}"
    );

    let id = dev.read("frameworks/fw/id");
    let out = dev.sh_ok("exec 7<frameworks/fw/id && rmdir frameworks/fw && test ! -e frameworks/fw && cat <&7 && stat -L -c %s /dev/fd/7");
    assert_eq!(out, format!("{id}\n{}\n", id.len() + 1));
}

#[test]
fn fstat_of_an_open_file_gives_the_size_of_the_version_it_reads() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start();
    dev.sh_ok(
        "mkdir frameworks/f && o=$(cat frameworks/f/offers/next) \
         && echo 'name=t -- sleep 600' > frameworks/f/offers/$o/launch",
    );
    dev.wait_for_file(
        "frameworks/f/tasks/t/state",
        "TASK_RUNNING",
        Duration::from_secs(30),
    );
    let status = dev.mount.join("frameworks/f/tasks/t/status.json");
    let mut file = std::fs::File::open(&status).unwrap();
    let opened = file.metadata().unwrap().len();
    dev.sh_ok("echo > frameworks/f/tasks/t/kill");
    dev.wait_for_file(
        "frameworks/f/tasks/t/state",
        "TASK_KILLED",
        Duration::from_secs(30),
    );
    let current = std::fs::read(&status).unwrap().len() as u64;
    assert!(current > opened, "the killed task's status is longer");

    assert_eq!(
        file.metadata().unwrap().len(),
        opened,
        "fstat: the open's version"
    );
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).unwrap();
    assert_eq!(text.len() as u64, opened, "reads give the open's version");
    assert!(text.contains("TASK_RUNNING") && !text.contains("TASK_KILLED"));
    // A stat by path shows the current version.
    assert_eq!(std::fs::metadata(&status).unwrap().len(), current);
    assert_eq!(
        dev.sh_ok("stat -c %s frameworks/f/tasks/t/status.json")
            .trim(),
        current.to_string()
    );

    // The same from a shell: the fd's size agrees with what it reads, the path's with now.
    let out = dev.sh_ok(
        "exec 8<frameworks/f/tasks/t/state && before=$(stat -L -c %s /dev/fd/8) \
         && rmdir frameworks/f && echo $before $(stat -L -c %s /dev/fd/8) $(wc -c <&8)",
    );
    let want = "TASK_KILLED\n".len();
    assert_eq!(out.trim(), format!("{want} {want} {want}"));
}

/// A launch text of `len` bytes: one task `name`, then comment lines.
fn launch_text(name: &str, len: usize) -> Vec<u8> {
    let mut text = format!("name={name} -- true\n").into_bytes();
    while text.len() < len {
        let line = (len - text.len()).min(1000);
        text.extend(std::iter::repeat_n(b'#', line - 1));
        text.push(b'\n');
    }
    text
}

#[test]
fn a_write_too_large_for_one_request_is_refused_whole_with_efbig() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    dev.sh_ok("mkdir frameworks/f");
    let offer = dev.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, launch_text("big", 1_500_045)).unwrap();
    let launch = format!("frameworks/f/offers/{offer}/launch");
    // dd makes one write(2) of the whole file: plain, appending (>>), and at an offset.
    for flags in ["", "oflag=append", "oflag=seek_bytes seek=1000000"] {
        let out = dev.sh(&format!(
            "dd if={} of={launch} bs=4M iflag=fullblock conv=notrunc status=none {flags}",
            big.display()
        ));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags}: refused");
        assert!(err.contains("File too large"), "{flags}: EFBIG, got {err}");
        let why = dev.read("frameworks/f/error");
        assert!(why.starts_with("write too large: "), "{flags}: {why}");
        assert!(
            dev.sh_ok("ls frameworks/f/tasks").trim().is_empty(),
            "{flags}: nothing launched"
        );
    }
    assert!(dev
        .mount
        .join(format!("frameworks/f/offers/{offer}"))
        .exists());
    let events = dev.sh_ok("timeout 2 grep -m1 '^error write too large' frameworks/f/events");
    assert!(events.contains("nothing was applied"), "{events}");

    // Under the limit (1 MiB - 4 KiB) it is one command, applied whole.
    std::fs::write(&big, launch_text("whole", 1_000_000)).unwrap();
    dev.sh_ok(&format!(
        "dd if={} of={launch} bs=4M iflag=fullblock conv=notrunc status=none",
        big.display()
    ));
    assert_eq!(dev.sh_ok("ls frameworks/f/tasks").trim(), "whole");
}
