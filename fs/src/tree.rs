//! The shape of the tree: every node a path can name, how a name resolves under a directory,
//! what a directory lists, and each node's kind, mode and owner.
//!
//! Nodes inside a framework are keyed by the framework's *id*, not its name: a path resolves
//! the name once, at lookup, so an inode of a torn-down framework never silently turns into
//! the inode of a new framework registered under the same name.

use std::collections::BTreeSet;

use mesofs_kernel::allocator::drf::ancestors;
use mesofs_kernel::allocator::roles::DEFAULT_ROLE;
use mesofs_kernel::state::{task_id, FrameworkInfo, TaskInfo};
use mesofs_kernel::watch::View;

use crate::users::Users;

macro_rules! named_files {
    ($(#[$meta:meta])* $ty:ident { $($(#[$vmeta:meta])* $var:ident => $name:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $ty {
            $($(#[$vmeta])* $var),*
        }

        impl $ty {
            /// Every file of this kind, in listing order.
            pub const ALL: &'static [$ty] = &[$($ty::$var),*];

            /// The file's name in its directory.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$var => $name),*
                }
            }

            /// The file of this kind with this name.
            pub fn from_name(name: &str) -> Option<$ty> {
                Self::ALL.iter().copied().find(|f| f.name() == name)
            }
        }
    };
}

named_files! {
    /// Files of `/cluster`.
    ClusterFile {
        /// `leader`: who leads.
        Leader => "leader",
        /// `resources`: total, offered, allocated, available.
        Resources => "resources",
    }
}

named_files! {
    /// Files of `/cluster/masters/<id>`.
    MasterFile {
        /// `address`: where the others dial it.
        Address => "address",
        /// `role`: leader, follower, learner, candidate, unreachable.
        Role => "role",
        /// `applied`: the log index it has applied.
        Applied => "applied",
    }
}

named_files! {
    /// Files of `/agents/<id>`.
    AgentFile {
        /// `hostname`.
        Hostname => "hostname",
        /// `address`: of its Files service.
        Address => "address",
        /// `state`: active or disconnected.
        State => "state",
        /// `resources`: everything it has.
        Resources => "resources",
        /// `attributes`: `name:value` per line.
        Attributes => "attributes",
        /// `available`: neither held by tasks nor offered.
        Available => "available",
    }
}

named_files! {
    /// Files of `/frameworks/<name>`.
    FrameworkFile {
        /// `id`.
        Id => "id",
        /// `user`: the owner's uid and name.
        User => "user",
        /// `principal`: the certificate of the mount it was made through.
        Principal => "principal",
        /// `role`: its roles, one per line; written by its owner.
        Role => "role",
        /// `suppressed`: `1` while it takes no offers; written by its owner.
        Suppressed => "suppressed",
        /// `revive`: write-only; takes offers again and clears decline filters.
        Revive => "revive",
        /// `optimistic`: `1` while it takes optimistic offers; written by its owner.
        Optimistic => "optimistic",
        /// `error`: the last refused write's reason.
        Error => "error",
        /// `events`: the event log (end-of-file at its end).
        Events => "events",
        /// `events_pipe`: the same lines as a stream that blocks at its end.
        EventsPipe => "events_pipe",
    }
}

named_files! {
    /// Files of `/roles/<role>` (besides the directories of the roles under it).
    RoleFile {
        /// `weight`: read and written (root).
        Weight => "weight",
        /// `guarantee`: read and written (root).
        Guarantee => "guarantee",
        /// `limit`: read and written (root).
        Limit => "limit",
        /// `allocated`: what the role's tasks (and those of the roles under it) hold.
        Allocated => "allocated",
        /// `offered`: what outstanding offers for the role (and the roles under it) hold.
        Offered => "offered",
        /// `frameworks`: the frameworks in the role, by name.
        Frameworks => "frameworks",
        /// `reserved`: what agents hold reserved for the role (and the roles under it).
        Reserved => "reserved",
    }
}

named_files! {
    /// Files of `/frameworks/<name>/offers/<id>` (besides the `agent` link).
    OfferFile {
        /// `hostname`.
        Hostname => "hostname",
        /// `role`: the role it is offered for.
        Role => "role",
        /// `attributes`: its agent's, `name:value` per line.
        Attributes => "attributes",
        /// `resources`: everything offered, Mesos syntax.
        Resources => "resources",
        /// `cpus`.
        Cpus => "cpus",
        /// `mem` (MB).
        Mem => "mem",
        /// `disk` (MB).
        Disk => "disk",
        /// `ports`: ranges.
        Ports => "ports",
        /// `launch`: write task specs to accept the offer.
        Launch => "launch",
        /// `decline`: write (optionally a duration) to decline it.
        Decline => "decline",
        /// `reserve`: write resources to reserve them for the offer's role.
        Reserve => "reserve",
        /// `unreserve`: write reserved resources to give them back.
        Unreserve => "unreserve",
    }
}

