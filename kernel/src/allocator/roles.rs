//! Roles: their names (paths such as `eng/web`), and what can be set on one (weight, quota).

use serde::{Deserialize, Serialize};

use super::Quota;
use crate::resources::{Resources, Scalar, Value};

/// The default role, every framework's until it names others.
pub const DEFAULT_ROLE: &str = "*";

/// The longest role path.
pub const MAX_ROLE_LEN: usize = 256;

/// The most roles one framework may take.
pub const MAX_ROLES_PER_FRAMEWORK: usize = 64;

/// Names a role's directory in the mount holds for its files; no role part may take them.
pub const ROLE_FILE_NAMES: [&str; 7] = [
    "weight",
    "guarantee",
    "limit",
    "allocated",
    "offered",
    "frameworks",
    "reserved",
];

/// Checks a role path: `*`, or parts `[A-Za-z0-9][A-Za-z0-9._-]*` joined by `/`, none of them
/// the name of a role's file.
pub fn validate_role(role: &str) -> Result<(), String> {
    if role == DEFAULT_ROLE {
        return Ok(());
    }
    if role.is_empty() {
        return Err("an empty role".into());
    }
    if role.len() > MAX_ROLE_LEN {
        return Err(format!("longer than {MAX_ROLE_LEN} bytes"));
    }
    for part in role.split('/') {
        let b = part.as_bytes();
        let ok = !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if !ok {
            return Err(format!(
                "{part:?} is not a role name: each part of a role path is [A-Za-z0-9][A-Za-z0-9._-]*, parts joined by /"
            ));
        }
        if ROLE_FILE_NAMES.contains(&part) {
            return Err(format!(
                "{part:?} is the name of a role's file in roles/, so no role may take it"
            ));
        }
    }
    Ok(())
}

/// Parses a framework's roles: one per line (blank lines ignored), at least one, no repeats.
pub fn parse_roles(text: &str) -> Result<Vec<String>, String> {
    let mut roles: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        validate_role(line).map_err(|e| format!("invalid role {line:?}: {e}"))?;
        if !roles.iter().any(|r| r == line) {
            roles.push(line.to_string());
        }
    }
    if roles.is_empty() {
        return Err("no role: write one role per line (`*` is the default role)".into());
    }
    if roles.len() > MAX_ROLES_PER_FRAMEWORK {
        return Err(format!(
            "{} roles: a framework takes at most {MAX_ROLES_PER_FRAMEWORK}",
            roles.len()
        ));
    }
    Ok(roles)
}

/// What is set on a role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleInfo {
    /// Its weight (1 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Scalar>,
    /// Its quota.
    #[serde(default)]
    pub quota: Quota,
}

/// One change to a role, as a write to one of its files makes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoleSetting {
    /// `weight`: a positive number.
    Weight(Scalar),
    /// `guarantee`: scalar resources (empty: none).
    Guarantee(Resources),
    /// `limit`: scalar resources (`None`: no limit).
    Limit(Option<Resources>),
}

impl RoleInfo {
    /// This role with `setting` applied, or why it cannot be.
    pub fn with(&self, setting: &RoleSetting) -> Result<RoleInfo, String> {
        let mut out = self.clone();
        match setting {
            RoleSetting::Weight(w) => out.weight = Some(*w),
            RoleSetting::Guarantee(g) => out.quota.guarantee = g.clone(),
            RoleSetting::Limit(l) => out.quota.limit = l.clone(),
        }
        if let Some(limit) = &out.quota.limit {
            for (name, v) in out.quota.guarantee.iter() {
                if let Value::Scalar(g) = v {
                    let l = limit.get(name).map(|_| limit.scalar(name));
                    if l.is_some_and(|l| *g > l) {
                        return Err(format!(
                            "the guarantee ({}) would exceed the limit ({limit}) in {name}",
                            out.quota.guarantee
                        ));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Parses what is written to a role's file `file` (`weight`, `guarantee` or `limit`).
pub fn parse_setting(file: &str, text: &str) -> Result<RoleSetting, String> {
    let text = text.trim();
    let scalars_only = |text: &str| -> Result<Resources, String> {
        let r = Resources::parse(text).map_err(|e| e.to_string())?;
        if let Some((name, _)) = r.iter().find(|(_, v)| !matches!(v, Value::Scalar(_))) {
            return Err(format!(
                "{name} is not a scalar: quotas are of scalars (cpus, mem, disk...)"
            ));
        }
        Ok(r)
    };
    match file {
        "weight" => {
            let w: Scalar = text.parse().map_err(|e: crate::resources::ScalarError| {
                format!("invalid weight {text:?}: {e} (write a positive number such as 2 or 0.5)")
            })?;
            if w.is_zero() {
                return Err("a weight must be more than 0".into());
            }
            Ok(RoleSetting::Weight(w))
        }
        "guarantee" => Ok(RoleSetting::Guarantee(scalars_only(text)?)),
        "limit" if text.is_empty() => Ok(RoleSetting::Limit(None)),
        "limit" => Ok(RoleSetting::Limit(Some(scalars_only(text)?))),
        other => Err(format!(
            "{other:?} is not a role setting: weight, guarantee or limit"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_paths_are_checked_part_by_part() {
        for ok in ["*", "eng", "eng/web", "a.b_c-d/x1"] {
            assert!(validate_role(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/eng",
            "eng/",
            "eng//web",
            "eng/*",
            ".x",
            "eng/weight",
            "a b",
            "é",
        ] {
            assert!(validate_role(bad).is_err(), "{bad:?}");
        }
        assert!(validate_role(&"a".repeat(MAX_ROLE_LEN + 1)).is_err());
    }

    #[test]
    fn roles_are_one_per_line_deduplicated_and_never_none() {
        assert_eq!(parse_roles("eng\n\n ops \neng\n").unwrap(), ["eng", "ops"]);
        assert!(parse_roles("\n \n").is_err());
        assert!(parse_roles("eng\nbad role\n")
            .unwrap_err()
            .contains("\"bad role\""));
    }

    #[test]
    fn settings_parse_and_a_guarantee_never_exceeds_the_limit() {
        assert_eq!(
            parse_setting("weight", "2.5\n").unwrap(),
            RoleSetting::Weight(Scalar::from_milli(2500))
        );
        assert!(parse_setting("weight", "0").is_err());
        assert!(parse_setting("weight", "-1").is_err());
        assert_eq!(
            parse_setting("limit", "\n").unwrap(),
            RoleSetting::Limit(None)
        );
        assert!(parse_setting("limit", "ports:[1-2]")
            .unwrap_err()
            .contains("not a scalar"));
        let info = RoleInfo::default()
            .with(&parse_setting("limit", "cpus:4").unwrap())
            .unwrap();
        assert!(info
            .with(&parse_setting("guarantee", "cpus:5;mem:100").unwrap())
            .unwrap_err()
            .contains("exceed the limit"));
        let info = info
            .with(&parse_setting("guarantee", "cpus:4;mem:100").unwrap())
            .unwrap();
        assert!(info
            .with(&RoleSetting::Limit(Some(
                Resources::parse("cpus:3").unwrap()
            )))
            .is_err());
        assert!(info.with(&RoleSetting::Limit(None)).is_ok());
    }
}
