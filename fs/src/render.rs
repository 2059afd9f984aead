//! What reading a file gives: the text of every rendered file and the target of every link,
//! computed from a view.

use std::collections::BTreeSet;

use mesofs_kernel::resources::{Ranges, Resources, Value};
use mesofs_kernel::state::TaskInfo;
use mesofs_kernel::watch::{Offer, View};
use serde_json::json;

use crate::tree::{
    active_framework, agent_link_task, task_of, AgentFile, ClusterFile, FrameworkFile, MasterFile,
    Node, OfferFile, RoleFile, TaskFile,
};
use crate::usage::{self, Measured};
use crate::users::Users;

/// The text of `/README`.
pub const README: &str = "\
mesofs: a cluster as files
==========================

This directory is a mesofs cluster. Frameworks (schedulers) are directories; the cluster
offers them the resources of its agents; a framework accepts an offer by writing task specs
into a file. Everything is plain text, one value per file.

  cluster/leader        the leading master: \"<id> <address>\"; empty while none is reachable
  cluster/resources     total, offered, allocated and available resources
  cluster/masters/      <id>/ address, role, applied; ctl takes `add ID HOST:PORT`, `remove ID`
  agents/<id>/          hostname, address, state, resources, available, tasks/
  frameworks/           mkdir NAME registers a framework, rmdir NAME tears it down
  frameworks/<f>/       id, user, principal, role, suppressed, revive, optimistic, error,
                        events, events_pipe, offers/, tasks/
  roles/<role>/         weight, guarantee, limit (root writes), allocated, offered, reserved,
                        frameworks

A framework in shell:

  cd frameworks && mkdir hello && cd hello
  o=$(cat offers/next)                  # blocks until an offer comes, prints its id
  echo 'name=greet cpus=0.1 mem=32 -- echo hello world' > offers/$o/launch
  cat tasks/greet/wait                  # blocks until the task ends: TASK_FINISHED
  cat tasks/greet/stdout                # hello world
  cd .. && rmdir hello

Each write(2) to launch, decline or kill is one command, applied whole or refused whole, and
returns once it is durable. A refused write fails with an errno (EINVAL malformed spec, ENOENT
offer gone, ENOSPC tasks larger than the offer, EACCES not your framework, EEXIST name taken)
and its reason is kept in the framework's error file and events stream.

events is a log: a read at its end gives end-of-file, so tail -f, grep and cp work on it.
offers/next, tasks/<t>/wait and events_pipe block until there is something to read; Ctrl-C
ends them. The full reference is docs/filesystem.md in the mesofs source.
";