named_files! {
    /// Files of `/frameworks/<name>/tasks/<name>` (besides the `agent` link).
    TaskFile {
        /// `state`: the latest state.
        State => "state",
        /// `status.json`: the whole task.
        StatusJson => "status.json",
        /// `spec`: the spec line.
        Spec => "spec",
        /// `stdout`: from the agent's sandbox.
        Stdout => "stdout",
        /// `stderr`: from the agent's sandbox.
        Stderr => "stderr",
        /// `kill`: write to kill the task.
        Kill => "kill",
        /// `wait`: blocks until the task ends.
        Wait => "wait",
        /// `usage`: what the running task uses, asked of its agent.
        Usage => "usage",
        /// `healthy`: `true` or `false` as its health check last found, empty before.
        Healthy => "healthy",
    }
}

/// Every node the tree can hold. Strings are agent ids, framework ids, offer ids and task
/// names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// `/`.
    Root,
    /// `/README`.
    Readme,
    /// `/cluster`.
    Cluster,
    /// `/cluster/<file>`.
    ClusterFile(ClusterFile),
    /// `/cluster/masters`.
    Masters,
    /// `/cluster/masters/ctl`: write `add ID HOST:PORT` or `remove ID`.
    MastersCtl,
    /// `/cluster/masters/<id>`.
    Master(u64),
    /// `/cluster/masters/<id>/<file>`.
    MasterFile(u64, MasterFile),
    /// `/agents`.
    Agents,
    /// `/agents/<agent>`.
    Agent(String),
    /// `/agents/<agent>/<file>`.
    AgentFile(String, AgentFile),
    /// `/agents/<agent>/tasks`.
    AgentTasks(String),
    /// `/agents/<agent>/tasks/<framework name>.<task name>`: a symlink.
    AgentTaskLink(String, String),
    /// `/frameworks`.
    Frameworks,
    /// `/frameworks/<name>` (by framework id).
    Framework(String),
    /// `/frameworks/<name>/<file>`.
    FrameworkFile(String, FrameworkFile),
    /// `/frameworks/<name>/offers`.
    Offers(String),
    /// `/frameworks/<name>/offers/next`.
    OffersNext(String),
    /// `/frameworks/<name>/offers/why`: why it holds no offer.
    OffersWhy(String),
    /// `/frameworks/<name>/offers/<offer>`.
    Offer(String, String),
    /// `/frameworks/<name>/offers/<offer>/<file>`.
    OfferFile(String, String, OfferFile),
    /// `/frameworks/<name>/offers/<offer>/agent`: a symlink.
    OfferAgent(String, String),
    /// `/frameworks/<name>/tasks`.
    Tasks(String),
    /// `/frameworks/<name>/tasks/<task>`.
    Task(String, String),
    /// `/frameworks/<name>/tasks/<task>/<file>`.
    TaskFile(String, String, TaskFile),
    /// `/frameworks/<name>/tasks/<task>/agent`: a symlink.
    TaskAgent(String, String),
    /// `/roles`.
    Roles,
    /// `/roles/<role path>`.
    Role(String),
    /// `/roles/<role path>/<file>`.
    RoleFile(String, RoleFile),
}

/// What kind of inode a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
}

/// How a file's bytes come about, which decides how it is opened, read and written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Rendered whole from the view (at open, and at getattr for its size).
    Rendered,
    /// `events` and `events_pipe`: lines with a cursor per open.
    Events {
        /// The framework's id.
        framework_id: String,
        /// True for `events_pipe`, whose reads wait at the end for more.
        blocking: bool,
    },
    /// `offers/next`: blocks until the framework has an offer.
    NextOffer {
        /// The framework's id.
        framework_id: String,
    },
    /// `tasks/<t>/wait`: blocks until the task is terminal.
    Wait {
        /// The task's cluster-unique id.
        task_id: String,
    },
    /// `stdout`/`stderr`: read from the agent's Files service.
    Sandbox {
        /// The task's cluster-unique id.
        task_id: String,
        /// `stdout` or `stderr`.
        file: &'static str,
    },
    /// `status.json` and `usage`: rendered at open with what the task uses now, asked of its
    /// agent while it runs; without it at getattr.
    Measured {
        /// The task's cluster-unique id.
        task_id: String,
    },
    /// `launch`, `decline`, `kill`: each write is one command.
    Control,
    /// A setting (`role`, a role's `weight`...): read, it is rendered; each write is one
    /// command that changes it.
    Setting,
}

