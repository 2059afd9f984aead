//! Access control lists: which principals may do what to whose frameworks, in the spirit of
//! Mesos's ACLs. The masters load them from a JSON file (`--acls FILE`); the leader checks
//! writes against them and hands the sandbox rules to agents.
//!
//! Each action has a list of rules, each with a subject (`principals`) and an object (`roles`,
//! `users`). The first rule whose subject and object both match a request decides it: allowed,
//! unless the rule's object is `{"type": "NONE"}`. When no rule matches, `permissive` decides,
//! except that running tasks as `root` is never granted by default: it needs a rule that
//! matches.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::tls::Principal;

/// The largest ACL file read, in bytes.
pub const MAX_ACLS_BYTES: usize = 1 << 20;

/// A set of principals, roles or users.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    /// `ANY` or `NONE`; absent when `values` lists the members.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<EntityType>,
    /// The members (principals as `kind:name`, roles, user names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// An entity that is not a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EntityType {
    /// Every principal, role or user (and for principals, also none: an `--insecure` caller).
    Any,
    /// As an object only: a rule that refuses its principals the action on anything.
    None,
}

impl Entity {
    /// Every member.
    pub fn any() -> Entity {
        Entity {
            kind: Some(EntityType::Any),
            values: Vec::new(),
        }
    }

    /// Exactly these members.
    pub fn values<S: Into<String>>(values: impl IntoIterator<Item = S>) -> Entity {
        Entity {
            kind: None,
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether a rule with this entity concerns `value` (`None`: a request with no principal).
    fn matches(&self, value: Option<&str>) -> bool {
        match self.kind {
            Some(_) => true,
            None => value.is_some_and(|v| self.values.iter().any(|m| m == v)),
        }
    }

    fn check(&self, what: &str) -> Result<(), AclError> {
        match (self.kind, self.values.is_empty()) {
            (Some(_), false) => Err(AclError::Invalid(format!(
                "{what}: give either \"type\" or \"values\", not both"
            ))),
            (None, true) => Err(AclError::Invalid(format!(
                "{what}: give \"values\" (a list) or \"type\" (\"ANY\" or \"NONE\")"
            ))),
            _ => Ok(()),
        }
    }
}

/// One rule: who (`principals`) may do the action to what (`roles` or `users`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The principals it concerns, as `kind:name` (`mount:web1`).
    pub principals: Entity,
    /// The roles it concerns (register_frameworks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Entity>,
    /// The users it concerns: who tasks run as, or whose frameworks and sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Entity>,
}

/// Something a principal asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make a framework in a role.
    RegisterFramework,
    /// Run tasks as a user (the framework's owner).
    RunTasks,
    /// Tear down a framework owned by a user.
    TeardownFramework,
    /// Kill tasks of a framework owned by a user.
    KillTasks,
    /// Add or remove masters.
    ChangeMembership,
    /// Read the sandboxes of tasks that run as a user.
    AccessSandboxes,
    /// Set a role's weight or quota.
    UpdateQuotas,
    /// Reserve resources for a role.
    ReserveResources,
    /// Give back resources reserved for a role.
    UnreserveResources,
}

impl Action {
    /// Its name in the ACL file.
    pub fn key(self) -> &'static str {
        match self {
            Action::RegisterFramework => "register_frameworks",
            Action::RunTasks => "run_tasks",
            Action::TeardownFramework => "teardown_frameworks",
            Action::KillTasks => "kill_tasks",
            Action::ChangeMembership => "change_membership",
            Action::AccessSandboxes => "access_sandboxes",
            Action::UpdateQuotas => "update_quotas",
            Action::ReserveResources => "reserve_resources",
            Action::UnreserveResources => "unreserve_resources",
        }
    }

    /// The object a rule of this action names: `roles`, `users`, or none.
    fn object(self) -> Option<&'static str> {
        match self {
            Action::RegisterFramework
            | Action::UpdateQuotas
            | Action::ReserveResources
            | Action::UnreserveResources => Some("roles"),
            Action::ChangeMembership => None,
            _ => Some("users"),
        }
    }

    /// What it is, for a refusal: "run tasks as user \"root\"".
    fn describe(self, object: &str) -> String {
        match self {
            Action::RegisterFramework => format!("register frameworks in role {object:?}"),
            Action::RunTasks => format!("run tasks as user {object:?}"),
            Action::TeardownFramework => {
                format!("tear down frameworks of user {object:?}")
            }
            Action::KillTasks => format!("kill tasks of user {object:?}'s frameworks"),
            Action::ChangeMembership => "change the masters".to_string(),
            Action::AccessSandboxes => format!("read the sandboxes of user {object:?}'s tasks"),
            Action::UpdateQuotas => format!("set the weight and quota of role {object:?}"),
            Action::ReserveResources => format!("reserve resources for role {object:?}"),
            Action::UnreserveResources => {
                format!("give back resources reserved for role {object:?}")
            }
        }
    }
}