/// The content of a rendered file, or `None` if the node is gone or not a rendered file.
pub fn render(view: &View, node: &Node, users: &Users) -> Option<String> {
    let text = match node {
        Node::Readme => README.to_string(),
        Node::ClusterFile(ClusterFile::Leader) => line(
            view.leader
                .as_ref()
                .map(|l| l.to_string())
                .unwrap_or_default(),
        ),
        Node::MasterFile(m, file) => {
            let master = view.masters.iter().find(|s| s.id == *m)?;
            match file {
                MasterFile::Address => line(&master.address),
                MasterFile::Role => line(&master.role),
                MasterFile::Applied => line(master.applied.to_string()),
            }
        }
        Node::ClusterFile(ClusterFile::Resources) => cluster_resources(view),
        Node::AgentFile(a, file) => {
            let agent = view.state.agents.get(a)?;
            match file {
                AgentFile::Hostname => line(&agent.hostname),
                AgentFile::Address => line(&agent.address),
                AgentFile::State => line(agent.state.as_str()),
                AgentFile::Attributes => agent.attributes.lines(),
                AgentFile::Resources => line(agent.resources.to_string()),
                AgentFile::Available => line(agent_available(view, a).to_string()),
            }
        }
        Node::FrameworkFile(f, file) => {
            let fw = active_framework(view, f)?;
            match file {
                FrameworkFile::Id => line(&fw.id),
                FrameworkFile::User if !fw.user.is_empty() => format!("{} {}\n", fw.uid, fw.user),
                // A framework from before user names: the name this machine gives its uid.
                FrameworkFile::User => match users.name(fw.uid) {
                    Some(name) => format!("{} {name}\n", fw.uid),
                    None => line(fw.uid.to_string()),
                },
                FrameworkFile::Principal => line(fw.principal.as_deref().unwrap_or("")),
                FrameworkFile::Role => fw.roles().iter().map(line).collect(),
                FrameworkFile::Suppressed => line(if fw.suppressed { "1" } else { "0" }),
                FrameworkFile::Optimistic => line(if fw.optimistic { "1" } else { "0" }),
                FrameworkFile::Revive => return None,
                FrameworkFile::Error => view.errors.get(f).cloned().unwrap_or_default(),
                FrameworkFile::Events | FrameworkFile::EventsPipe => return None,
            }
        }
        Node::OfferFile(f, o, file) => {
            active_framework(view, f)?;
            let offer = view.offers.get(o).filter(|o| o.framework_id == *f)?;
            match file {
                OfferFile::Hostname => line(&offer.hostname),
                OfferFile::Role => line(&offer.role),
                OfferFile::Attributes => view
                    .state
                    .agents
                    .get(&offer.agent_id)
                    .map(|a| a.attributes.lines())
                    .unwrap_or_default(),
                OfferFile::Resources => line(offer.resources.to_string()),
                OfferFile::Cpus => line(scalar_text(&offer.resources, "cpus")),
                OfferFile::Mem => line(scalar_text(&offer.resources, "mem")),
                OfferFile::Disk => line(scalar_text(&offer.resources, "disk")),
                OfferFile::Ports => line(ports_text(&offer.resources)),
                OfferFile::Launch
                | OfferFile::Decline
                | OfferFile::Reserve
                | OfferFile::Unreserve => return None,
            }
        }
        Node::TaskFile(f, t, file) => {
            let task = task_of(view, f, t)?;
            match file {
                TaskFile::State => line(task.state().as_str()),
                TaskFile::StatusJson | TaskFile::Usage => return measured(view, node, None),
                TaskFile::Spec => line(task.spec.to_line()),
                TaskFile::Healthy => match &task.health {
                    Some(h) => line(h.healthy.to_string()),
                    None => String::new(),
                },
                _ => return None,
            }
        }
        Node::OffersWhy(f) => {
            active_framework(view, f)?;
            if view.framework_offers(f).next().is_some() {
                String::new()
            } else {
                view.why.get(f).cloned().unwrap_or_default()
            }
        }
        Node::RoleFile(role, file) => {
            let info = view.state.roles.get(role).cloned().unwrap_or_default();
            match file {
                RoleFile::Weight => line(
                    info.weight
                        .map_or_else(|| "1".to_string(), |w| w.to_string()),
                ),
                RoleFile::Guarantee => line(info.quota.guarantee.to_string()),
                RoleFile::Limit => line(
                    info.quota
                        .limit
                        .as_ref()
                        .map_or_else(String::new, |l| l.to_string()),
                ),
                // From the sums the state keeps by role and framework: no walk of the tasks.
                RoleFile::Allocated => line(view.state.allocated_within(role).to_string()),
                RoleFile::Offered => line(view.offers.offered_within(role).to_string()),
                RoleFile::Reserved => line(view.state.reserved_within(role).to_string()),
                RoleFile::Frameworks => view.state.role_framework_names(role).map(line).collect(),
            }
        }
        _ => return None,
    };
    Some(text)
}

/// The target of a symlink, relative to the link's directory.
pub fn link_target(view: &View, node: &Node) -> Option<String> {
    match node {
        Node::AgentTaskLink(a, link) => {
            let task = agent_link_task(view, a, link)?;
            let fw = active_framework(view, &task.framework_id)?;
            Some(format!(
                "../../../frameworks/{}/tasks/{}",
                fw.name, task.name
            ))
        }
        Node::OfferAgent(f, o) => {
            active_framework(view, f)?;
            let offer = view.offers.get(o).filter(|o| o.framework_id == *f)?;
            Some(format!("../../../../agents/{}", offer.agent_id))
        }
        Node::TaskAgent(f, t) => {
            let task = task_of(view, f, t)?;
            Some(format!("../../../../agents/{}", task.agent_id))
        }
        _ => None,
    }
}