/// Every role the view knows: `*`, those with settings, those frameworks take, and the roles
/// above them.
pub fn known_roles(view: &View) -> BTreeSet<String> {
    let mut roles: BTreeSet<String> = BTreeSet::from([DEFAULT_ROLE.to_string()]);
    roles.extend(view.state.roles.keys().cloned());
    // Frameworks' roles, and roles that hold reservations with no framework yet: kept by the
    // state as commands apply, so no walk of every framework and agent.
    roles.extend(view.state.roles_in_use().map(String::from));
    let above: Vec<String> = roles
        .iter()
        .flat_map(|r| ancestors(r).map(String::from).collect::<Vec<_>>())
        .collect();
    roles.extend(above);
    roles
}

/// The role path of `/roles/<parent>/<name>` ("" is `/roles` itself).
fn role_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// The framework name rule: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub fn valid_framework_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The name of a task's link under its agent: `<framework name>.<task name>`.
pub fn agent_link_name(framework: &FrameworkInfo, task: &TaskInfo) -> String {
    format!("{}.{}", framework.name, task.name)
}

/// The registered (not torn-down) framework with this id.
pub fn active_framework<'a>(view: &'a View, id: &str) -> Option<&'a FrameworkInfo> {
    view.state
        .frameworks
        .get(id)
        .filter(|f| f.removed_ms.is_none())
}

/// The task behind an agent's task link, if the link still resolves. Names may hold dots, so
/// each dot is tried as the split between framework and task name.
pub fn agent_link_task<'a>(view: &'a View, agent: &str, link: &str) -> Option<&'a TaskInfo> {
    link.match_indices('.').find_map(|(i, _)| {
        let fw = view.state.framework_by_name(&link[..i])?;
        view.state
            .tasks
            .get(&task_id(&fw.id, &link[i + 1..]))
            .map(|t| &**t)
            .filter(|t| t.agent_id == agent)
    })
}

fn offer_of<'a>(
    view: &'a View,
    framework_id: &str,
    offer: &str,
) -> Option<&'a mesofs_kernel::watch::Offer> {
    active_framework(view, framework_id)?;
    view.offers
        .get(offer)
        .filter(|o| o.framework_id == framework_id)
}

/// The task a framework-relative node names, if the framework is registered.
pub fn task_of<'a>(view: &'a View, framework_id: &str, name: &str) -> Option<&'a TaskInfo> {
    active_framework(view, framework_id)?;
    view.state
        .tasks
        .get(&task_id(framework_id, name))
        .map(|t| &**t)
}

impl Node {
    /// Whether this node is an inode of the tree as the view has it now.
    pub fn exists(&self, view: &View) -> bool {
        match self {
            Node::Root
            | Node::Readme
            | Node::Cluster
            | Node::ClusterFile(_)
            | Node::Masters
            | Node::MastersCtl
            | Node::Agents
            | Node::Frameworks
            | Node::Roles => true,
            Node::Role(r) | Node::RoleFile(r, _) => known_roles(view).contains(r),
            Node::Master(m) | Node::MasterFile(m, _) => view.masters.iter().any(|s| s.id == *m),
            Node::Agent(a) | Node::AgentFile(a, _) | Node::AgentTasks(a) => {
                view.state.agents.contains_key(a)
            }
            Node::AgentTaskLink(a, link) => agent_link_task(view, a, link).is_some(),
            Node::Framework(f)
            | Node::FrameworkFile(f, _)
            | Node::Offers(f)
            | Node::OffersNext(f)
            | Node::OffersWhy(f)
            | Node::Tasks(f) => active_framework(view, f).is_some(),
            Node::Offer(f, o) | Node::OfferFile(f, o, _) | Node::OfferAgent(f, o) => {
                offer_of(view, f, o).is_some()
            }
            Node::Task(f, t) | Node::TaskFile(f, t, _) | Node::TaskAgent(f, t) => {
                task_of(view, f, t).is_some()
            }
        }
    }