/// The ACLs: rules for each action, and what holds when none matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acls {
    /// Whether a request no rule matches is allowed (running as root excepted).
    #[serde(default = "yes")]
    pub permissive: bool,
    /// Who may make frameworks in which roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub register_frameworks: Vec<Rule>,
    /// Who may run tasks as which users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_tasks: Vec<Rule>,
    /// Who may tear down whose frameworks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teardown_frameworks: Vec<Rule>,
    /// Who may kill tasks of whose frameworks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kill_tasks: Vec<Rule>,
    /// Who may add and remove masters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub change_membership: Vec<Rule>,
    /// Who may read the sandboxes of whose tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_sandboxes: Vec<Rule>,
    /// Who may set which roles' weights and quotas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub update_quotas: Vec<Rule>,
    /// Who may reserve resources for which roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserve_resources: Vec<Rule>,
    /// Who may give back resources reserved for which roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreserve_resources: Vec<Rule>,
}

fn yes() -> bool {
    true
}

impl Default for Acls {
    /// No file: everything but running tasks as root.
    fn default() -> Acls {
        Acls {
            permissive: true,
            register_frameworks: Vec::new(),
            run_tasks: Vec::new(),
            teardown_frameworks: Vec::new(),
            kill_tasks: Vec::new(),
            change_membership: Vec::new(),
            access_sandboxes: Vec::new(),
            update_quotas: Vec::new(),
            reserve_resources: Vec::new(),
            unreserve_resources: Vec::new(),
        }
    }
}

/// Why an ACL file was not taken.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("cannot read the ACL file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It is not valid ACL JSON.
    #[error("invalid ACLs: {0} (docs/security.md shows the format)")]
    Invalid(String),
}

