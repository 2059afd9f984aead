//! A task sees the environment Mesos's agents give theirs, besides mesofs's own names, so
//! that programs written for Mesos find what they expect.

use mesofs_tests::{can_run, Dev, Mounted};

#[test]
fn a_task_sees_mesos_names_for_its_task_framework_agent_host_and_sandbox() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    dev.sh_ok("mkdir frameworks/envs");
    let offer = dev
        .sh_ok("cat frameworks/envs/offers/next")
        .trim()
        .to_string();
    dev.sh_ok(&format!(
        "echo 'name=show cpus=0.1 mem=32 -- printf \"%s\\n\" \"$MESOS_TASK_ID\" \
         \"$MESOS_FRAMEWORK_ID\" \"$MESOS_AGENT_ID\" \"$HOST\" \"$MESOS_SANDBOX\" \"$(pwd)\" \
         \"$MESOFS_TASK_ID\"' > frameworks/envs/offers/{offer}/launch"
    ));
    assert_eq!(
        dev.sh_ok("cat frameworks/envs/tasks/show/wait").trim(),
        "TASK_FINISHED"
    );
    let status: serde_json::Value =
        serde_json::from_str(&dev.read("frameworks/envs/tasks/show/status.json")).unwrap();
    let out = dev.read("frameworks/envs/tasks/show/stdout");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "one line per variable: {out:?}");
    let field = |name: &str| {
        status[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .to_string()
    };
    assert_eq!(lines[0], field("id"), "MESOS_TASK_ID");
    assert_eq!(lines[1], field("framework_id"), "MESOS_FRAMEWORK_ID");
    assert_eq!(lines[2], field("agent"), "MESOS_AGENT_ID");
    assert_eq!(lines[3], field("hostname"), "HOST");
    assert!(!lines[4].is_empty(), "MESOS_SANDBOX is set");
    assert_eq!(lines[4], lines[5], "MESOS_SANDBOX is the working directory");
    assert_eq!(lines[6], lines[0], "mesofs's own name says the same");
}