    /// The child called `name` of this directory, if it exists in the view.
    pub fn child(&self, view: &View, name: &str) -> Option<Node> {
        let node = match self {
            Node::Root => match name {
                "README" => Node::Readme,
                "cluster" => Node::Cluster,
                "agents" => Node::Agents,
                "frameworks" => Node::Frameworks,
                "roles" => Node::Roles,
                _ => return None,
            },
            Node::Roles => Node::Role(name.to_string()),
            Node::Role(r) => match RoleFile::from_name(name) {
                Some(f) => Node::RoleFile(r.clone(), f),
                None => Node::Role(role_path(r, name)),
            },
            Node::Cluster => match name {
                "masters" => Node::Masters,
                _ => Node::ClusterFile(ClusterFile::from_name(name)?),
            },
            Node::Masters => match name {
                "ctl" => Node::MastersCtl,
                // Only the canonical spelling of an id names a master.
                _ => Node::Master(
                    name.parse()
                        .ok()
                        .filter(|id: &u64| id.to_string() == name)?,
                ),
            },
            Node::Master(m) => Node::MasterFile(*m, MasterFile::from_name(name)?),
            Node::Agents => Node::Agent(name.to_string()),
            Node::Agent(a) => match name {
                "tasks" => Node::AgentTasks(a.clone()),
                _ => Node::AgentFile(a.clone(), AgentFile::from_name(name)?),
            },
            Node::AgentTasks(a) => Node::AgentTaskLink(a.clone(), name.to_string()),
            Node::Frameworks => Node::Framework(view.state.framework_by_name(name)?.id.clone()),
            Node::Framework(f) => match name {
                "offers" => Node::Offers(f.clone()),
                "tasks" => Node::Tasks(f.clone()),
                _ => Node::FrameworkFile(f.clone(), FrameworkFile::from_name(name)?),
            },
            Node::Offers(f) => match name {
                "next" => Node::OffersNext(f.clone()),
                "why" => Node::OffersWhy(f.clone()),
                _ => Node::Offer(f.clone(), name.to_string()),
            },
            Node::Offer(f, o) => match name {
                "agent" => Node::OfferAgent(f.clone(), o.clone()),
                _ => Node::OfferFile(f.clone(), o.clone(), OfferFile::from_name(name)?),
            },
            Node::Tasks(f) => Node::Task(f.clone(), name.to_string()),
            Node::Task(f, t) => match name {
                "agent" => Node::TaskAgent(f.clone(), t.clone()),
                _ => Node::TaskFile(f.clone(), t.clone(), TaskFile::from_name(name)?),
            },
            _ => return None,
        };
        (self.exists(view) && node.exists(view)).then_some(node)
    }