/// A request the ACLs refused: what was asked, and the rule (or default) that refused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied(pub String);

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Acls {
    /// Parses and checks ACL JSON.
    pub fn parse(text: &str) -> Result<Acls, AclError> {
        if text.len() > MAX_ACLS_BYTES {
            return Err(AclError::Invalid(format!(
                "{} bytes, more than the {MAX_ACLS_BYTES} an ACL file may hold",
                text.len()
            )));
        }
        // serde would also take a struct from a JSON array of its fields in order.
        if !text.trim_start().starts_with('{') {
            return Err(AclError::Invalid(
                "the ACLs are one JSON object, {\"permissive\": ..., \"run_tasks\": [...], ...}"
                    .into(),
            ));
        }
        let acls: Acls =
            serde_json::from_str(text).map_err(|e| AclError::Invalid(e.to_string()))?;
        for action in Action::ALL {
            for (i, rule) in acls.rules(action).iter().enumerate() {
                let at = format!("{}[{i}]", action.key());
                rule.principals.check(&format!("{at}.principals"))?;
                if rule.principals.kind == Some(EntityType::None) {
                    return Err(AclError::Invalid(format!(
                        "{at}.principals: NONE would be a rule for no one; to refuse someone, name them and give NONE as the object"
                    )));
                }
                let (roles, users) = (rule.roles.as_ref(), rule.users.as_ref());
                let (wanted, given, other) = match action.object() {
                    Some("roles") => (Some("roles"), roles, users),
                    Some(_) => (Some("users"), users, roles),
                    None => (None, roles.or(users), None),
                };
                if other.is_some() {
                    let stray = if wanted == Some("roles") {
                        "users"
                    } else {
                        "roles"
                    };
                    return Err(AclError::Invalid(format!(
                        "{at}: {} takes no \"{stray}\"",
                        action.key()
                    )));
                }
                match (wanted, given) {
                    (Some(w), None) => {
                        return Err(AclError::Invalid(format!("{at}: give \"{w}\"")));
                    }
                    (Some(w), Some(e)) => e.check(&format!("{at}.{w}"))?,
                    (None, Some(_)) => {
                        return Err(AclError::Invalid(format!(
                            "{at}: {} takes only \"principals\"",
                            action.key()
                        )));
                    }
                    (None, None) => {}
                }
            }
        }
        Ok(acls)
    }

    /// Reads and checks an ACL file.
    pub fn load(path: &Path) -> Result<Acls, AclError> {
        let io = |source| AclError::Io {
            path: path.display().to_string(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_ACLS_BYTES as u64 {
            return Err(AclError::Invalid(format!(
                "{} is {} bytes, more than the {MAX_ACLS_BYTES} an ACL file may hold",
                path.display(),
                meta.len()
            )));
        }
        Acls::parse(&std::fs::read_to_string(path).map_err(io)?)
    }

    /// The rules of one action.
    pub fn rules(&self, action: Action) -> &[Rule] {
        match action {
            Action::RegisterFramework => &self.register_frameworks,
            Action::RunTasks => &self.run_tasks,
            Action::TeardownFramework => &self.teardown_frameworks,
            Action::KillTasks => &self.kill_tasks,
            Action::ChangeMembership => &self.change_membership,
            Action::AccessSandboxes => &self.access_sandboxes,
            Action::UpdateQuotas => &self.update_quotas,
            Action::ReserveResources => &self.reserve_resources,
            Action::UnreserveResources => &self.unreserve_resources,
        }
    }

    /// Grants `principal` running tasks as `user` ahead of every other rule.
    pub fn grant_run_tasks(&mut self, principal: &Principal, user: &str) {
        self.run_tasks.insert(
            0,
            Rule {
                principals: Entity::values([principal.to_string()]),
                roles: None,
                users: Some(Entity::values([user])),
            },
        );
    }

    /// Whether `principal` (none for an `--insecure` caller) may do `action` to `object` (the
    /// role or user; ignored for changing membership).
    pub fn allows(
        &self,
        principal: Option<&Principal>,
        action: Action,
        object: &str,
    ) -> Result<(), Denied> {
        let subject = principal.map(|p| p.to_string());
        let who = subject
            .as_deref()
            .unwrap_or("a caller without a certificate");
        let what = action.describe(object);
        for (i, rule) in self.rules(action).iter().enumerate() {
            if !rule.principals.matches(subject.as_deref()) {
                continue;
            }
            let target = rule.roles.as_ref().or(rule.users.as_ref());
            if !target.is_none_or(|t| t.matches(Some(object))) {
                continue;
            }
            if target.is_some_and(|t| t.kind == Some(EntityType::None)) {
                return Err(Denied(format!(
                    "{who} may not {what}: the ACLs forbid it ({}[{i}])",
                    action.key()
                )));
            }
            return Ok(());
        }
        if action == Action::RunTasks && object == "root" {
            return Err(Denied(format!(
                "{who} may not {what}: running tasks as root needs a run_tasks ACL that grants it (--acls; see docs/security.md)"
            )));
        }
        if self.permissive {
            Ok(())
        } else {
            Err(Denied(format!(
                "{who} may not {what}: no {} ACL grants it, and the ACLs are not permissive",
                action.key()
            )))
        }
    }
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 9] = [
        Action::RegisterFramework,
        Action::RunTasks,
        Action::TeardownFramework,
        Action::KillTasks,
        Action::ChangeMembership,
        Action::AccessSandboxes,
        Action::UpdateQuotas,
        Action::ReserveResources,
        Action::UnreserveResources,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Kind;
    use proptest::prelude::*;

    fn mount(name: &str) -> Principal {
        Principal {
            kind: Kind::Mount,
            name: name.into(),
        }
    }

    #[test]
    fn without_a_file_everything_is_allowed_but_running_tasks_as_root() {
        let acls = Acls::default();
        let web = mount("web");
        for action in Action::ALL {
            assert!(
                acls.allows(Some(&web), action, "alice").is_ok(),
                "{action:?}"
            );
        }
        let denied = acls
            .allows(Some(&web), Action::RunTasks, "root")
            .unwrap_err();
        assert!(denied
            .0
            .contains("mount:web may not run tasks as user \"root\""));
        assert!(denied.0.contains("run_tasks ACL"));
        assert!(acls.allows(None, Action::RunTasks, "root").is_err());
        assert!(acls.allows(Some(&web), Action::KillTasks, "root").is_ok());
    }

    #[test]
    fn the_first_matching_rule_decides_and_none_refuses() {
        let acls = Acls::parse(
            r#"{
              "permissive": false,
              "run_tasks": [
                {"principals": {"values": ["mount:dev"]}, "users": {"values": ["root"]}},
                {"principals": {"values": ["mount:web"]}, "users": {"type": "NONE"}},
                {"principals": {"type": "ANY"}, "users": {"values": ["alice", "bob"]}}
              ],
              "change_membership": [{"principals": {"values": ["operator:ops"]}}]
            }"#,
        )
        .unwrap();
        let (dev, web, other) = (mount("dev"), mount("web"), mount("other"));
        assert!(acls.allows(Some(&dev), Action::RunTasks, "root").is_ok());
        assert!(acls.allows(Some(&dev), Action::RunTasks, "alice").is_ok());
        let denied = acls
            .allows(Some(&web), Action::RunTasks, "alice")
            .unwrap_err();
        assert!(denied.0.contains("run_tasks[1]"), "{denied}");
        assert!(acls.allows(Some(&other), Action::RunTasks, "bob").is_ok());
        assert!(acls
            .allows(Some(&other), Action::RunTasks, "carol")
            .is_err());
        assert!(
            acls.allows(None, Action::RunTasks, "alice").is_ok(),
            "ANY covers no principal"
        );
        let ops = Principal {
            kind: Kind::Operator,
            name: "ops".into(),
        };
        assert!(acls
            .allows(Some(&ops), Action::ChangeMembership, "")
            .is_ok());
        let denied = acls
            .allows(Some(&dev), Action::ChangeMembership, "")
            .unwrap_err();
        assert!(denied.0.contains("not permissive"), "{denied}");
    }

    #[test]
    fn a_grant_comes_before_every_rule() {
        let mut acls = Acls::parse(
            r#"{"run_tasks": [{"principals": {"type": "ANY"}, "users": {"type": "NONE"}}]}"#,
        )
        .unwrap();
        let dev = mount("dev");
        assert!(acls.allows(Some(&dev), Action::RunTasks, "root").is_err());
        acls.grant_run_tasks(&dev, "root");
        assert!(acls.allows(Some(&dev), Action::RunTasks, "root").is_ok());
        assert!(acls.allows(Some(&dev), Action::RunTasks, "alice").is_err());
    }

    #[test]
    fn malformed_acls_are_refused_with_the_place_named() {
        for (text, says) in [
            ("", "one JSON object"),
            ("[]", "one JSON object"),
            ("{", "EOF"),
            (r#"{"run_task": []}"#, "unknown field"),
            (
                r#"{"run_tasks": [{"principals": {"type": "ANY"}}]}"#,
                "run_tasks[0]: give \"users\"",
            ),
            (
                r#"{"run_tasks": [{"principals": {"type": "ANY"}, "roles": {"type": "ANY"}}]}"#,
                "run_tasks[0]: run_tasks takes no \"roles\"",
            ),
            (
                r#"{"register_frameworks": [{"principals": {"values": []}, "roles": {"type": "ANY"}}]}"#,
                "register_frameworks[0].principals",
            ),
            (
                r#"{"kill_tasks": [{"principals": {"type": "ANY", "values": ["a"]}, "users": {"type": "ANY"}}]}"#,
                "not both",
            ),
            (
                r#"{"change_membership": [{"principals": {"type": "ANY"}, "users": {"type": "ANY"}}]}"#,
                "takes only \"principals\"",
            ),
            (
                r#"{"kill_tasks": [{"principals": {"type": "SOME"}}]}"#,
                "unknown variant",
            ),
            (
                r#"{"kill_tasks": [{"principals": {"type": "NONE"}, "users": {"type": "ANY"}}]}"#,
                "a rule for no one",
            ),
        ] {
            let e = Acls::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        let big = format!("{{\"permissive\": true{}}}", " ".repeat(MAX_ACLS_BYTES));
        assert!(Acls::parse(&big)
            .unwrap_err()
            .to_string()
            .contains("more than"));
    }

    proptest! {
        #[test]
        fn prop_arbitrary_text_never_panics(text in ".{0,400}") {
            let _ = Acls::parse(&text);
        }

        #[test]
        fn prop_parsed_acls_decide_every_request_without_panicking(
            text in r#"\{"(run_tasks|kill_tasks|access_sandboxes)": \[\{"principals": \{("type": "ANY"|"values": \["mount:[a-c]"\])\}, "users": \{("type": "(ANY|NONE)"|"values": \["[a-c]"\])\}\}\]\}"#,
            who in "[a-c]",
            user in "[a-c]|root",
        ) {
            let acls = Acls::parse(&text).unwrap();
            let p = mount(&who);
            for action in Action::ALL {
                let _ = acls.allows(Some(&p), action, &user);
            }
            // Root is run as only when a rule says so.
            if acls.allows(Some(&p), Action::RunTasks, "root").is_ok() {
                prop_assert!(text.contains("run_tasks"));
            }
        }
    }
}