/// The oldest outstanding offer to a framework: what `offers/next` prints.
pub fn next_offer<'a>(view: &'a View, framework_id: &'a str) -> Option<&'a Offer> {
    view.framework_offers(framework_id)
        .min_by_key(|o| (o.created_ms, o.id.len(), o.id.as_str()))
}

/// What `wait` prints once the task is terminal: its final state.
pub fn wait_result(view: &View, task_id: &str) -> Option<String> {
    let task = view.state.tasks.get(task_id)?;
    task.state()
        .is_terminal()
        .then(|| line(task.state().as_str()))
}

/// `status.json` or `usage` of a task, with its usage as measured (`None`: not known, as for
/// a task that is not running).
pub fn measured(view: &View, node: &Node, usage: Option<&Measured>) -> Option<String> {
    let Node::TaskFile(f, t, file) = node else {
        return None;
    };
    let task = task_of(view, f, t)?;
    match file {
        TaskFile::StatusJson => Some(status_json(view, task, usage)),
        TaskFile::Usage => Some(usage.map(usage::text).unwrap_or_default()),
        _ => None,
    }
}

/// `status.json`: the whole task as one JSON object, with its usage when known.
pub fn status_json(view: &View, task: &TaskInfo, usage: Option<&Measured>) -> String {
    let last = task.last();
    let framework = view
        .state
        .frameworks
        .get(&task.framework_id)
        .map(|f| f.name.clone())
        .unwrap_or_default();
    let hostname = view
        .state
        .agents
        .get(&task.agent_id)
        .map(|a| a.hostname.clone())
        .unwrap_or_default();
    let history: Vec<_> = task
        .history
        .iter()
        .map(|h| {
            json!({
                "state": h.state.as_str(),
                "reason": h.reason,
                "message": h.message,
                "time_ms": h.time_ms,
            })
        })
        .collect();
    let mut value = json!({
        "id": task.id,
        "name": task.name,
        "framework": framework,
        "framework_id": task.framework_id,
        "agent": task.agent_id,
        "hostname": hostname,
        "state": last.state.as_str(),
        "reason": last.reason,
        "message": last.message,
        "time_ms": last.time_ms,
        "kill_requested": task.kill_requested,
        "ports": task.ports,
        "resources": task.resources.to_string(),
        "spec": task.spec.to_line(),
        "history": history,
    });
    // How the command ended, once the task has ended and its command exited or was killed
    // by a signal.
    if let Some(code) = last.exit_code {
        value["exit_code"] = json!(code);
    }
    if let Some(signal) = last.signal {
        value["signal"] = json!(signal);
    }
    // With a health check: whether it is healthy (null before the first counted result),
    // and the change that made it so, with its check's output.
    if task.spec.health.is_some() {
        value["healthy"] = json!(task.health.as_ref().map(|h| h.healthy));
    }
    if let Some(h) = &task.health {
        value["health"] = json!({
            "healthy": h.healthy,
            "output": h.output,
            "time_ms": h.time_ms,
            "changes": h.seq,
        });
    }
    // The latest check, whatever it changed, while the task runs on a connected agent.
    if let Some(c) = usage.and_then(|m| m.usage.last_check.as_ref()) {
        if value.get("health").is_none() {
            value["health"] = json!({});
        }
        value["health"]["last_check"] = json!({
            "passed": c.passed,
            "counted": c.counted,
            "output": c.output,
            "time_ms": c.time_ms,
            "took_ms": c.took_ms,
        });
        value["health"]["failures"] = json!(c.failures);
    }
    if let Some(u) = usage {
        value["usage"] = usage::json(u);
    }
    let mut text = serde_json::to_string_pretty(&value).expect("a JSON value serializes");
    text.push('\n');
    text
}