    /// The entries of this directory (without `.` and `..`), in listing order.
    pub fn children(&self, view: &View) -> Vec<(String, Node)> {
        if !self.exists(view) {
            return Vec::new();
        }
        let named = |names: Vec<&str>| -> Vec<(String, Node)> {
            names
                .into_iter()
                .filter_map(|n| Some((n.to_string(), self.child(view, n)?)))
                .collect()
        };
        match self {
            Node::Root => named(vec!["README", "cluster", "agents", "frameworks", "roles"]),
            Node::Roles | Node::Role(_) => {
                let parent = match self {
                    Node::Role(r) => r.as_str(),
                    _ => "",
                };
                let mut out: Vec<(String, Node)> = match self {
                    Node::Role(r) => RoleFile::ALL
                        .iter()
                        .map(|f| (f.name().to_string(), Node::RoleFile(r.clone(), *f)))
                        .collect(),
                    _ => Vec::new(),
                };
                for role in known_roles(view) {
                    let rest = if parent.is_empty() {
                        Some(role.as_str())
                    } else {
                        role.strip_prefix(parent).and_then(|r| r.strip_prefix('/'))
                    };
                    if let Some(name) = rest.filter(|n| !n.is_empty() && !n.contains('/')) {
                        out.push((name.to_string(), Node::Role(role.clone())));
                    }
                }
                out
            }
            Node::Cluster => {
                let mut names: Vec<&str> = ClusterFile::ALL.iter().map(|f| f.name()).collect();
                names.push("masters");
                named(names)
            }
            Node::Masters => {
                let mut out = vec![("ctl".to_string(), Node::MastersCtl)];
                let mut ids: Vec<u64> = view.masters.iter().map(|m| m.id).collect();
                ids.sort_unstable();
                out.extend(ids.into_iter().map(|id| (id.to_string(), Node::Master(id))));
                out
            }
            Node::Master(_) => named(MasterFile::ALL.iter().map(|f| f.name()).collect()),
            Node::Agents => view
                .state
                .agents
                .keys()
                .map(|a| (a.clone(), Node::Agent(a.clone())))
                .collect(),
            Node::Agent(_) => {
                let mut names: Vec<&str> = AgentFile::ALL.iter().map(|f| f.name()).collect();
                names.push("tasks");
                named(names)
            }
            Node::AgentTasks(a) => {
                let mut links: Vec<String> = view
                    .state
                    .agent_tasks(a)
                    .filter_map(|t| {
                        Some(agent_link_name(active_framework(view, &t.framework_id)?, t))
                    })
                    .collect();
                links.sort();
                links.dedup();
                links
                    .into_iter()
                    .map(|l| (l.clone(), Node::AgentTaskLink(a.clone(), l)))
                    .collect()
            }
            Node::Frameworks => {
                let mut fws: Vec<&FrameworkInfo> = view.state.active_frameworks().collect();
                fws.sort_by(|a, b| a.name.cmp(&b.name));
                fws.into_iter()
                    .map(|f| (f.name.clone(), Node::Framework(f.id.clone())))
                    .collect()
            }
            Node::Framework(_) => {
                let mut names: Vec<&str> = FrameworkFile::ALL.iter().map(|f| f.name()).collect();
                names.extend(["offers", "tasks"]);
                named(names)
            }
            Node::Offers(f) => {
                let mut out = vec![
                    ("next".to_string(), Node::OffersNext(f.clone())),
                    ("why".to_string(), Node::OffersWhy(f.clone())),
                ];
                out.extend(
                    view.framework_offers(f)
                        .map(|o| (o.id.clone(), Node::Offer(f.clone(), o.id.clone()))),
                );
                out
            }
            Node::Offer(..) => {
                let mut names = vec!["agent"];
                names.extend(OfferFile::ALL.iter().map(|f| f.name()));
                named(names)
            }
            Node::Tasks(f) => view
                .state
                .framework_tasks(f)
                .map(|t| (t.name.clone(), Node::Task(f.clone(), t.name.clone())))
                .collect(),
            Node::Task(..) => {
                let mut names = vec!["agent"];
                names.extend(TaskFile::ALL.iter().map(|f| f.name()));
                named(names)
            }
            _ => Vec::new(),
        }
    }

    /// How many directories this directory holds (its link count less 2): counted without
    /// listing where a directory can be large, so a `stat` costs no more than the count.
    pub fn subdir_count(&self, view: &View) -> usize {
        match self {
            Node::Agents => view.state.agents.len(),
            Node::Frameworks => view.state.active_framework_count(),
            Node::Tasks(f) => view.state.framework_tasks(f).count(),
            Node::Offers(f) => view.framework_offers(f).count(),
            Node::AgentTasks(_) => 0,
            _ => self
                .children(view)
                .iter()
                .filter(|(_, c)| c.kind() == Kind::Dir)
                .count(),
        }
    }

    /// The directory holding this node (the root is its own parent).
    pub fn parent(&self) -> Node {
        match self {
            Node::Root
            | Node::Readme
            | Node::Cluster
            | Node::Agents
            | Node::Frameworks
            | Node::Roles => Node::Root,
            Node::Role(r) => match r.rsplit_once('/') {
                Some((parent, _)) => Node::Role(parent.to_string()),
                None => Node::Roles,
            },
            Node::RoleFile(r, _) => Node::Role(r.clone()),
            Node::ClusterFile(_) | Node::Masters => Node::Cluster,
            Node::MastersCtl | Node::Master(_) => Node::Masters,
            Node::MasterFile(m, _) => Node::Master(*m),
            Node::Agent(_) => Node::Agents,
            Node::AgentFile(a, _) | Node::AgentTasks(a) => Node::Agent(a.clone()),
            Node::AgentTaskLink(a, _) => Node::AgentTasks(a.clone()),
            Node::Framework(_) => Node::Frameworks,
            Node::FrameworkFile(f, _) | Node::Offers(f) | Node::Tasks(f) => {
                Node::Framework(f.clone())
            }
            Node::OffersNext(f) | Node::OffersWhy(f) | Node::Offer(f, _) => Node::Offers(f.clone()),
            Node::OfferFile(f, o, _) | Node::OfferAgent(f, o) => Node::Offer(f.clone(), o.clone()),
            Node::Task(f, _) => Node::Tasks(f.clone()),
            Node::TaskFile(f, t, _) | Node::TaskAgent(f, t) => Node::Task(f.clone(), t.clone()),
        }
    }

