//! Who a task runs as: the user who made its framework, with that user's groups, in a sandbox
//! it owns, with default signal dispositions whatever the agent inherited, and with the
//! agent's transparent huge page setting (which its supervisor does without).

use mesofs_tests::{can_run, Dev, Mounted};

#[test]
fn a_task_runs_as_the_user_who_made_its_framework() {
    if !can_run() {
        return;
    }
    // Ignored signals survive exec: mesofs dev inherits this one, its tasks must not.
    // SAFETY: ignoring SIGQUIT in the test process, which never uses it.
    unsafe { libc::signal(libc::SIGQUIT, libc::SIG_IGN) };
    let dev = Dev::start();
    let as_nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups";
    dev.sh_ok(&format!("{as_nobody} mkdir frameworks/theirs"));
    let offer = dev
        .sh_ok("cat frameworks/theirs/offers/next")
        .trim()
        .to_string();
    dev.sh_ok(&format!(
        "{as_nobody} sh -c \"echo 'name=who -- id -u; id -g; echo mine > own; stat -c %u . own; \
         echo \\$USER \\$LOGNAME; grep SigIgn /proc/self/status' \
         > frameworks/theirs/offers/{offer}/launch\""
    ));
    assert_eq!(
        dev.sh_ok("cat frameworks/theirs/tasks/who/wait").trim(),
        "TASK_FINISHED",
        "stderr: {}",
        dev.read("frameworks/theirs/tasks/who/stderr")
    );
    let stdout = dev.read("frameworks/theirs/tasks/who/stdout");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..5],
        ["65534", "65534", "65534", "65534", "nobody nobody"],
        "{stdout}"
    );
    let ignored = lines[5].trim_start_matches("SigIgn:").trim();
    let ignored = u64::from_str_radix(ignored, 16).expect("a SigIgn mask");
    // Signals 1 to 31; glibc keeps 32 and 33 for itself.
    assert_eq!(ignored & 0x7fff_ffff, 0, "ignored signals: {ignored:#x}");

    // Give the rest of the offer back, so root's framework is offered it now.
    dev.sh_ok(&format!(
        "{as_nobody} sh -c 'echo > frameworks/theirs/offers/{offer}/decline'"
    ));

    // Root's framework runs its tasks as root.
    dev.sh_ok("mkdir frameworks/mine");
    let offer = dev
        .sh_ok("cat frameworks/mine/offers/next")
        .trim()
        .to_string();
    dev.sh_ok(&format!(
        "echo 'name=who -- id -u; echo $USER' > frameworks/mine/offers/{offer}/launch"
    ));
    assert_eq!(
        dev.sh_ok("cat frameworks/mine/tasks/who/wait").trim(),
        "TASK_FINISHED"
    );
    assert_eq!(dev.read("frameworks/mine/tasks/who/stdout"), "0\nroot");
}

#[test]
fn a_framework_belongs_to_a_user_name_and_an_agent_without_that_user_fails_its_tasks() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    let user = format!("mfst{}", std::process::id() % 100_000);
    let made = std::process::Command::new("useradd")
        .args(["--no-create-home", "--shell", "/usr/sbin/nologin", &user])
        .status()
        .expect("running useradd");
    assert!(made.success(), "useradd {user}");
    let uid = nix::unistd::User::from_name(&user)
        .unwrap()
        .expect("the user exists")
        .uid;
    let as_user = format!("setpriv --reuid={uid} --regid={uid} --clear-groups");
    dev.sh_ok(&format!("{as_user} mkdir frameworks/gone"));
    assert_eq!(
        dev.read("frameworks/gone/user"),
        format!("{uid} {user}"),
        "the framework records its owner's name"
    );
    // The user leaves the agent's machine: the framework's tasks cannot run there as anyone.
    let removed = std::process::Command::new("userdel")
        .arg(&user)
        .status()
        .expect("running userdel");
    assert!(removed.success(), "userdel {user}");
    let offer = dev
        .sh_ok("cat frameworks/gone/offers/next")
        .trim()
        .to_string();
    dev.sh_ok(&format!(
        "echo 'name=t -- id' > frameworks/gone/offers/{offer}/launch"
    ));
    assert_eq!(
        dev.sh_ok("cat frameworks/gone/tasks/t/wait").trim(),
        "TASK_FAILED"
    );
    let status: serde_json::Value =
        serde_json::from_str(&dev.read("frameworks/gone/tasks/t/status.json")).unwrap();
    assert_eq!(
        status["reason"], "REASON_CONTAINER_LAUNCH_FAILED",
        "{status}"
    );
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("user \"{user}\" does not exist on this agent")),
        "{status}"
    );

    // A uid with no name at all cannot make a framework.
    let out = dev.sh("setpriv --reuid=65533 --regid=65533 --clear-groups mkdir frameworks/anon");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_task_keeps_the_agents_huge_page_setting_which_its_supervisor_runs_without() {
    if !can_run() {
        return;
    }
    let thp = |pid: &str| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("a status");
        status
            .lines()
            .find(|l| l.starts_with("THP_enabled:"))
            .map(|l| l.trim_start_matches("THP_enabled:").trim().to_string())
            .expect("a THP_enabled line")
    };
    assert_eq!(
        thp("self"),
        "1",
        "this test needs transparent huge pages allowed in its own process"
    );
    let dev = Dev::start();
    dev.sh_ok("mkdir frameworks/thp");
    // More than one: what a launch does must not change what the next one sees.
    for name in ["t1", "t2"] {
        let offer = dev
            .sh_ok("cat frameworks/thp/offers/next")
            .trim()
            .to_string();
        // The command's parent is its init, a fork of its supervisor.
        dev.sh_ok(&format!(
            "echo 'name={name} -- grep THP_enabled /proc/self/status; \
             grep THP_enabled /proc/$PPID/status; xargs -0 echo < /proc/$PPID/cmdline' \
             > frameworks/thp/offers/{offer}/launch"
        ));
        assert_eq!(
            dev.sh_ok(&format!("cat frameworks/thp/tasks/{name}/wait"))
                .trim(),
            "TASK_FINISHED",
            "stderr: {}",
            dev.read(&format!("frameworks/thp/tasks/{name}/stderr"))
        );
        let stdout = dev.read(&format!("frameworks/thp/tasks/{name}/stdout"));
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(lines[2].contains(" supervise "), "the parent: {stdout}");
        assert_eq!(
            lines[..2],
            ["THP_enabled:\t1", "THP_enabled:\t0"],
            "the command, then its supervisor: {stdout}"
        );
        assert_eq!(thp(&dev.pid().to_string()), "1", "the agent's own");
    }
}