/// `cluster/resources`: total (active agents), offered, allocated (live tasks) and available.
pub fn cluster_resources(view: &View) -> String {
    // Sums the state and the offers keep as they change: no walk of every agent, task or offer.
    let total = view.state.active_total();
    let offered = view.offers.total();
    let allocated = view.state.allocated_total();
    let available = minus(&minus(&total, &allocated), &offered);
    format!("total {total}\noffered {offered}\nallocated {allocated}\navailable {available}\n")
}

/// An agent's resources neither held by its live tasks nor offered.
pub fn agent_available(view: &View, agent_id: &str) -> Resources {
    let Some(agent) = view.state.agents.get(agent_id) else {
        return Resources::default();
    };
    let offered = view
        .offers
        .on_agent(agent_id)
        .fold(Resources::default(), |acc, o| acc.add(&o.resources));
    minus(
        &minus(&agent.resources, &view.state.allocated_on(agent_id)),
        &offered,
    )
}

fn line(s: impl AsRef<str>) -> String {
    let mut s = s.as_ref().to_string();
    s.push('\n');
    s
}

/// `a - b`, each resource floored at zero (views may briefly hold more allocated than total,
/// e.g. tasks on a disconnected agent).
pub fn minus(a: &Resources, b: &Resources) -> Resources {
    if let Some(left) = a.checked_sub(b) {
        return left;
    }
    let mut out = Resources::default();
    for (name, value) in a.iter() {
        let text = match value {
            Value::Scalar(s) => {
                let left = s.checked_sub(b.scalar(name)).unwrap_or_default();
                out = out.with_scalar(name, left);
                continue;
            }
            Value::Ranges(r) => {
                let left = ranges_minus(r.ranges(), b.ranges(name).ranges());
                if left.is_empty() {
                    continue;
                }
                format!("{name}:{}", Ranges::new(left))
            }
            Value::Set(items) => {
                let taken: BTreeSet<&String> = b
                    .iter()
                    .find(|(n, _)| *n == name)
                    .and_then(|(_, v)| match v {
                        Value::Set(s) => Some(s.iter().collect()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let left: Vec<&str> = items
                    .iter()
                    .filter(|i| !taken.contains(i))
                    .map(String::as_str)
                    .collect();
                if left.is_empty() {
                    continue;
                }
                format!("{name}:{{{}}}", left.join(","))
            }
        };
        // Rebuilt from Mesos syntax: the kernel has no constructor for one ranges or set value.
        if let Ok(part) = Resources::parse(&text) {
            out = out.add(&part);
        }
    }
    out
}

/// The integers of ranges `a` not in ranges `b`, as ranges.
fn ranges_minus(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(lo, hi) in a {
        let mut pieces = vec![(lo, hi)];
        for &(blo, bhi) in b {
            pieces = pieces
                .into_iter()
                .flat_map(|(plo, phi)| {
                    let mut keep = Vec::new();
                    if bhi < plo || blo > phi {
                        keep.push((plo, phi));
                    } else {
                        if blo > plo {
                            keep.push((plo, blo - 1));
                        }
                        if bhi < phi {
                            keep.push((bhi + 1, phi));
                        }
                    }
                    keep
                })
                .collect();
        }
        out.extend(pieces);
    }
    out
}

/// A scalar however reserved, as Mesos syntax writes it (`0.5`, `1024`); `0` when absent.
fn scalar_text(r: &Resources, name: &str) -> String {
    r.scalar_all(name).to_string()
}

/// Port ranges (however reserved) as `31000-31005,31010-31010`; empty when there are none.
fn ports_text(r: &Resources) -> String {
    r.flatten()
        .ranges("ports")
        .ranges()
        .iter()
        .map(|(lo, hi)| format!("{lo}-{hi}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::standard;
    use mesofs_kernel::allocator::roles::parse_setting;
    use mesofs_kernel::health::TaskHealth;
    use mesofs_kernel::state::{task_id, Command, TaskState};
    use mesofs_kernel::watch::LeaderEvent;

    fn text(view: &View, node: Node) -> String {
        render(view, &node, &Users::default()).expect("renders")
    }

    #[test]
    fn cluster_files_sum_agents_offers_and_live_tasks() {
        let (c, _, _) = standard("127.0.0.1:1");
        let view = c.copy.view();
        assert_eq!(
            text(&view, Node::ClusterFile(ClusterFile::Leader)),
            "m1 127.0.0.1:5050\n"
        );
        assert_eq!(
            text(&view, Node::ClusterFile(ClusterFile::Resources)),
            "total cpus:4;disk:1024;mem:4096;ports:[31000-31099]\n\
             offered cpus:2.5;disk:1024;mem:3968;ports:[31002-31099]\n\
             allocated cpus:1;mem:128;ports:[31000-31001]\n\
             available cpus:0.5\n"
        );
    }

    #[test]
    fn offers_why_says_the_leaders_reasons_only_while_the_framework_holds_no_offer() {
        let (c, hello, idle) = standard("127.0.0.1:1");
        let mut view = c.copy.view_mut();
        for fw in [&hello, &idle] {
            view.apply_leader(&LeaderEvent::Why {
                seq: 100,
                framework_id: fw.clone(),
                text: "suppressed: it asked for no offers\n".into(),
            });
        }
        assert_eq!(
            text(&view, Node::OffersWhy(hello.clone())),
            "",
            "hello holds 1-1"
        );
        assert_eq!(
            text(&view, Node::OffersWhy(idle.clone())),
            "suppressed: it asked for no offers\n"
        );
        view.apply_leader(&LeaderEvent::Why {
            seq: 101,
            framework_id: idle.clone(),
            text: String::new(),
        });
        assert_eq!(text(&view, Node::OffersWhy(idle)), "");
    }

    #[test]
    fn role_files_show_settings_and_what_the_role_holds() {
        let (mut c, hello, _) = standard("127.0.0.1:1");
        let role = |view: &View, r: &str, file| text(view, Node::RoleFile(r.into(), file));
        let view = c.copy.view();
        assert_eq!(role(&view, "*", RoleFile::Weight), "1\n");
        assert_eq!(role(&view, "*", RoleFile::Guarantee), "\n");
        assert_eq!(role(&view, "*", RoleFile::Limit), "\n");
        assert_eq!(
            role(&view, "*", RoleFile::Allocated),
            "cpus:1;mem:128;ports:[31000-31001]\n",
            "the running task; the finished one no more"
        );
        assert_eq!(
            role(&view, "*", RoleFile::Offered),
            "cpus:2.5;disk:1024;mem:3968;ports:[31002-31099]\n"
        );
        assert_eq!(role(&view, "*", RoleFile::Frameworks), "hello\nidle\n");
        drop(view);
        c.command(Command::SetFrameworkRoles {
            framework_id: hello.clone(),
            roles: vec!["eng/web".into(), "*".into()],
        });
        for (file, text) in [("limit", "cpus:8;mem:1024"), ("guarantee", "cpus:2")] {
            c.command(Command::ConfigureRole {
                role: "eng".into(),
                setting: parse_setting(file, text).unwrap(),
            });
        }
        let view = c.copy.view();
        assert_eq!(
            text(
                &view,
                Node::FrameworkFile(hello.clone(), FrameworkFile::Role)
            ),
            "eng/web\n*\n"
        );
        assert_eq!(role(&view, "eng", RoleFile::Limit), "cpus:8;mem:1024\n");
        assert_eq!(role(&view, "eng", RoleFile::Guarantee), "cpus:2\n");
        assert_eq!(role(&view, "eng/web", RoleFile::Frameworks), "hello\n");
        assert_eq!(role(&view, "*", RoleFile::Frameworks), "hello\nidle\n");
        assert_eq!(
            role(&view, "eng", RoleFile::Allocated),
            "\n",
            "its tasks are in *"
        );
    }

    #[test]
    fn agent_files_show_what_it_has_and_what_is_left() {
        let (c, _, _) = standard("127.0.0.1:1");
        let view = c.copy.view();
        let f = |file| text(&view, Node::AgentFile("a1".into(), file));
        assert_eq!(f(AgentFile::Hostname), "a1.example\n");
        assert_eq!(f(AgentFile::Address), "127.0.0.1:1\n");
        assert_eq!(f(AgentFile::State), "active\n");
        assert_eq!(
            f(AgentFile::Resources),
            "cpus:4;disk:1024;mem:4096;ports:[31000-31099]\n"
        );
        assert_eq!(f(AgentFile::Available), "cpus:0.5\n");
        assert_eq!(
            link_target(&view, &Node::AgentTaskLink("a1".into(), "hello.web".into())).unwrap(),
            "../../../frameworks/hello/tasks/web"
        );
    }

    #[test]
    fn framework_and_offer_files() {
        let (mut c, hello, idle) = standard("127.0.0.1:1");
        c.refused(&hello, "offer 9-9 is gone");
        let view = c.copy.view();
        let fw = |file| text(&view, Node::FrameworkFile(hello.clone(), file));
        assert_eq!(fw(FrameworkFile::Id), format!("{hello}\n"));
        assert_eq!(fw(FrameworkFile::User), "0 root\n");
        assert_eq!(fw(FrameworkFile::Role), "*\n");
        assert_eq!(fw(FrameworkFile::Principal), "mount:fixture\n");
        assert_eq!(fw(FrameworkFile::Error), "offer 9-9 is gone\n");
        assert_eq!(
            text(
                &view,
                Node::FrameworkFile(idle.clone(), FrameworkFile::Error)
            ),
            ""
        );
        let offer = |file| text(&view, Node::OfferFile(hello.clone(), "1-1".into(), file));
        assert_eq!(offer(OfferFile::Hostname), "a1.example\n");
        assert_eq!(offer(OfferFile::Role), "*\n");
        assert_eq!(offer(OfferFile::Attributes), "rack:r1\nzone:a\n");
        assert_eq!(offer(OfferFile::Cpus), "2.5\n");
        assert_eq!(offer(OfferFile::Mem), "3968\n");
        assert_eq!(offer(OfferFile::Disk), "1024\n");
        assert_eq!(offer(OfferFile::Ports), "31002-31099\n");
        assert_eq!(
            offer(OfferFile::Resources),
            "cpus:2.5;disk:1024;mem:3968;ports:[31002-31099]\n"
        );
        assert_eq!(
            link_target(&view, &Node::OfferAgent(hello.clone(), "1-1".into())).unwrap(),
            "../../../../agents/a1"
        );
        assert!(render(
            &view,
            &Node::OfferFile(hello, "1-1".into(), OfferFile::Launch),
            &Users::default()
        )
        .is_none());
    }

    #[test]
    fn task_files_and_status_json() {
        let (c, hello, _) = standard("127.0.0.1:1");
        let view = c.copy.view();
        let task = |t: &str, file| text(&view, Node::TaskFile(hello.clone(), t.into(), file));
        assert_eq!(task("web", TaskFile::State), "TASK_RUNNING\n");
        assert_eq!(task("batch", TaskFile::State), "TASK_FINISHED\n");
        assert!(task("web", TaskFile::Spec).starts_with("name=web cpus=1 mem=128"));
        let status: serde_json::Value =
            serde_json::from_str(&task("batch", TaskFile::StatusJson)).unwrap();
        assert_eq!(status["name"], "batch");
        assert_eq!(status["framework"], "hello");
        assert_eq!(status["agent"], "a1");
        assert_eq!(status["state"], "TASK_FINISHED");
        assert_eq!(status["reason"], "REASON_COMMAND_EXITED");
        assert_eq!(status["message"], "exited with status 0");
        assert_eq!(status["history"].as_array().unwrap().len(), 3);
        let web: serde_json::Value =
            serde_json::from_str(&task("web", TaskFile::StatusJson)).unwrap();
        assert_eq!(web["ports"], serde_json::json!([31000, 31001]));
        assert_eq!(web["resources"], "cpus:1;mem:128;ports:[31000-31001]");
        assert_eq!(
            wait_result(&view, &format!("{hello}.batch")).unwrap(),
            "TASK_FINISHED\n"
        );
        assert_eq!(wait_result(&view, &format!("{hello}.web")), None);
    }

    #[test]
    fn a_health_checked_task_shows_its_health_in_healthy_and_status_json() {
        let (mut c, hello, _) = standard("127.0.0.1:1");
        c.launch(
            &hello,
            "a1",
            &["name=svc cpus=0.1 mem=8 ports=1 health_tcp=0 -- ./serve"],
            &[31010],
        );
        c.update(&hello, "svc", TaskState::Running, "", "");
        let status = |c: &crate::fixture::Cluster| -> serde_json::Value {
            let view = c.copy.view();
            serde_json::from_str(&text(
                &view,
                Node::TaskFile(hello.clone(), "svc".into(), TaskFile::StatusJson),
            ))
            .unwrap()
        };
        let healthy = |c: &crate::fixture::Cluster| {
            text(
                &c.copy.view(),
                Node::TaskFile(hello.clone(), "svc".into(), TaskFile::Healthy),
            )
        };
        // Before the first counted result: empty, and null.
        assert_eq!(healthy(&c), "");
        assert_eq!(status(&c)["healthy"], serde_json::Value::Null);
        assert!(status(&c).get("health").is_none());
        c.command(Command::TaskHealth {
            task_id: task_id(&hello, "svc"),
            health: TaskHealth {
                healthy: false,
                seq: 1,
                output: "cannot connect to 127.0.0.1:31010: Connection refused".into(),
                time_ms: 1_700_000_004_000,
            },
        });
        assert_eq!(healthy(&c), "false\n");
        let s = status(&c);
        assert_eq!(s["healthy"], false);
        assert_eq!(
            s["health"]["output"],
            "cannot connect to 127.0.0.1:31010: Connection refused"
        );
        assert_eq!(
            (
                s["health"]["changes"].clone(),
                s["health"]["time_ms"].clone()
            ),
            (1.into(), 1_700_000_004_000u64.into())
        );
        // A task without a health check has neither.
        let view = c.copy.view();
        let web: serde_json::Value = serde_json::from_str(&text(
            &view,
            Node::TaskFile(hello.clone(), "web".into(), TaskFile::StatusJson),
        ))
        .unwrap();
        assert!(
            web.get("healthy").is_none() && web.get("health").is_none(),
            "{web}"
        );
    }

    #[test]
    fn next_offer_is_the_oldest_outstanding_one() {
        let (mut c, hello, idle) = standard("127.0.0.1:1");
        c.offer("1-10", &hello, "a1", "cpus:1", 1_700_000_005_000);
        c.offer("1-9", &hello, "a1", "cpus:1", 1_700_000_005_000);
        assert_eq!(next_offer(&c.copy.view(), &hello).unwrap().id, "1-1");
        c.remove_offer("1-1", &hello, "accepted", false);
        assert_eq!(next_offer(&c.copy.view(), &hello).unwrap().id, "1-9");
        assert!(next_offer(&c.copy.view(), &idle).is_none());
    }

    #[test]
    fn subtraction_floors_each_resource_at_zero() {
        let a = Resources::parse("cpus:1;mem:100;ports:[10-20];zones:{a,b}").unwrap();
        let b = Resources::parse("cpus:2;mem:40;ports:[15-16,30-40];zones:{b,c}").unwrap();
        assert_eq!(
            minus(&a, &b).to_string(),
            "mem:60;ports:[10-14,17-20];zones:{a}"
        );
        assert_eq!(minus(&b, &b).to_string(), "");
    }
}