    /// Directory, file or symlink.
    pub fn kind(&self) -> Kind {
        match self {
            Node::Root
            | Node::Cluster
            | Node::Masters
            | Node::Master(_)
            | Node::Agents
            | Node::Agent(_)
            | Node::AgentTasks(_)
            | Node::Frameworks
            | Node::Framework(_)
            | Node::Offers(_)
            | Node::Offer(..)
            | Node::Tasks(_)
            | Node::Task(..)
            | Node::Roles
            | Node::Role(_) => Kind::Dir,
            Node::AgentTaskLink(..) | Node::OfferAgent(..) | Node::TaskAgent(..) => Kind::Symlink,
            _ => Kind::File,
        }
    }

    /// How a file's content comes about.
    pub fn content(&self) -> Content {
        match self {
            Node::FrameworkFile(f, FrameworkFile::Events) => Content::Events {
                framework_id: f.clone(),
                blocking: false,
            },
            Node::FrameworkFile(f, FrameworkFile::EventsPipe) => Content::Events {
                framework_id: f.clone(),
                blocking: true,
            },
            Node::OffersNext(f) => Content::NextOffer {
                framework_id: f.clone(),
            },
            Node::TaskFile(f, t, TaskFile::Wait) => Content::Wait {
                task_id: task_id(f, t),
            },
            Node::TaskFile(f, t, TaskFile::StatusJson | TaskFile::Usage) => Content::Measured {
                task_id: task_id(f, t),
            },
            Node::TaskFile(f, t, TaskFile::Stdout) => Content::Sandbox {
                task_id: task_id(f, t),
                file: "stdout",
            },
            Node::TaskFile(f, t, TaskFile::Stderr) => Content::Sandbox {
                task_id: task_id(f, t),
                file: "stderr",
            },
            Node::OfferFile(
                _,
                _,
                OfferFile::Launch | OfferFile::Decline | OfferFile::Reserve | OfferFile::Unreserve,
            )
            | Node::TaskFile(_, _, TaskFile::Kill)
            | Node::FrameworkFile(_, FrameworkFile::Revive)
            | Node::MastersCtl => Content::Control,
            Node::FrameworkFile(
                _,
                FrameworkFile::Role | FrameworkFile::Suppressed | FrameworkFile::Optimistic,
            )
            | Node::RoleFile(_, RoleFile::Weight | RoleFile::Guarantee | RoleFile::Limit) => {
                Content::Setting
            }
            _ => Content::Rendered,
        }
    }

    /// Whether reading the file gives anything.
    pub fn readable(&self) -> bool {
        self.kind() == Kind::File && self.content() != Content::Control
    }

    /// Whether writing the file does anything (control files and settings).
    pub fn writable(&self) -> bool {
        self.kind() == Kind::File && matches!(self.content(), Content::Control | Content::Setting)
    }

    /// Permission bits (with the sticky bit on `/frameworks`). A task's output is its
    /// framework owner's alone.
    pub fn mode(&self) -> u16 {
        match self.kind() {
            Kind::Dir if *self == Node::Frameworks => 0o1777,
            Kind::Dir => 0o755,
            Kind::Symlink => 0o777,
            Kind::File if self.content() == Content::Setting => 0o644,
            Kind::File if self.writable() => 0o200,
            Kind::File if matches!(self.content(), Content::Sandbox { .. }) => 0o400,
            Kind::File => 0o444,
        }
    }

    /// The framework whose directory holds this node, if any.
    pub fn framework_id(&self) -> Option<&str> {
        match self {
            Node::Framework(f)
            | Node::FrameworkFile(f, _)
            | Node::Offers(f)
            | Node::OffersNext(f)
            | Node::OffersWhy(f)
            | Node::Offer(f, _)
            | Node::OfferFile(f, _, _)
            | Node::OfferAgent(f, _)
            | Node::Tasks(f)
            | Node::Task(f, _)
            | Node::TaskFile(f, _, _)
            | Node::TaskAgent(f, _) => Some(f),
            _ => None,
        }
    }

    /// Owner uid and gid: inside a framework's directory, its owner's name's ids on this
    /// machine (root's if it has no such user; for a framework from before user names, the
    /// uid that made it); root elsewhere.
    pub fn owner(&self, view: &View, users: &Users) -> (u32, u32) {
        let Some(fw) = self
            .framework_id()
            .and_then(|f| view.state.frameworks.get(f))
        else {
            return (0, 0);
        };
        if fw.user.is_empty() {
            return (fw.uid, fw.gid);
        }
        users.ids(&fw.user).unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{standard, Cluster};
    use mesofs_kernel::allocator::roles::RoleSetting;
    use mesofs_kernel::state::Command;

    fn walk(view: &View, path: &str) -> Option<Node> {
        path.split('/')
            .filter(|p| !p.is_empty())
            .try_fold(Node::Root, |node, name| node.child(view, name))
    }

    fn names(view: &View, path: &str) -> Vec<String> {
        walk(view, path)
            .expect("path resolves")
            .children(view)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn paths_resolve_to_nodes_keyed_by_framework_id() {
        let (c, hello, _) = standard("127.0.0.1:1");
        let view = c.copy.view();
        assert_eq!(
            walk(&view, "/frameworks/hello"),
            Some(Node::Framework(hello.clone()))
        );
        assert_eq!(
            walk(&view, "/frameworks/hello/tasks/web/state"),
            Some(Node::TaskFile(hello.clone(), "web".into(), TaskFile::State))
        );
        assert_eq!(
            walk(&view, "/frameworks/hello/offers/1-1/agent"),
            Some(Node::OfferAgent(hello.clone(), "1-1".into()))
        );
        assert_eq!(
            walk(&view, "/frameworks/hello/offers/next"),
            Some(Node::OffersNext(hello.clone()))
        );
        assert_eq!(
            walk(&view, "/agents/a1/tasks/hello.web"),
            Some(Node::AgentTaskLink("a1".into(), "hello.web".into()))
        );
        for missing in [
            "/nope",
            "/frameworks/nope",
            "/frameworks/hello/offers/9-9",
            "/frameworks/hello/tasks/nope",
            "/frameworks/hello/tasks/web/nope",
            "/frameworks/idle/offers/1-1",
            "/agents/a2",
            "/agents/a1/tasks/idle.web",
            "/README/x",
        ] {
            assert_eq!(walk(&view, missing), None, "{missing}");
        }
    }

    #[test]
    fn a_role_directory_holds_exactly_the_files_no_role_may_be_named() {
        let names: Vec<&str> = RoleFile::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names, mesofs_kernel::allocator::roles::ROLE_FILE_NAMES);
    }

    #[test]
    fn roles_are_a_tree_of_every_role_set_or_taken_and_the_roles_above_them() {
        let (mut c, hello, _) = standard("127.0.0.1:1");
        c.command(Command::SetFrameworkRoles {
            framework_id: hello.clone(),
            roles: vec!["eng/web".into(), "*".into()],
        });
        c.command(Command::ConfigureRole {
            role: "ops".into(),
            setting: RoleSetting::Weight(mesofs_kernel::resources::Scalar::from_units(2)),
        });
        let view = c.copy.view();
        assert_eq!(names(&view, "/roles"), ["*", "eng", "ops"]);
        let files = [
            "weight",
            "guarantee",
            "limit",
            "allocated",
            "offered",
            "frameworks",
            "reserved",
        ];
        assert_eq!(names(&view, "/roles/eng"), [&files[..], &["web"]].concat());
        assert_eq!(names(&view, "/roles/eng/web"), files);
        assert_eq!(walk(&view, "/roles/eng/nope"), None);
        assert_eq!(walk(&view, "/roles/nope"), None);
        let weight = walk(&view, "/roles/ops/weight").unwrap();
        assert_eq!(weight.content(), Content::Setting);
        assert_eq!(weight.mode(), 0o644);
        assert_eq!(weight.owner(&view, &Users::default()), (0, 0));
        let role = walk(&view, "/frameworks/hello/role").unwrap();
        assert!(role.readable() && role.writable());
        assert_eq!(
            walk(&view, "/roles/eng/web").unwrap().parent(),
            Node::Role("eng".into())
        );
    }

    #[test]
    fn every_directory_counts_its_subdirectories_as_its_listing_has_them() {
        let (mut c, hello, _) = standard("127.0.0.1:1");
        c.teardown(&hello);
        let (c2, _, _) = standard("127.0.0.1:1");
        for c in [&c, &c2] {
            let view = c.copy.view();
            let mut dirs = vec![Node::Root];
            let mut seen = 0;
            while let Some(dir) = dirs.pop() {
                let subdirs: Vec<Node> = dir
                    .children(&view)
                    .into_iter()
                    .map(|(_, n)| n)
                    .filter(|n| n.kind() == Kind::Dir)
                    .collect();
                assert_eq!(dir.subdir_count(&view), subdirs.len(), "{dir:?}");
                seen += 1;
                dirs.extend(subdirs);
            }
            assert!(seen > 10, "walked {seen} directories");
        }
    }

    #[test]
    fn directories_list_their_entries() {
        let (c, _, _) = standard("127.0.0.1:1");
        let view = c.copy.view();
        assert_eq!(
            names(&view, "/"),
            ["README", "cluster", "agents", "frameworks", "roles"]
        );
        assert_eq!(names(&view, "/cluster"), ["leader", "resources", "masters"]);
        assert_eq!(names(&view, "/cluster/masters"), ["ctl", "1"]);
        assert_eq!(
            names(&view, "/cluster/masters/1"),
            ["address", "role", "applied"]
        );
        assert_eq!(names(&view, "/agents"), ["a1"]);
        assert_eq!(
            names(&view, "/agents/a1"),
            [
                "hostname",
                "address",
                "state",
                "resources",
                "attributes",
                "available",
                "tasks"
            ]
        );
        assert_eq!(
            names(&view, "/agents/a1/tasks"),
            ["hello.batch", "hello.web"]
        );
        assert_eq!(names(&view, "/frameworks"), ["hello", "idle"]);
        assert_eq!(
            names(&view, "/frameworks/hello"),
            [
                "id",
                "user",
                "principal",
                "role",
                "suppressed",
                "revive",
                "optimistic",
                "error",
                "events",
                "events_pipe",
                "offers",
                "tasks"
            ]
        );
        assert_eq!(
            names(&view, "/frameworks/hello/offers"),
            ["next", "why", "1-1"]
        );
        assert_eq!(names(&view, "/frameworks/idle/offers"), ["next", "why"]);
        assert_eq!(
            names(&view, "/frameworks/hello/offers/1-1"),
            [
                "agent",
                "hostname",
                "role",
                "attributes",
                "resources",
                "cpus",
                "mem",
                "disk",
                "ports",
                "launch",
                "decline",
                "reserve",
                "unreserve"
            ]
        );
        assert_eq!(names(&view, "/frameworks/hello/tasks"), ["batch", "web"]);
        assert_eq!(
            names(&view, "/frameworks/hello/tasks/web"),
            [
                "agent",
                "state",
                "status.json",
                "spec",
                "stdout",
                "stderr",
                "kill",
                "wait",
                "usage",
                "healthy"
            ]
        );
    }

    #[test]
    fn kinds_modes_and_owners_follow_the_framework() {
        let (c, hello, idle) = standard("127.0.0.1:1");
        let view = c.copy.view();
        assert_eq!(Node::Frameworks.mode(), 0o1777);
        assert_eq!(Node::Framework(hello.clone()).mode(), 0o755);
        let launch = Node::OfferFile(hello.clone(), "1-1".into(), OfferFile::Launch);
        assert_eq!((launch.kind(), launch.mode()), (Kind::File, 0o200));
        assert!(launch.writable() && !launch.readable());
        let state = Node::TaskFile(hello.clone(), "web".into(), TaskFile::State);
        assert_eq!(state.mode(), 0o444);
        assert_eq!(Node::TaskAgent(hello, "web".into()).kind(), Kind::Symlink);
        assert_eq!(
            Node::Offers(idle.clone()).owner(&view, &Users::default()),
            (65534, 65534)
        );
        assert_eq!(Node::Agents.owner(&view, &Users::default()), (0, 0));
        assert!(valid_framework_name("a.b-c_9"));
        for bad in ["", ".x", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_framework_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn nodes_vanish_with_their_offer_or_framework_and_a_new_registration_is_a_new_node() {
        let (mut c, hello, _) = standard("127.0.0.1:1");
        let offer = Node::OfferFile(hello.clone(), "1-1".into(), OfferFile::Cpus);
        assert!(offer.exists(&c.copy.view()));
        c.remove_offer("1-1", &hello, "accepted", false);
        assert!(!offer.exists(&c.copy.view()));

        let task = Node::Task(hello.clone(), "web".into());
        c.teardown(&hello);
        assert!(!task.exists(&c.copy.view()));
        assert!(walk(&c.copy.view(), "/agents/a1/tasks/hello.web").is_none());
        let again = c.framework("hello", 0);
        assert_ne!(again, hello);
        assert_eq!(
            walk(&c.copy.view(), "/frameworks/hello"),
            Some(Node::Framework(again.clone()))
        );
        assert!(
            !task.exists(&c.copy.view()),
            "the old framework's tasks stay gone"
        );
        assert!(walk(&c.copy.view(), "/frameworks/hello/tasks/web").is_none());
        let _ = Cluster::new();
    }
}
