//! Task specs as frameworks write them: one per line, either the shell form
//! `name=web cpus=0.5 mem=64 env="GREETING=hello world" -- ./serve --port $PORT0`
//! or a JSON object `{"name":"web","argv":["./serve"],"cpus":0.5}`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::health::{self, HealthCheck, Probe};
use crate::resources::{self, parse_decimal_milli, Resources, Scalar, ScalarProblem};

/// The cpus a task gets when its spec names none.
pub const DEFAULT_CPUS: Scalar = Scalar::from_milli(100);
/// The memory (MB) a task gets when its spec names none.
pub const DEFAULT_MEM: Scalar = Scalar::from_milli(32_000);
/// How long a task has between SIGTERM and SIGKILL when its spec names no grace.
pub const DEFAULT_GRACE_MS: u64 = 3_000;
/// The most ports one task may ask for.
pub const MAX_PORTS: u32 = 65_535;
/// The longest task name; names become directory names.
pub const MAX_NAME_LEN: usize = 64;
/// The most consecutive failures a health check may allow before the task is killed.
pub const MAX_HEALTH_FAILURES: u32 = 1000;

const SHELL_KEYS: &str = "name, cpus, mem, disk, ports, env, grace, timeout, health_cmd, \
    health_http, health_tcp, health_delay, health_interval, health_timeout, health_grace, \
    health_failures";
const JSON_FIELDS: &str = "name, cmd, argv, cpus, mem, disk, ports, env, grace, timeout, health";
const HEALTH_FIELDS: &str = "cmd, http, tcp, delay, interval, timeout, grace, failures";

/// What a task runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskCommand {
    /// A command line run under `/bin/sh -c`.
    Shell(String),
    /// A program and its arguments, run without a shell.
    Argv(Vec<String>),
}

/// One task as a framework asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Unique within the framework; also the sandbox directory name.
    pub name: String,
    /// What to run.
    pub command: TaskCommand,
    /// CPUs, e.g. 0.5.
    pub cpus: Scalar,
    /// Memory in MB.
    pub mem: Scalar,
    /// Disk in MB.
    pub disk: Scalar,
    /// How many ports to assign (exposed as PORT0.. and PORTS).
    pub ports: u32,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Milliseconds between SIGTERM and SIGKILL when the task is killed.
    pub grace_ms: u64,
    /// Milliseconds a task may run before it is killed and fails
    /// (`REASON_MAX_COMPLETION_TIME_REACHED`); none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The check the agent runs on the task while it runs; none: no health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

/// Why a name is not a valid task (or framework) name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The empty name.
    #[error("must not be empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`] bytes.
    #[error("is {0} characters long; at most 64 are allowed")]
    TooLong(usize),
    /// Starts with something other than a letter or digit.
    #[error("must start with a letter or digit, not {0:?}")]
    BadStart(char),
    /// Holds a character outside `[A-Za-z0-9._-]`.
    #[error("contains {0:?}; only letters, digits, '.', '_' and '-' are allowed")]
    BadChar(char),
}

/// Why a duration text is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a number with an optional unit.
    #[error("expected e.g. 500ms, 5s, 2m, 1h or a bare number of seconds")]
    Malformed,
    /// Finer than a millisecond.
    #[error("durations are whole milliseconds")]
    SubMillisecond,
    /// More milliseconds than a u64 holds.
    #[error("too long")]
    TooLong,
    /// No time at all, where some is needed.
    #[error("must be longer than 0")]
    Zero,
}

/// What is wrong with a spec.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecErrorKind {
    /// The write holds only blank lines and comments.
    #[error("no task specs given; write one per line, e.g. name=web cpus=0.5 mem=64 -- ./serve")]
    NoSpecs,
    /// A shell-form key that is not known.
    #[error("unknown key {0:?} (expected {SHELL_KEYS})")]
    UnknownKey(String),
    /// A shell-form key given twice.
    #[error("duplicate key {0:?}; give each key once (only env may repeat)")]
    DuplicateKey(String),
    /// A shell-form word before ` -- ` that is not `key=value`.
    #[error("expected key=value before \" -- \", found {0:?} (no spaces around \"=\"; quote values with spaces)")]
    NotKeyValue(String),
    /// A shell-form line without the ` -- ` separator.
    #[error("missing \" -- \" before the command")]
    MissingSeparator,
    /// A double quote that is never closed.
    #[error("unterminated double quote")]
    UnterminatedQuote,
    /// Nothing (or only spaces) to run.
    #[error("empty command after \" -- \"")]
    EmptyCommand,
    /// No `name`.
    #[error("missing name (every task needs name=...)")]
    MissingName,
    /// A name that cannot be a directory name.
    #[error("invalid task name {name:?}: {problem}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        problem: NameError,
    },
    /// cpus, mem or disk that is not a decimal number.
    #[error("invalid {key} {text:?}: {problem}")]
    InvalidScalar {
        /// Which of cpus, mem, disk.
        key: &'static str,
        /// The offending text.
        text: String,
        /// What is wrong with it.
        problem: ScalarProblem,
    },
    /// cpus or mem of zero.
    #[error("{0} must be greater than 0")]
    NotPositive(&'static str),
    /// A ports count that is not a whole number up to [`MAX_PORTS`].
    #[error("invalid ports {0:?}: expected a whole number of ports from 0 to 65535")]
    InvalidPorts(String),
    /// An env value without `NAME=`.
    #[error("invalid env {0:?}: expected env=NAME=value")]
    InvalidEnv(String),
    /// An env var name outside `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("invalid env var name {0:?}: use letters, digits and '_', not starting with a digit")]
    InvalidEnvName(String),
    /// The same env var given twice.
    #[error("env var {0:?} is given twice")]
    DuplicateEnv(String),
    /// A duration (`grace`, `timeout`) that does not parse.
    #[error("invalid {key} {text:?}: {problem}")]
    InvalidDuration {
        /// The key it was given for.
        key: &'static str,
        /// The offending text.
        text: String,
        /// What is wrong with it.
        problem: DurationError,
    },
    /// A text the command or environment cannot carry.
    #[error("{0} must not contain a NUL character")]
    ContainsNul(String),
    /// A JSON-form line that is not valid JSON.
    #[error("invalid JSON spec: {0}")]
    InvalidJson(String),
    /// A JSON-form field that is not known.
    #[error("unknown field {0:?} (expected {JSON_FIELDS})")]
    UnknownField(String),
    /// A JSON-form field given twice.
    #[error("duplicate field {0:?}")]
    DuplicateField(String),
    /// A JSON-form field of the wrong type.
    #[error("field {field:?} must be {expected}")]
    InvalidField {
        /// The field.
        field: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A JSON spec with both `cmd` and `argv`.
    #[error("give either \"cmd\" or \"argv\", not both")]
    BothCommands,
    /// A JSON spec with neither `cmd` nor `argv`.
    #[error("missing \"cmd\" (a shell command) or \"argv\" (a program and its arguments)")]
    MissingCommand,
    /// An `argv` without a program.
    #[error("\"argv\" must start with a non-empty program to run")]
    EmptyArgv,
    /// Two specs of one write with the same name.
    #[error("duplicate task name {0:?}")]
    DuplicateName(String),
    /// Health check keys without a probe saying what to check.
    #[error(
        "a health check needs a probe: add health_cmd=\"command\", health_http=PORT_INDEX/path \
         or health_tcp=PORT_INDEX (JSON: \"cmd\", \"http\" or \"tcp\" in \"health\")"
    )]
    MissingHealthProbe,
    /// A health check with two probes.
    #[error("a health check has one probe: give either {0} or {1}, not both")]
    TwoHealthProbes(&'static str, &'static str),
    /// A health check command that is empty or blank.
    #[error(
        "empty health check command; give a shell command that exits 0 when the task is \
         healthy, e.g. health_cmd=\"curl -fs localhost:$PORT0\""
    )]
    EmptyHealthCmd,
    /// A `health_http` that is not `PORT_INDEX/path`.
    #[error("invalid {key} {text:?}: {problem}; write PORT_INDEX/path, e.g. 0/healthz for /healthz on $PORT0")]
    InvalidHealthHttp {
        /// The key or field it was given for.
        key: &'static str,
        /// The offending text.
        text: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A `health_tcp` that is not a port index.
    #[error("invalid health_tcp {0:?}: expected a port index, a whole number from 0 (the task's $PORT0) to 65534")]
    InvalidHealthTcp(String),
    /// A `health_failures` that is not a whole number from 1 to [`MAX_HEALTH_FAILURES`].
    #[error("invalid health_failures {0:?}: expected a whole number of consecutive failures from 1 to 1000")]
    InvalidHealthFailures(String),
    /// A health check on a port the task does not ask for.
    #[error(
        "health check port index {index}, but the task asks for {} (indices start at 0); \
         give ports={} or more{}",
        PortCount(*.ports),
        u64::from(*.index) + 1,
        // A lower index only helps when the task has ports.
        if *.ports > 0 { ", or a lower index" } else { "" }
    )]
    HealthPortIndex {
        /// The port index the check names.
        index: u32,
        /// How many ports the task asks for.
        ports: u32,
    },
    /// A field of the JSON form's `health` object that is not known.
    #[error("unknown health field {0:?} (expected {HEALTH_FIELDS})")]
    UnknownHealthField(String),
}

/// "no ports", "1 port", "2 ports".
struct PortCount(u32);

impl fmt::Display for PortCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("no ports"),
            1 => f.write_str("1 port"),
            n => write!(f, "{n} ports"),
        }
    }
}

/// A spec that does not parse, and on which line of the write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}", LinePrefix(*.line), .kind)]
pub struct SpecError {
    /// 1-based line number; 0 when the problem is the write as a whole.
    pub line: usize,
    /// What is wrong.
    pub kind: SpecErrorKind,
}

struct LinePrefix(usize);

impl fmt::Display for LinePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 > 0 {
            write!(f, "line {}: ", self.0)?;
        }
        Ok(())
    }
}

/// Checks a task or framework name: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let first = name.chars().next().ok_or(NameError::Empty)?;
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart(first));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar(bad));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    Ok(())
}

/// Checks a user name: what `useradd` accepts, `[A-Za-z0-9_][A-Za-z0-9._-]*` with an optional
/// trailing `$`, at most 64 bytes (the same errors as a task name's).
pub fn validate_user(user: &str) -> Result<(), NameError> {
    let first = user.chars().next().ok_or(NameError::Empty)?;
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Err(NameError::BadStart(first));
    }
    let body = user.strip_suffix('$').unwrap_or(user);
    if let Some(bad) = body
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar(bad));
    }
    if user.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(user.len()));
    }
    Ok(())
}

/// Whether `name` can be an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses a duration: `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds; up to 3 decimals.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    parse_duration_ms(text.trim()).map(Duration::from_millis)
}

/// Parses a duration into milliseconds; see [`parse_duration`].
pub fn parse_duration_ms(text: &str) -> Result<u64, DurationError> {
    // "ms" before "m" and "s", which it ends with.
    let (number, ms_per_unit) = [("ms", 1u128), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)]
        .iter()
        .find_map(|&(unit, ms)| text.strip_suffix(unit).map(|n| (n, ms)))
        .unwrap_or((text, 1_000));
    let milli = parse_decimal_milli(number).map_err(|p| match p {
        ScalarProblem::TooLarge => DurationError::TooLong,
        _ => DurationError::Malformed,
    })?;
    // milli is thousandths of the unit, so this is thousandths of a millisecond.
    let micro_ms = milli
        .checked_mul(ms_per_unit)
        .ok_or(DurationError::TooLong)?;
    match (micro_ms / 1000, micro_ms % 1000) {
        (ms, 0) => u64::try_from(ms).map_err(|_| DurationError::TooLong),
        _ => Err(DurationError::SubMillisecond),
    }
}

/// Formats milliseconds the way [`parse_duration_ms`] reads them back.
pub fn format_duration_ms(ms: u64) -> String {
    // Not is_multiple_of: the workspace supports Rust 1.85.
    match (ms / 1000, ms % 1000) {
        (seconds, 0) => format!("{seconds}s"),
        _ => format!("{ms}ms"),
    }
}

/// Parses a write of specs: one per line, skipping blank lines and `#` comments.
pub fn parse_specs(text: &str) -> Result<Vec<TaskSpec>, SpecError> {
    let mut specs: Vec<TaskSpec> = Vec::new();
    let mut names = BTreeSet::new();
    for (i, line) in text.split('\n').enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let at = |kind| SpecError { line: i + 1, kind };
        let spec = parse_line(line).map_err(at)?;
        if !names.insert(spec.name.clone()) {
            return Err(at(SpecErrorKind::DuplicateName(spec.name)));
        }
        specs.push(spec);
    }
    if specs.is_empty() {
        return Err(SpecError {
            line: 0,
            kind: SpecErrorKind::NoSpecs,
        });
    }
    Ok(specs)
}

/// Parses one spec line of either form; errors say line 1.
pub fn parse_spec_line(line: &str) -> Result<TaskSpec, SpecError> {
    parse_line(line).map_err(|kind| SpecError { line: 1, kind })
}

fn parse_line(line: &str) -> Result<TaskSpec, SpecErrorKind> {
    if line.trim_start().starts_with('{') {
        parse_json(line.trim())
    } else {
        parse_shell(line)
    }
}

impl TaskSpec {
    /// What the task holds: its cpus, mem and disk (ports are assigned separately).
    pub fn resources(&self) -> Resources {
        Resources::new()
            .with_scalar(resources::CPUS, self.cpus)
            .with_scalar(resources::MEM, self.mem)
            .with_scalar(resources::DISK, self.disk)
    }

    /// The canonical line for this spec: the shell form for a shell command that fits on one
    /// line, the JSON form otherwise. [`parse_spec_line`] reads it back to an equal spec.
    pub fn to_line(&self) -> String {
        match &self.command {
            TaskCommand::Shell(cmd) if self.fits_shell_form(cmd) => self.shell_line(cmd),
            _ => self.json_line(),
        }
    }

    /// Whether the shell form can carry this spec unchanged: the command is taken verbatim
    /// but trimmed, and nothing may break the line.
    fn fits_shell_form(&self, cmd: &str) -> bool {
        let one_line = |s: &str| !s.contains(['\n', '\r']);
        let health_one_line = match self.health.as_ref().map(|h| &h.probe) {
            Some(Probe::Cmd(c)) => one_line(c),
            _ => true,
        };
        !cmd.is_empty()
            && cmd.trim() == cmd
            && one_line(cmd)
            && self.env.values().all(|v| one_line(v))
            && health_one_line
    }

    fn shell_line(&self, cmd: &str) -> String {
        let mut words = vec![
            format!("name={}", quote(&self.name)),
            format!("cpus={}", self.cpus),
            format!("mem={}", self.mem),
        ];
        if !self.disk.is_zero() {
            words.push(format!("disk={}", self.disk));
        }
        if self.ports != 0 {
            words.push(format!("ports={}", self.ports));
        }
        for (k, v) in &self.env {
            words.push(format!("env={}", quote(&format!("{k}={v}"))));
        }
        if self.grace_ms != DEFAULT_GRACE_MS {
            words.push(format!("grace={}", format_duration_ms(self.grace_ms)));
        }
        if let Some(t) = self.timeout_ms {
            words.push(format!("timeout={}", format_duration_ms(t)));
        }
        if let Some(h) = &self.health {
            words.push(match &h.probe {
                Probe::Cmd(c) => format!("health_cmd={}", quote(c)),
                Probe::Http { port_index, path } => {
                    format!("health_http={}", quote(&format!("{port_index}{path}")))
                }
                Probe::Tcp { port_index } => format!("health_tcp={port_index}"),
            });
            for (key, ms) in non_default_durations(h) {
                words.push(format!("health_{key}={}", format_duration_ms(ms)));
            }
            if h.failures != health::DEFAULT_FAILURES {
                words.push(format!("health_failures={}", h.failures));
            }
        }
        format!("{} -- {cmd}", words.join(" "))
    }

    fn json_line(&self) -> String {
        let mut fields = vec![format!("\"name\":{}", json(&self.name))];
        match &self.command {
            TaskCommand::Shell(cmd) => fields.push(format!("\"cmd\":{}", json(cmd))),
            TaskCommand::Argv(argv) => fields.push(format!("\"argv\":{}", json(argv))),
        }
        // Scalar's Display is a valid JSON number, and read back exactly from its text.
        fields.push(format!("\"cpus\":{}", self.cpus));
        fields.push(format!("\"mem\":{}", self.mem));
        if !self.disk.is_zero() {
            fields.push(format!("\"disk\":{}", self.disk));
        }
        if self.ports != 0 {
            fields.push(format!("\"ports\":{}", self.ports));
        }
        if !self.env.is_empty() {
            fields.push(format!("\"env\":{}", json(&self.env)));
        }
        if self.grace_ms != DEFAULT_GRACE_MS {
            fields.push(format!(
                "\"grace\":{}",
                json(&format_duration_ms(self.grace_ms))
            ));
        }
        if let Some(t) = self.timeout_ms {
            fields.push(format!("\"timeout\":{}", json(&format_duration_ms(t))));
        }
        if let Some(h) = &self.health {
            let mut check = vec![match &h.probe {
                Probe::Cmd(c) => format!("\"cmd\":{}", json(c)),
                Probe::Http { port_index, path } => {
                    format!("\"http\":{}", json(&format!("{port_index}{path}")))
                }
                Probe::Tcp { port_index } => format!("\"tcp\":{port_index}"),
            }];
            for (key, ms) in non_default_durations(h) {
                check.push(format!("\"{key}\":{}", json(&format_duration_ms(ms))));
            }
            if h.failures != health::DEFAULT_FAILURES {
                check.push(format!("\"failures\":{}", h.failures));
            }
            fields.push(format!("\"health\":{{{}}}", check.join(",")));
        }
        format!("{{{}}}", fields.join(","))
    }
}

/// A health check's durations that differ from the defaults, by key without `health_`, in
/// the order the canonical forms write them.
fn non_default_durations(check: &HealthCheck) -> Vec<(&'static str, u64)> {
    [
        ("delay", check.delay_ms, health::DEFAULT_DELAY_MS),
        ("interval", check.interval_ms, health::DEFAULT_INTERVAL_MS),
        ("timeout", check.timeout_ms, health::DEFAULT_TIMEOUT_MS),
        ("grace", check.grace_ms, health::DEFAULT_GRACE_MS),
    ]
    .into_iter()
    .filter(|&(_, ms, default)| ms != default)
    .map(|(key, ms, _)| (key, ms))
    .collect()
}

/// JSON text of plain data (strings, string lists and maps), which cannot fail to serialize.
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serializes")
}

/// Quotes a shell-form value if it holds whitespace or quotes (or is empty).
fn quote(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '"') {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Fields gathered from either form, before defaults and validation.
#[derive(Default)]
struct Draft {
    name: Option<String>,
    command: Option<TaskCommand>,
    cpus: Option<Scalar>,
    mem: Option<Scalar>,
    disk: Option<Scalar>,
    ports: Option<u32>,
    env: BTreeMap<String, String>,
    grace_ms: Option<u64>,
    timeout_ms: Option<u64>,
    health: HealthDraft,
}

/// Health check fields gathered from either form.
#[derive(Default)]
struct HealthDraft {
    /// Whether any health key (or the JSON `health` object) was given.
    given: bool,
    /// The probe, with the key that gave it, to name both when another is given.
    probe: Option<(&'static str, Probe)>,
    delay_ms: Option<u64>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    grace_ms: Option<u64>,
    failures: Option<u32>,
}

impl HealthDraft {
    fn set_probe(&mut self, key: &'static str, probe: Probe) -> Result<(), SpecErrorKind> {
        if let Some((first, _)) = self.probe {
            return Err(SpecErrorKind::TwoHealthProbes(first, key));
        }
        self.probe = Some((key, probe));
        Ok(())
    }

    /// The check, once the task's port count is known to hold its port index.
    fn finish(self, ports: u32) -> Result<Option<HealthCheck>, SpecErrorKind> {
        if !self.given {
            return Ok(None);
        }
        let (_, probe) = self.probe.ok_or(SpecErrorKind::MissingHealthProbe)?;
        match &probe {
            Probe::Cmd(cmd) => {
                if cmd.trim().is_empty() {
                    return Err(SpecErrorKind::EmptyHealthCmd);
                }
                if cmd.contains('\0') {
                    return Err(SpecErrorKind::ContainsNul(
                        "the health check command".into(),
                    ));
                }
            }
            Probe::Http { port_index, .. } | Probe::Tcp { port_index } => {
                if *port_index >= ports {
                    return Err(SpecErrorKind::HealthPortIndex {
                        index: *port_index,
                        ports,
                    });
                }
            }
        }
        let defaults = HealthCheck::new(probe);
        Ok(Some(HealthCheck {
            delay_ms: self.delay_ms.unwrap_or(defaults.delay_ms),
            interval_ms: self.interval_ms.unwrap_or(defaults.interval_ms),
            timeout_ms: self.timeout_ms.unwrap_or(defaults.timeout_ms),
            grace_ms: self.grace_ms.unwrap_or(defaults.grace_ms),
            failures: self.failures.unwrap_or(defaults.failures),
            ..defaults
        }))
    }
}

impl Draft {
    fn add_env(&mut self, name: String, value: String) -> Result<(), SpecErrorKind> {
        if !is_valid_env_name(&name) {
            return Err(SpecErrorKind::InvalidEnvName(name));
        }
        if value.contains('\0') {
            return Err(SpecErrorKind::ContainsNul(format!("env var {name}")));
        }
        if self.env.contains_key(&name) {
            return Err(SpecErrorKind::DuplicateEnv(name));
        }
        self.env.insert(name, value);
        Ok(())
    }

    fn finish(self) -> Result<TaskSpec, SpecErrorKind> {
        let name = self.name.ok_or(SpecErrorKind::MissingName)?;
        validate_name(&name).map_err(|problem| SpecErrorKind::InvalidName {
            name: name.clone(),
            problem,
        })?;
        let command = self.command.ok_or(SpecErrorKind::MissingCommand)?;
        match &command {
            TaskCommand::Shell(cmd) => {
                if cmd.trim().is_empty() {
                    return Err(SpecErrorKind::EmptyCommand);
                }
                if cmd.contains('\0') {
                    return Err(SpecErrorKind::ContainsNul("the command".into()));
                }
            }
            TaskCommand::Argv(argv) => {
                if argv.first().is_none_or(|p| p.is_empty()) {
                    return Err(SpecErrorKind::EmptyArgv);
                }
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err(SpecErrorKind::ContainsNul("argv".into()));
                }
            }
        }
        let cpus = self.cpus.unwrap_or(DEFAULT_CPUS);
        if cpus <= Scalar::ZERO {
            return Err(SpecErrorKind::NotPositive("cpus"));
        }
        let mem = self.mem.unwrap_or(DEFAULT_MEM);
        if mem <= Scalar::ZERO {
            return Err(SpecErrorKind::NotPositive("mem"));
        }
        let ports = self.ports.unwrap_or(0);
        let health = self.health.finish(ports)?;
        Ok(TaskSpec {
            name,
            command,
            cpus,
            mem,
            disk: self.disk.unwrap_or(Scalar::ZERO),
            ports,
            env: self.env,
            grace_ms: self.grace_ms.unwrap_or(DEFAULT_GRACE_MS),
            timeout_ms: self.timeout_ms,
            health,
        })
    }
}

fn parse_scalar(key: &'static str, text: &str) -> Result<Scalar, SpecErrorKind> {
    text.parse()
        .map_err(|e: resources::ScalarError| SpecErrorKind::InvalidScalar {
            key,
            text: text.to_string(),
            problem: e.problem,
        })
}

fn parse_ports(text: &str) -> Result<u32, SpecErrorKind> {
    let bad = || SpecErrorKind::InvalidPorts(text.to_string());
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse::<u32>()
        .ok()
        .filter(|&n| n <= MAX_PORTS)
        .ok_or_else(bad)
}

fn parse_grace(text: &str) -> Result<u64, SpecErrorKind> {
    spec_duration(text, "grace")
}

/// A timeout: a duration of at least a millisecond (a task cannot run for no time).
fn parse_timeout(text: &str) -> Result<u64, SpecErrorKind> {
    nonzero_duration(text, "timeout")
}

/// A duration of at least a millisecond, for `key`.
fn nonzero_duration(text: &str, key: &'static str) -> Result<u64, SpecErrorKind> {
    match spec_duration(text, key)? {
        0 => Err(SpecErrorKind::InvalidDuration {
            key,
            text: text.to_string(),
            problem: DurationError::Zero,
        }),
        ms => Ok(ms),
    }
}

/// A port index written with digits only, below [`MAX_PORTS`] (so some task can have it).
fn parse_port_index(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|&i| i < MAX_PORTS)
}

/// A health check's allowed failures: digits only, from 1 to [`MAX_HEALTH_FAILURES`].
fn parse_failures(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_HEALTH_FAILURES).contains(n))
}

/// `PORT_INDEX[/path]` (`0/healthz`; `1` alone is path `/`), given for `key`.
fn parse_health_http(key: &'static str, text: &str) -> Result<Probe, SpecErrorKind> {
    let invalid = |problem| SpecErrorKind::InvalidHealthHttp {
        key,
        text: text.to_string(),
        problem,
    };
    let (index, path) = match text.split_once('/') {
        Some((index, rest)) => (index, format!("/{rest}")),
        None => (text, "/".to_string()),
    };
    let port_index = parse_port_index(index).ok_or_else(|| {
        invalid("the port index before \"/\" must be a whole number from 0 to 65534")
    })?;
    // The path goes into the request line as it is, where spaces and controls would break it.
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "the path may hold only printable ASCII, without spaces or control characters",
        ));
    }
    Ok(Probe::Http { port_index, path })
}

fn spec_duration(text: &str, key: &'static str) -> Result<u64, SpecErrorKind> {
    parse_duration_ms(text).map_err(|problem| SpecErrorKind::InvalidDuration {
        key,
        text: text.to_string(),
        problem,
    })
}

// ---------------------------------------------------------------------------------------------
// Shell form

/// Splits the words before ` -- ` (unquoting them) from the command after it.
fn split_shell(line: &str) -> Result<(Vec<String>, &str), SpecErrorKind> {
    let mut words = Vec::new();
    let mut chars = line.char_indices().peekable();
    loop {
        while chars.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Err(SpecErrorKind::MissingSeparator);
        }
        let mut word = String::new();
        let mut quoted = false;
        let mut end = line.len();
        while let Some((i, c)) = chars.next() {
            if c.is_whitespace() {
                end = i;
                break;
            }
            if c != '"' {
                word.push(c);
                continue;
            }
            quoted = true;
            loop {
                match chars.next() {
                    None => return Err(SpecErrorKind::UnterminatedQuote),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next_if(|&(_, c)| c == '"' || c == '\\') {
                        Some((_, escaped)) => word.push(escaped),
                        // Other backslashes are literal, so Windows-ish paths need no doubling.
                        None => word.push('\\'),
                    },
                    Some((_, c)) => word.push(c),
                }
            }
        }
        // A quoted "--" is a value, not the separator.
        if word == "--" && !quoted {
            return Ok((words, &line[end..]));
        }
        words.push(word);
    }
}

fn parse_shell(line: &str) -> Result<TaskSpec, SpecErrorKind> {
    let (words, command) = split_shell(line)?;
    let command = command.trim();
    if command.is_empty() {
        return Err(SpecErrorKind::EmptyCommand);
    }
    let mut draft = Draft {
        command: Some(TaskCommand::Shell(command.to_string())),
        ..Draft::default()
    };
    let mut seen = BTreeSet::new();
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(SpecErrorKind::NotKeyValue(word));
        };
        if key == "env" {
            let (name, v) = value
                .split_once('=')
                .ok_or_else(|| SpecErrorKind::InvalidEnv(value.to_string()))?;
            draft.add_env(name.to_string(), v.to_string())?;
            continue;
        }
        if !SHELL_KEYS.split(", ").any(|k| k == key) {
            return Err(SpecErrorKind::UnknownKey(key.to_string()));
        }
        if !seen.insert(key.to_string()) {
            return Err(SpecErrorKind::DuplicateKey(key.to_string()));
        }
        if key.starts_with("health_") {
            draft.health.given = true;
        }
        match key {
            "name" => draft.name = Some(value.to_string()),
            "cpus" => draft.cpus = Some(parse_scalar("cpus", value)?),
            "mem" => draft.mem = Some(parse_scalar("mem", value)?),
            "disk" => draft.disk = Some(parse_scalar("disk", value)?),
            "ports" => draft.ports = Some(parse_ports(value)?),
            "grace" => draft.grace_ms = Some(parse_grace(value)?),
            "timeout" => draft.timeout_ms = Some(parse_timeout(value)?),
            "health_cmd" => draft
                .health
                .set_probe("health_cmd", Probe::Cmd(value.to_string()))?,
            "health_http" => draft
                .health
                .set_probe("health_http", parse_health_http("health_http", value)?)?,
            "health_tcp" => {
                let port_index = parse_port_index(value)
                    .ok_or_else(|| SpecErrorKind::InvalidHealthTcp(value.to_string()))?;
                draft
                    .health
                    .set_probe("health_tcp", Probe::Tcp { port_index })?
            }
            "health_delay" => draft.health.delay_ms = Some(spec_duration(value, "health_delay")?),
            "health_interval" => {
                draft.health.interval_ms = Some(nonzero_duration(value, "health_interval")?)
            }
            "health_timeout" => {
                draft.health.timeout_ms = Some(nonzero_duration(value, "health_timeout")?)
            }
            "health_grace" => draft.health.grace_ms = Some(spec_duration(value, "health_grace")?),
            "health_failures" => {
                draft.health.failures = Some(
                    parse_failures(value)
                        .ok_or_else(|| SpecErrorKind::InvalidHealthFailures(value.to_string()))?,
                )
            }
            _ => unreachable!("checked against SHELL_KEYS"),
        }
    }
    draft.finish()
}

// ---------------------------------------------------------------------------------------------
// JSON form

/// A JSON object's fields in order, with their raw text, so numbers keep their exact digits
/// and repeated fields are seen.
struct RawObject(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawObject, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = RawObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push(entry);
                }
                Ok(RawObject(fields))
            }
        }
        d.deserialize_map(Visitor)
    }
}

impl RawObject {
    fn parse(text: &str) -> Result<RawObject, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The fields, or the first one that repeats.
    fn unique(self) -> Result<Vec<(String, Box<RawValue>)>, String> {
        let mut seen = BTreeSet::new();
        for (k, _) in &self.0 {
            if !seen.insert(k.as_str()) {
                return Err(k.clone());
            }
        }
        Ok(self.0)
    }
}

fn parse_json(line: &str) -> Result<TaskSpec, SpecErrorKind> {
    let fields = RawObject::parse(line)
        .map_err(|e| SpecErrorKind::InvalidJson(e.to_string()))?
        .unique()
        .map_err(SpecErrorKind::DuplicateField)?;
    let mut draft = Draft::default();
    let mut cmd = None;
    let mut argv = None;
    for (field, raw) in fields {
        let raw = raw.get();
        let invalid = |expected| SpecErrorKind::InvalidField {
            field: field.clone(),
            expected,
        };
        match field.as_str() {
            "name" => {
                draft.name = Some(serde_json::from_str(raw).map_err(|_| invalid("a string"))?)
            }
            "cmd" => {
                cmd = Some(serde_json::from_str::<String>(raw).map_err(|_| invalid("a string"))?)
            }
            "argv" => {
                argv = Some(
                    serde_json::from_str::<Vec<String>>(raw)
                        .map_err(|_| invalid("an array of strings"))?,
                )
            }
            "cpus" => draft.cpus = Some(json_scalar("cpus", raw, invalid)?),
            "mem" => draft.mem = Some(json_scalar("mem", raw, invalid)?),
            "disk" => draft.disk = Some(json_scalar("disk", raw, invalid)?),
            "ports" => {
                draft.ports = Some(
                    parse_ports(raw)
                        .map_err(|_| invalid("a whole number of ports from 0 to 65535"))?,
                )
            }
            "env" => {
                let expected = "an object of NAME: \"value\" strings";
                let vars = RawObject::parse(raw)
                    .map_err(|_| invalid(expected))?
                    .unique()
                    .map_err(SpecErrorKind::DuplicateEnv)?;
                for (name, value) in vars {
                    let value = serde_json::from_str::<String>(value.get())
                        .map_err(|_| invalid(expected))?;
                    draft.add_env(name, value)?;
                }
            }
            "grace" => draft.grace_ms = Some(json_duration(raw, "grace", parse_grace)?),
            "timeout" => draft.timeout_ms = Some(json_duration(raw, "timeout", parse_timeout)?),
            "health" => parse_json_health(raw, &mut draft.health)?,
            _ => return Err(SpecErrorKind::UnknownField(field)),
        }
    }
    draft.command = match (cmd, argv) {
        (Some(_), Some(_)) => return Err(SpecErrorKind::BothCommands),
        (Some(cmd), None) => Some(TaskCommand::Shell(cmd)),
        (None, Some(argv)) => Some(TaskCommand::Argv(argv)),
        (None, None) => None,
    };
    draft.finish()
}

/// Reads the JSON form's `health` object; its fields are named `health.<field>` in errors.
fn parse_json_health(raw: &str, draft: &mut HealthDraft) -> Result<(), SpecErrorKind> {
    let fields = RawObject::parse(raw)
        .map_err(|_| SpecErrorKind::InvalidField {
            field: "health".into(),
            expected: "an object such as {\"http\":\"0/healthz\"}",
        })?
        .unique()
        .map_err(|f| SpecErrorKind::DuplicateField(format!("health.{f}")))?;
    draft.given = true;
    for (field, raw) in fields {
        let raw = raw.get();
        let invalid = |expected| SpecErrorKind::InvalidField {
            field: format!("health.{field}"),
            expected,
        };
        match field.as_str() {
            "cmd" => {
                let cmd = serde_json::from_str(raw).map_err(|_| invalid("a string"))?;
                draft.set_probe("\"cmd\"", Probe::Cmd(cmd))?
            }
            "http" => {
                let text: String = serde_json::from_str(raw)
                    .map_err(|_| invalid("a string such as \"0/healthz\""))?;
                draft.set_probe("\"http\"", parse_health_http("health.http", &text)?)?
            }
            "tcp" => {
                let port_index = parse_port_index(raw)
                    .ok_or_else(|| invalid("a port index, a whole number from 0 to 65534"))?;
                draft.set_probe("\"tcp\"", Probe::Tcp { port_index })?
            }
            "delay" => {
                draft.delay_ms = Some(json_duration(raw, "health.delay", |t| {
                    spec_duration(t, "health.delay")
                })?)
            }
            "interval" => {
                draft.interval_ms = Some(json_duration(raw, "health.interval", |t| {
                    nonzero_duration(t, "health.interval")
                })?)
            }
            "timeout" => {
                draft.timeout_ms = Some(json_duration(raw, "health.timeout", |t| {
                    nonzero_duration(t, "health.timeout")
                })?)
            }
            "grace" => {
                draft.grace_ms = Some(json_duration(raw, "health.grace", |t| {
                    spec_duration(t, "health.grace")
                })?)
            }
            "failures" => {
                draft.failures = Some(
                    parse_failures(raw).ok_or_else(|| invalid("a whole number from 1 to 1000"))?,
                )
            }
            _ => return Err(SpecErrorKind::UnknownHealthField(field)),
        }
    }
    Ok(())
}

/// Reads cpus, mem or disk from a JSON number (exactly, from its digits) or a decimal string.
fn json_scalar(
    key: &'static str,
    raw: &str,
    invalid: impl Fn(&'static str) -> SpecErrorKind,
) -> Result<Scalar, SpecErrorKind> {
    let expected = "a number or a decimal string";
    if raw.starts_with('"') {
        let text: String = serde_json::from_str(raw).map_err(|_| invalid(expected))?;
        return parse_scalar(key, &text);
    }
    let plain = plain_decimal(raw)
        .map_err(|_| invalid(expected))?
        .map_err(|problem| SpecErrorKind::InvalidScalar {
            key,
            text: raw.to_string(),
            problem,
        })?;
    parse_scalar(key, &plain).map_err(|e| match e {
        SpecErrorKind::InvalidScalar { problem, .. } => SpecErrorKind::InvalidScalar {
            key,
            text: raw.to_string(),
            problem,
        },
        other => other,
    })
}

/// A JSON duration field: a string such as `"5s"`, or a number of seconds, read by `parse`
/// (which names `key` in its errors).
fn json_duration(
    raw: &str,
    key: &'static str,
    parse: impl Fn(&str) -> Result<u64, SpecErrorKind>,
) -> Result<u64, SpecErrorKind> {
    let invalid = || SpecErrorKind::InvalidField {
        field: key.to_string(),
        expected: "a duration string such as \"5s\" or a number of seconds",
    };
    if raw.starts_with('"') {
        let text: String = serde_json::from_str(raw).map_err(|_| invalid())?;
        return parse(&text);
    }
    let seconds =
        plain_decimal(raw)
            .map_err(|_| invalid())?
            .map_err(|p| SpecErrorKind::InvalidDuration {
                key,
                text: raw.to_string(),
                problem: match p {
                    ScalarProblem::TooLarge => DurationError::TooLong,
                    ScalarProblem::TooPrecise => DurationError::SubMillisecond,
                    _ => DurationError::Malformed,
                },
            })?;
    // Errors name the number as it was written, not the seconds made of it.
    parse(&seconds).map_err(|e| match e {
        SpecErrorKind::InvalidDuration { key, problem, .. } => SpecErrorKind::InvalidDuration {
            key,
            text: raw.to_string(),
            problem,
        },
        other => other,
    })
}

/// Rewrites a JSON number's text without sign or exponent (`2.5e-1` → `0.25`), so the decimal
/// parser reads its exact value. Err(()) if the text is not a JSON number at all.
fn plain_decimal(raw: &str) -> Result<Result<String, ScalarProblem>, ()> {
    if !raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Err(());
    }
    // RawValue has already checked the JSON number grammar.
    let (negative, rest) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (rest, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // Large exponents only matter as "far too large" or "far too precise".
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => e
            .parse()
            .unwrap_or(if e.starts_with('-') { -1000 } else { 1000 })
            .clamp(-1000, 1000),
    };
    let digits = format!("{int}{frac}");
    let significant = digits.trim_start_matches('0');
    let leading_zeros = digits.len() - significant.len();
    let significant = significant.trim_end_matches('0');
    if significant.is_empty() {
        return Ok(Ok("0".to_string()));
    }
    if negative {
        return Ok(Err(ScalarProblem::Negative));
    }
    // The decimal point sits `point` digits into `significant`.
    let point = int.len() as i64 + exponent - leading_zeros as i64;
    let len = significant.len() as i64;
    if len - point > 3 {
        return Ok(Err(ScalarProblem::TooPrecise));
    }
    if point > 40 {
        return Ok(Err(ScalarProblem::TooLarge));
    }
    Ok(Ok(if point <= 0 {
        format!("0.{}{significant}", "0".repeat((-point) as usize))
    } else if point >= len {
        format!("{significant}{}", "0".repeat((point - len) as usize))
    } else {
        let (a, b) = significant.split_at(point as usize);
        format!("{a}.{b}")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_what_useradd_accepts() {
        for ok in [
            "root",
            "nobody",
            "_apt",
            "alice.b-c",
            "svc$",
            "systemd-timesync",
        ] {
            assert_eq!(validate_user(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_user(""), Err(NameError::Empty));
        assert_eq!(validate_user("-x"), Err(NameError::BadStart('-')));
        assert_eq!(validate_user("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(validate_user("a$b"), Err(NameError::BadChar('$')));
        assert!(matches!(
            validate_user(&"u".repeat(65)),
            Err(NameError::TooLong(65))
        ));
    }
    use proptest::prelude::*;

    fn sc(text: &str) -> Scalar {
        text.parse().unwrap()
    }

    fn spec(line: &str) -> TaskSpec {
        parse_spec_line(line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    fn err(line: &str) -> String {
        parse_spec_line(line).unwrap_err().to_string()
    }

    fn kind(line: &str) -> SpecErrorKind {
        parse_spec_line(line).unwrap_err().kind
    }

    // --- shell form ---

    #[test]
    fn shell_form_reads_keys_and_the_command_after_the_separator() {
        let s = spec("name=web cpus=0.5 mem=64 disk=128 ports=2 env=A=b env=C=d=e grace=5s timeout=2m -- ./serve --port $PORT0");
        assert_eq!(
            s,
            TaskSpec {
                name: "web".into(),
                command: TaskCommand::Shell("./serve --port $PORT0".into()),
                cpus: sc("0.5"),
                mem: sc("64"),
                disk: sc("128"),
                ports: 2,
                env: [("A", "b"), ("C", "d=e")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
                grace_ms: 5000,
                timeout_ms: Some(120_000),
                health: None,
            }
        );
    }

    #[test]
    fn shell_form_applies_defaults() {
        let s = spec("name=x -- true");
        assert_eq!(s.cpus, sc("0.1"));
        assert_eq!(s.mem, sc("32"));
        assert_eq!(s.disk, Scalar::ZERO);
        assert_eq!(s.ports, 0);
        assert!(s.env.is_empty());
        assert_eq!(s.grace_ms, 3000);
    }

    #[test]
    fn shell_form_takes_the_command_verbatim_after_the_first_separator() {
        let s = spec("  name=x\t--   echo \"a  b\" -- 'c' # not a comment  ");
        assert_eq!(
            s.command,
            TaskCommand::Shell("echo \"a  b\" -- 'c' # not a comment".into())
        );
    }

    #[test]
    fn shell_form_values_may_be_quoted_with_escapes() {
        let s = spec(r#"name=x env="GREETING=hello world" env=Q="say \"hi\" \\ \n" -- true"#);
        assert_eq!(s.env["GREETING"], "hello world");
        assert_eq!(s.env["Q"], r#"say "hi" \ \n"#);
        assert_eq!(spec(r#"name=x env=E="" -- true"#).env["E"], "");
        assert_eq!(spec(r#"name=x env="X=a -- b" -- true"#).env["X"], "a -- b");
        assert_eq!(spec(r#"name=x env=P=C:\dir -- true"#).env["P"], r"C:\dir");
    }

    #[test]
    fn shell_form_rejects_unknown_keys_naming_them() {
        assert_eq!(
            err("name=x cpu=1 -- true"),
            "line 1: unknown key \"cpu\" (expected name, cpus, mem, disk, ports, env, grace, timeout, \
             health_cmd, health_http, health_tcp, health_delay, health_interval, health_timeout, \
             health_grace, health_failures)"
        );
    }

    #[test]
    fn shell_form_rejects_duplicate_keys_except_env() {
        assert_eq!(
            kind("name=x cpus=1 cpus=2 -- true"),
            SpecErrorKind::DuplicateKey("cpus".into())
        );
        assert_eq!(
            kind("name=x env=A=1 env=A=2 -- true"),
            SpecErrorKind::DuplicateEnv("A".into())
        );
    }

    #[test]
    fn shell_form_requires_the_separator_and_a_command() {
        assert_eq!(
            err("name=x echo hi"),
            "line 1: missing \" -- \" before the command"
        );
        assert_eq!(kind("name=x --echo hi"), SpecErrorKind::MissingSeparator);
        assert_eq!(kind("name=x \"--\" echo"), SpecErrorKind::MissingSeparator);
        assert_eq!(kind("name=x --"), SpecErrorKind::EmptyCommand);
        assert_eq!(kind("name=x --   "), SpecErrorKind::EmptyCommand);
        assert_eq!(err("name=x -- "), "line 1: empty command after \" -- \"");
    }

    #[test]
    fn shell_form_rejects_words_that_are_not_key_value() {
        assert_eq!(
            kind("name=x cpus = 1 -- true"),
            SpecErrorKind::NotKeyValue("cpus".into())
        );
    }

    #[test]
    fn shell_form_rejects_an_unterminated_quote() {
        assert_eq!(
            kind("name=x env=\"A=b -- true"),
            SpecErrorKind::UnterminatedQuote
        );
        assert_eq!(
            kind(r#"name=x env="A=b\" -- true"#),
            SpecErrorKind::UnterminatedQuote
        );
    }

    #[test]
    fn a_name_is_required_and_must_be_a_directory_name() {
        assert_eq!(kind("cpus=1 -- true"), SpecErrorKind::MissingName);
        assert_eq!(
            err("name=../etc -- true"),
            "line 1: invalid task name \"../etc\": must start with a letter or digit, not '.'"
        );
        assert!(matches!(
            kind("name=a/b -- true"),
            SpecErrorKind::InvalidName {
                problem: NameError::BadChar('/'),
                ..
            }
        ));
        assert!(matches!(
            kind("name= -- true"),
            SpecErrorKind::InvalidName {
                problem: NameError::Empty,
                ..
            }
        ));
        let long = "a".repeat(65);
        assert!(matches!(
            kind(&format!("name={long} -- true")),
            SpecErrorKind::InvalidName {
                problem: NameError::TooLong(65),
                ..
            }
        ));
        assert!(parse_spec_line(&format!("name={} -- true", "a".repeat(64))).is_ok());
        assert!(parse_spec_line("name=0a._-Z -- true").is_ok());
    }

    #[test]
    fn cpus_and_mem_must_be_positive() {
        assert_eq!(
            err("name=x cpus=0 -- true"),
            "line 1: cpus must be greater than 0"
        );
        assert_eq!(
            err("name=x mem=0 -- true"),
            "line 1: mem must be greater than 0"
        );
        assert!(parse_spec_line("name=x disk=0 -- true").is_ok());
    }

    #[test]
    fn scalar_values_are_exact_decimals() {
        assert_eq!(spec("name=x cpus=0.001 -- true").cpus.milli(), 1);
        assert_eq!(
            err("name=x cpus=0.0001 -- true"),
            "line 1: invalid cpus \"0.0001\": at most 3 decimal places"
        );
        assert_eq!(
            kind("name=x mem=-1 -- true"),
            SpecErrorKind::InvalidScalar {
                key: "mem",
                text: "-1".into(),
                problem: ScalarProblem::Negative
            }
        );
        assert!(matches!(
            kind("name=x disk=lots -- true"),
            SpecErrorKind::InvalidScalar { key: "disk", .. }
        ));
    }

    #[test]
    fn ports_is_a_small_whole_number() {
        assert_eq!(spec("name=x ports=65535 -- true").ports, 65535);
        for bad in ["-1", "1.5", "65536", "+1", "", "two"] {
            assert_eq!(
                kind(&format!("name=x ports={bad} -- true")),
                SpecErrorKind::InvalidPorts(bad.into())
            );
        }
    }

    #[test]
    fn env_needs_a_valid_name_and_an_equals_sign() {
        assert_eq!(
            kind("name=x env=FOO -- true"),
            SpecErrorKind::InvalidEnv("FOO".into())
        );
        assert_eq!(
            kind("name=x env=1X=a -- true"),
            SpecErrorKind::InvalidEnvName("1X".into())
        );
        assert_eq!(
            kind("name=x env==a -- true"),
            SpecErrorKind::InvalidEnvName("".into())
        );
        assert_eq!(
            kind("name=x env=A-B=a -- true"),
            SpecErrorKind::InvalidEnvName("A-B".into())
        );
        assert_eq!(spec("name=x env=_a1=v -- true").env["_a1"], "v");
    }

    #[test]
    fn a_timeout_takes_units_or_bare_seconds_and_must_be_some_time() {
        let timeout = |t: &str| spec(&format!("name=x timeout={t} -- true")).timeout_ms;
        assert_eq!(timeout("1s"), Some(1000));
        assert_eq!(timeout("2m"), Some(120_000));
        assert_eq!(timeout("7"), Some(7000));
        assert_eq!(spec("name=x -- true").timeout_ms, None);
        for bad in ["0", "0s", "soon", "1.5ms", "-1s"] {
            let err = parse_spec_line(&format!("name=x timeout={bad} -- true")).unwrap_err();
            assert!(
                matches!(
                    err.kind,
                    SpecErrorKind::InvalidDuration { key: "timeout", .. }
                ),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("invalid timeout"), "{err}");
        }
        let json =
            |t: &str| parse_spec_line(&format!(r#"{{"name":"x","cmd":"true","timeout":{t}}}"#));
        assert_eq!(json(r#""90s""#).unwrap().timeout_ms, Some(90_000));
        assert_eq!(json("2.5").unwrap().timeout_ms, Some(2500));
        assert!(json("0").is_err());
        assert!(json("[1]").is_err());
        // The canonical form gives it back, in both forms.
        let s = spec("name=x timeout=90s -- true");
        assert!(s.to_line().contains("timeout=90s"), "{}", s.to_line());
        assert_eq!(parse_spec_line(&s.to_line()).unwrap(), s);
    }

    #[test]
    fn grace_takes_units_or_bare_seconds() {
        let grace = |g: &str| spec(&format!("name=x grace={g} -- true")).grace_ms;
        assert_eq!(grace("500ms"), 500);
        assert_eq!(grace("5s"), 5000);
        assert_eq!(grace("2m"), 120_000);
        assert_eq!(grace("1h"), 3_600_000);
        assert_eq!(grace("7"), 7000);
        assert_eq!(grace("1.5"), 1500);
        assert_eq!(grace("0"), 0);
        assert_eq!(
            err("name=x grace=5x -- true"),
            "line 1: invalid grace \"5x\": expected e.g. 500ms, 5s, 2m, 1h or a bare number of seconds"
        );
        assert!(matches!(
            kind("name=x grace=1.5ms -- true"),
            SpecErrorKind::InvalidDuration {
                key: "grace",
                problem: DurationError::SubMillisecond,
                ..
            }
        ));
        assert!(matches!(
            kind("name=x grace=99999999999999999999h -- true"),
            SpecErrorKind::InvalidDuration {
                key: "grace",
                problem: DurationError::TooLong,
                ..
            }
        ));
    }

    #[test]
    fn parse_duration_reads_the_same_syntax() {
        assert_eq!(parse_duration(" 30s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("-1s"), Err(DurationError::Malformed));
        assert_eq!(parse_duration("s"), Err(DurationError::Malformed));
        assert_eq!(parse_duration_ms(&format!("{}ms", u64::MAX)), Ok(u64::MAX));
    }

    // --- JSON form ---

    #[test]
    fn json_form_reads_every_field() {
        let s = spec(
            r#"{"name":"x","cmd":"echo hi","cpus":0.5,"mem":64,"disk":0,"ports":2,"env":{"A":"b"},"grace":"5s"}"#,
        );
        assert_eq!(s.name, "x");
        assert_eq!(s.command, TaskCommand::Shell("echo hi".into()));
        assert_eq!(s.cpus, sc("0.5"));
        assert_eq!(s.mem, sc("64"));
        assert_eq!(s.disk, Scalar::ZERO);
        assert_eq!(s.ports, 2);
        assert_eq!(s.env["A"], "b");
        assert_eq!(s.grace_ms, 5000);
    }

    #[test]
    fn json_form_takes_argv_instead_of_cmd() {
        let s = spec(r#"  {"name":"x","argv":["/bin/echo","hi there"]}  "#);
        assert_eq!(
            s.command,
            TaskCommand::Argv(vec!["/bin/echo".into(), "hi there".into()])
        );
        assert_eq!(s.cpus, DEFAULT_CPUS);
        assert_eq!(s.mem, DEFAULT_MEM);
        assert_eq!(s.grace_ms, DEFAULT_GRACE_MS);
    }

    #[test]
    fn json_form_needs_exactly_one_of_cmd_and_argv() {
        assert_eq!(kind(r#"{"name":"x"}"#), SpecErrorKind::MissingCommand);
        assert_eq!(
            kind(r#"{"name":"x","cmd":"a","argv":["b"]}"#),
            SpecErrorKind::BothCommands
        );
        assert_eq!(kind(r#"{"name":"x","argv":[]}"#), SpecErrorKind::EmptyArgv);
        assert_eq!(
            kind(r#"{"name":"x","argv":[""]}"#),
            SpecErrorKind::EmptyArgv
        );
        assert_eq!(
            kind(r#"{"name":"x","cmd":"  "}"#),
            SpecErrorKind::EmptyCommand
        );
    }

    #[test]
    fn json_form_reads_numbers_exactly() {
        let cpus = |v: &str| {
            spec(&format!(r#"{{"name":"x","cmd":"a","cpus":{v}}}"#))
                .cpus
                .milli()
        };
        assert_eq!(cpus("0.1"), 100);
        assert_eq!(cpus("0.3"), 300);
        assert_eq!(cpus("2"), 2000);
        assert_eq!(cpus("\"0.25\""), 250);
        assert_eq!(cpus("2.5e-1"), 250);
        assert_eq!(cpus("1E3"), 1_000_000);
        assert_eq!(cpus("0.1000"), 100);
        assert_eq!(cpus("9223372036854775.807"), i64::MAX);
        assert_eq!(
            err(r#"{"name":"x","cmd":"a","cpus":0.30000000000000004}"#),
            "line 1: invalid cpus \"0.30000000000000004\": at most 3 decimal places"
        );
        assert!(matches!(
            kind(r#"{"name":"x","cmd":"a","cpus":1e400}"#),
            SpecErrorKind::InvalidScalar {
                problem: ScalarProblem::TooLarge,
                ..
            }
        ));
        assert!(matches!(
            kind(r#"{"name":"x","cmd":"a","cpus":1e-400}"#),
            SpecErrorKind::InvalidScalar {
                problem: ScalarProblem::TooPrecise,
                ..
            }
        ));
        assert!(matches!(
            kind(r#"{"name":"x","cmd":"a","mem":-64}"#),
            SpecErrorKind::InvalidScalar {
                key: "mem",
                problem: ScalarProblem::Negative,
                ..
            }
        ));
        assert_eq!(
            kind(r#"{"name":"x","cmd":"a","cpus":0}"#),
            SpecErrorKind::NotPositive("cpus")
        );
        assert_eq!(
            kind(r#"{"name":"x","cmd":"a","cpus":-0.0}"#),
            SpecErrorKind::NotPositive("cpus")
        );
    }

    #[test]
    fn json_form_grace_may_be_seconds() {
        let grace = |v: &str| spec(&format!(r#"{{"name":"x","cmd":"a","grace":{v}}}"#)).grace_ms;
        assert_eq!(grace("5"), 5000);
        assert_eq!(grace("0.25"), 250);
        assert_eq!(grace("\"250ms\""), 250);
        assert!(matches!(
            kind(r#"{"name":"x","cmd":"a","grace":-1}"#),
            SpecErrorKind::InvalidDuration { .. }
        ));
        assert!(matches!(
            kind(r#"{"name":"x","cmd":"a","grace":"soon"}"#),
            SpecErrorKind::InvalidDuration { .. }
        ));
    }

    #[test]
    fn json_form_rejects_unknown_and_repeated_fields() {
        assert_eq!(
            err(r#"{"name":"x","cmd":"a","cpu":1}"#),
            "line 1: unknown field \"cpu\" (expected name, cmd, argv, cpus, mem, disk, ports, env, grace, timeout, health)"
        );
        assert_eq!(
            kind(r#"{"name":"x","cmd":"a","name":"y"}"#),
            SpecErrorKind::DuplicateField("name".into())
        );
        assert_eq!(
            kind(r#"{"name":"x","cmd":"a","env":{"A":"1","A":"2"}}"#),
            SpecErrorKind::DuplicateEnv("A".into())
        );
    }

    #[test]
    fn json_form_rejects_fields_of_the_wrong_type() {
        let field = |line: &str| match kind(line) {
            SpecErrorKind::InvalidField { field, .. } => field,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(field(r#"{"name":1,"cmd":"a"}"#), "name");
        assert_eq!(field(r#"{"name":"x","cmd":["a"]}"#), "cmd");
        assert_eq!(field(r#"{"name":"x","argv":"a"}"#), "argv");
        assert_eq!(field(r#"{"name":"x","cmd":"a","cpus":true}"#), "cpus");
        assert_eq!(field(r#"{"name":"x","cmd":"a","mem":null}"#), "mem");
        assert_eq!(field(r#"{"name":"x","cmd":"a","ports":1.5}"#), "ports");
        assert_eq!(field(r#"{"name":"x","cmd":"a","ports":70000}"#), "ports");
        assert_eq!(field(r#"{"name":"x","cmd":"a","env":{"A":1}}"#), "env");
        assert_eq!(field(r#"{"name":"x","cmd":"a","env":[]}"#), "env");
        assert_eq!(field(r#"{"name":"x","cmd":"a","grace":[]}"#), "grace");
        assert_eq!(
            err(r#"{"name":1,"cmd":"a"}"#),
            "line 1: field \"name\" must be a string"
        );
    }

    #[test]
    fn json_form_rejects_malformed_json() {
        assert!(matches!(
            kind(r#"{"name":"x""#),
            SpecErrorKind::InvalidJson(_)
        ));
        assert!(matches!(
            kind(r#"{"name":"x"} trailing"#),
            SpecErrorKind::InvalidJson(_)
        ));
        assert!(matches!(kind("{"), SpecErrorKind::InvalidJson(_)));
    }

    #[test]
    fn json_form_validates_like_the_shell_form() {
        assert_eq!(kind(r#"{"cmd":"a"}"#), SpecErrorKind::MissingName);
        assert!(matches!(
            kind(r#"{"name":".x","cmd":"a"}"#),
            SpecErrorKind::InvalidName { .. }
        ));
        assert_eq!(
            kind(r#"{"name":"x","cmd":"a","env":{"1A":"b"}}"#),
            SpecErrorKind::InvalidEnvName("1A".into())
        );
        assert!(matches!(
            kind(r#"{"name":"x","cmd":"a\u0000b"}"#),
            SpecErrorKind::ContainsNul(_)
        ));
        assert!(matches!(
            kind(r#"{"name":"x","argv":["a","\u0000"]}"#),
            SpecErrorKind::ContainsNul(_)
        ));
    }

    // --- health checks ---

    fn check(line: &str) -> HealthCheck {
        spec(line)
            .health
            .unwrap_or_else(|| panic!("{line}: no health check"))
    }

    #[test]
    fn a_spec_without_health_keys_has_no_health_check() {
        assert_eq!(spec("name=x -- true").health, None);
        assert_eq!(spec(r#"{"name":"x","cmd":"true"}"#).health, None);
    }

    #[test]
    fn health_cmd_is_a_quoted_shell_command_with_default_timing_in_both_forms() {
        let want = HealthCheck::new(Probe::Cmd("curl -fs localhost:$PORT0".into()));
        assert_eq!(
            check(r#"name=x health_cmd="curl -fs localhost:$PORT0" -- ./serve"#),
            want
        );
        assert_eq!(
            check(r#"{"name":"x","cmd":"./serve","health":{"cmd":"curl -fs localhost:$PORT0"}}"#),
            want
        );
        assert_eq!(want.delay_ms, 15_000);
        assert_eq!(want.interval_ms, 10_000);
        assert_eq!(want.timeout_ms, 20_000);
        assert_eq!(want.grace_ms, 10_000);
        assert_eq!(want.failures, 3);
        assert_eq!(
            check("name=x health_cmd=true -- a").probe,
            Probe::Cmd("true".into())
        );
    }

    #[test]
    fn health_http_is_a_port_index_and_a_path_that_defaults_to_the_root() {
        let http = |port_index, path: &str| {
            HealthCheck::new(Probe::Http {
                port_index,
                path: path.into(),
            })
        };
        assert_eq!(
            check("name=x ports=1 health_http=0/healthz -- a"),
            http(0, "/healthz")
        );
        assert_eq!(check("name=x ports=2 health_http=1 -- a"), http(1, "/"));
        assert_eq!(check("name=x ports=2 health_http=1/ -- a"), http(1, "/"));
        assert_eq!(
            check("name=x ports=1 health_http=0/a/b?c=d&e=%20 -- a"),
            http(0, "/a/b?c=d&e=%20")
        );
        assert_eq!(
            check(r#"{"name":"x","cmd":"a","ports":1,"health":{"http":"0/healthz"}}"#),
            http(0, "/healthz")
        );
        assert_eq!(
            check(r#"{"name":"x","cmd":"a","ports":2,"health":{"http":"1"}}"#),
            http(1, "/")
        );
    }

    #[test]
    fn health_tcp_is_a_port_index_in_both_forms() {
        let tcp = |port_index| HealthCheck::new(Probe::Tcp { port_index });
        assert_eq!(check("name=x ports=3 health_tcp=2 -- a"), tcp(2));
        assert_eq!(
            check(r#"{"name":"x","cmd":"a","ports":1,"health":{"tcp":0}}"#),
            tcp(0)
        );
    }

    #[test]
    fn health_timing_keys_take_durations_and_failures_a_whole_number() {
        let want = HealthCheck {
            delay_ms: 500,
            interval_ms: 5_000,
            timeout_ms: 120_000,
            grace_ms: 7_000,
            failures: 10,
            ..HealthCheck::new(Probe::Tcp { port_index: 0 })
        };
        assert_eq!(
            check(
                "name=x ports=1 health_tcp=0 health_delay=500ms health_interval=5s \
                 health_timeout=2m health_grace=7 health_failures=10 -- a"
            ),
            want
        );
        assert_eq!(
            check(
                r#"{"name":"x","cmd":"a","ports":1,"health":{"tcp":0,"delay":"500ms",
                   "interval":5,"timeout":"2m","grace":7,"failures":10}}"#
            ),
            want
        );
        let delay = check("name=x health_cmd=true health_delay=0 health_grace=0s -- a");
        assert_eq!((delay.delay_ms, delay.grace_ms), (0, 0));
        assert_eq!(
            check("name=x health_cmd=true health_failures=1000 -- a").failures,
            1000
        );
    }

    #[test]
    fn a_health_check_has_exactly_one_probe() {
        assert_eq!(
            kind("name=x ports=1 health_cmd=true health_tcp=0 -- a"),
            SpecErrorKind::TwoHealthProbes("health_cmd", "health_tcp")
        );
        assert_eq!(
            err("name=x ports=1 health_http=0 health_cmd=true -- a"),
            "line 1: a health check has one probe: give either health_http or health_cmd, not both"
        );
        assert_eq!(
            err(r#"{"name":"x","cmd":"a","ports":1,"health":{"tcp":0,"http":"0"}}"#),
            "line 1: a health check has one probe: give either \"tcp\" or \"http\", not both"
        );
        assert_eq!(
            kind("name=x health_cmd=a health_cmd=b -- a"),
            SpecErrorKind::DuplicateKey("health_cmd".into())
        );
    }

    #[test]
    fn health_timing_without_a_probe_is_an_error_naming_the_probe_keys() {
        assert_eq!(
            err("name=x health_interval=5s -- a"),
            "line 1: a health check needs a probe: add health_cmd=\"command\", \
             health_http=PORT_INDEX/path or health_tcp=PORT_INDEX \
             (JSON: \"cmd\", \"http\" or \"tcp\" in \"health\")"
        );
        assert_eq!(
            kind("name=x health_failures=2 -- a"),
            SpecErrorKind::MissingHealthProbe
        );
        assert_eq!(
            kind(r#"{"name":"x","cmd":"a","health":{}}"#),
            SpecErrorKind::MissingHealthProbe
        );
        assert_eq!(
            kind(r#"{"name":"x","cmd":"a","health":{"grace":"1s"}}"#),
            SpecErrorKind::MissingHealthProbe
        );
    }

    #[test]
    fn a_health_cmd_must_not_be_blank_or_hold_a_nul() {
        for line in [
            "name=x health_cmd= -- a",
            r#"name=x health_cmd="" -- a"#,
            r#"name=x health_cmd="  " -- a"#,
            r#"{"name":"x","cmd":"a","health":{"cmd":" \t"}}"#,
        ] {
            assert_eq!(kind(line), SpecErrorKind::EmptyHealthCmd, "{line}");
        }
        assert!(err("name=x health_cmd= -- a").contains("health_cmd=\"curl -fs localhost:$PORT0\""));
        assert_eq!(
            err(r#"{"name":"x","cmd":"a","health":{"cmd":"a\u0000b"}}"#),
            "line 1: the health check command must not contain a NUL character"
        );
        assert_eq!(
            kind("name=x health_cmd=a\0b -- a"),
            SpecErrorKind::ContainsNul("the health check command".into())
        );
    }

    #[test]
    fn a_health_http_must_be_a_port_index_then_a_printable_path() {
        let problem = |line: &str| match kind(line) {
            SpecErrorKind::InvalidHealthHttp { key, text, problem } => (key, text, problem),
            other => panic!("{line}: {other:?}"),
        };
        for bad in [
            "",
            "/healthz",
            "x/healthz",
            "-1/a",
            "+1",
            "65535/a",
            "99999999999/a",
        ] {
            let (key, text, problem) =
                problem(&format!(r#"name=x ports=1 health_http="{bad}" -- a"#));
            assert_eq!((key, text.as_str()), ("health_http", bad));
            assert!(problem.contains("port index"), "{bad}: {problem}");
        }
        for bad in ["0/a b", "0/a\tb", "0/é", "0/a\u{7f}", "0/\u{1b}[m"] {
            let (_, text, problem) =
                problem(&format!(r#"name=x ports=1 health_http="{bad}" -- a"#));
            assert_eq!(text, bad);
            assert!(problem.contains("printable ASCII"), "{bad}: {problem}");
        }
        assert_eq!(
            err(r#"name=x ports=1 health_http="0/a b" -- a"#),
            "line 1: invalid health_http \"0/a b\": the path may hold only printable ASCII, \
             without spaces or control characters; write PORT_INDEX/path, e.g. 0/healthz for \
             /healthz on $PORT0"
        );
        let (key, ..) = problem(r#"{"name":"x","cmd":"a","ports":1,"health":{"http":"0/a\nb"}}"#);
        assert_eq!(key, "health.http");
    }

    #[test]
    fn a_health_tcp_and_health_failures_must_be_whole_numbers_in_range() {
        for bad in ["", "x", "-1", "1.5", "+0", "65535"] {
            assert_eq!(
                kind(&format!(r#"name=x ports=1 health_tcp="{bad}" -- a"#)),
                SpecErrorKind::InvalidHealthTcp(bad.into())
            );
        }
        for bad in ["0", "1001", "-1", "2.0", "three", ""] {
            assert_eq!(
                kind(&format!(
                    r#"name=x health_cmd=true health_failures="{bad}" -- a"#
                )),
                SpecErrorKind::InvalidHealthFailures(bad.into())
            );
        }
        assert_eq!(
            err("name=x health_cmd=true health_failures=0 -- a"),
            "line 1: invalid health_failures \"0\": expected a whole number of consecutive \
             failures from 1 to 1000"
        );
    }

    #[test]
    fn a_health_check_port_index_must_be_one_of_the_tasks_ports() {
        assert_eq!(
            err("name=x ports=1 health_http=1/x -- a"),
            "line 1: health check port index 1, but the task asks for 1 port (indices start \
             at 0); give ports=2 or more, or a lower index"
        );
        assert_eq!(
            kind("name=x health_tcp=0 -- a"),
            SpecErrorKind::HealthPortIndex { index: 0, ports: 0 }
        );
        assert_eq!(
            err("name=x health_tcp=0 -- a"),
            "line 1: health check port index 0, but the task asks for no ports (indices start \
             at 0); give ports=1 or more"
        );
        assert!(err("name=x ports=2 health_tcp=5 -- a").contains("asks for 2 ports"));
        assert_eq!(
            kind(r#"{"name":"x","cmd":"a","health":{"http":"0/healthz"}}"#),
            SpecErrorKind::HealthPortIndex { index: 0, ports: 0 }
        );
        // A cmd check needs no port.
        assert!(parse_spec_line("name=x health_cmd=true -- a").is_ok());
    }

    #[test]
    fn health_interval_and_timeout_must_be_some_time_while_delay_and_grace_may_be_none() {
        for key in ["health_interval", "health_timeout"] {
            let e = parse_spec_line(&format!("name=x health_cmd=true {key}=0s -- a")).unwrap_err();
            assert!(
                matches!(e.kind, SpecErrorKind::InvalidDuration { key: k, problem: DurationError::Zero, .. } if k == key),
                "{e}"
            );
        }
        assert_eq!(
            err("name=x health_cmd=true health_timeout=0 -- a"),
            "line 1: invalid health_timeout \"0\": must be longer than 0"
        );
        assert_eq!(
            err(r#"{"name":"x","cmd":"a","health":{"cmd":"true","interval":0}}"#),
            "line 1: invalid health.interval \"0\": must be longer than 0"
        );
        assert!(matches!(
            kind("name=x health_cmd=true health_delay=soon -- a"),
            SpecErrorKind::InvalidDuration {
                key: "health_delay",
                problem: DurationError::Malformed,
                ..
            }
        ));
        assert!(matches!(
            kind(r#"{"name":"x","cmd":"a","health":{"cmd":"true","grace":"1.5ms"}}"#),
            SpecErrorKind::InvalidDuration {
                key: "health.grace",
                problem: DurationError::SubMillisecond,
                ..
            }
        ));
    }

    #[test]
    fn the_json_health_object_rejects_unknown_repeated_and_mistyped_fields() {
        assert_eq!(
            err(r#"{"name":"x","cmd":"a","health":{"cmd":"true","foo":1}}"#),
            "line 1: unknown health field \"foo\" (expected cmd, http, tcp, delay, interval, \
             timeout, grace, failures)"
        );
        assert_eq!(
            kind(r#"{"name":"x","cmd":"a","health":{"cmd":"true","cmd":"false"}}"#),
            SpecErrorKind::DuplicateField("health.cmd".into())
        );
        assert_eq!(
            kind(r#"{"name":"x","cmd":"a","health":{"cmd":"true"},"health":{"cmd":"true"}}"#),
            SpecErrorKind::DuplicateField("health".into())
        );
        let field = |line: &str| match kind(line) {
            SpecErrorKind::InvalidField { field, .. } => field,
            other => panic!("{line}: {other:?}"),
        };
        let health = |body: &str| {
            field(&format!(
                r#"{{"name":"x","cmd":"a","ports":1,"health":{body}}}"#
            ))
        };
        assert_eq!(health(r#""0/healthz""#), "health");
        assert_eq!(health("null"), "health");
        assert_eq!(health(r#"{"cmd":["true"]}"#), "health.cmd");
        assert_eq!(health(r#"{"http":0}"#), "health.http");
        assert_eq!(health(r#"{"tcp":"0"}"#), "health.tcp");
        assert_eq!(health(r#"{"tcp":0.5}"#), "health.tcp");
        assert_eq!(health(r#"{"tcp":70000}"#), "health.tcp");
        assert_eq!(health(r#"{"tcp":0,"delay":[]}"#), "health.delay");
        assert_eq!(health(r#"{"tcp":0,"failures":"3"}"#), "health.failures");
        assert_eq!(health(r#"{"tcp":0,"failures":0}"#), "health.failures");
        assert_eq!(health(r#"{"tcp":0,"failures":1001}"#), "health.failures");
        assert_eq!(
            err(r#"{"name":"x","cmd":"a","ports":1,"health":{"tcp":0,"failures":1.5}}"#),
            "line 1: field \"health.failures\" must be a whole number from 1 to 1000"
        );
    }

    #[test]
    fn specs_serialized_before_health_checks_still_deserialize() {
        let old = r#"{"name":"x","command":{"shell":"true"},"cpus":"0.1","mem":"32","disk":"0","ports":0,"env":{},"grace_ms":3000}"#;
        let s = serde_json::from_str::<TaskSpec>(old).unwrap();
        assert_eq!(s, spec("name=x -- true"));
        assert!(!serde_json::to_string(&s).unwrap().contains("health"));
        let with = spec("name=x ports=1 health_http=0/healthz health_failures=5 -- true");
        let json = serde_json::to_string(&with).unwrap();
        assert_eq!(serde_json::from_str::<TaskSpec>(&json).unwrap(), with);
    }

    #[test]
    fn to_line_writes_the_health_check_in_the_shell_form_with_only_non_default_timing() {
        let canonical = |line: &str| {
            let s = spec(line);
            let out = s.to_line();
            assert_eq!(parse_spec_line(&out).unwrap(), s, "{out}");
            out
        };
        assert_eq!(
            canonical(r#"health_cmd="curl -fs \"localhost:$PORT0\"" name=x -- ./serve"#),
            r#"name=x cpus=0.1 mem=32 health_cmd="curl -fs \"localhost:$PORT0\"" -- ./serve"#
        );
        assert_eq!(
            canonical("name=x ports=2 health_http=1 timeout=1h -- ./serve"),
            "name=x cpus=0.1 mem=32 ports=2 timeout=3600s health_http=1/ -- ./serve"
        );
        assert_eq!(
            canonical(
                "name=x ports=1 health_failures=4 health_grace=10s health_timeout=1500ms \
                 health_interval=10 health_delay=1m health_tcp=0 -- ./serve"
            ),
            "name=x cpus=0.1 mem=32 ports=1 health_tcp=0 health_delay=60s \
             health_timeout=1500ms health_failures=4 -- ./serve"
        );
    }

    #[test]
    fn to_line_writes_the_health_object_in_the_json_form_with_only_non_default_timing() {
        let s = spec(
            r#"{"name":"x","argv":["./serve"],"ports":1,"health":{"grace":0,"http":"0/healthz","failures":3}}"#,
        );
        assert_eq!(
            s.to_line(),
            r#"{"name":"x","argv":["./serve"],"cpus":0.1,"mem":32,"ports":1,"health":{"http":"0/healthz","grace":"0s"}}"#
        );
        assert_eq!(parse_spec_line(&s.to_line()).unwrap(), s);
        let tcp = spec(r#"{"name":"x","argv":["a"],"ports":1,"health":{"tcp":0,"interval":2.5}}"#);
        assert_eq!(
            tcp.to_line(),
            r#"{"name":"x","argv":["a"],"cpus":0.1,"mem":32,"ports":1,"health":{"tcp":0,"interval":"2500ms"}}"#
        );
        assert_eq!(parse_spec_line(&tcp.to_line()).unwrap(), tcp);
    }

    #[test]
    fn to_line_writes_json_for_a_health_cmd_with_a_line_break() {
        for cmd in [r"test -f a\ntest -f b", r"true\r"] {
            let s = spec(&format!(
                r#"{{"name":"x","cmd":"./serve","health":{{"cmd":"{cmd}","delay":"1s"}}}}"#
            ));
            let line = s.to_line();
            assert!(!line.contains(['\n', '\r']), "{line}");
            assert_eq!(
                line,
                format!(
                    r#"{{"name":"x","cmd":"./serve","cpus":0.1,"mem":32,"health":{{"cmd":"{cmd}","delay":"1s"}}}}"#
                )
            );
            assert_eq!(parse_specs(&line).unwrap(), vec![s]);
        }
    }

    // --- writes ---

    #[test]
    fn a_write_skips_blank_lines_and_comments() {
        let specs = parse_specs(
            "# web tier\n\nname=web -- ./serve\r\n   \n  # more\n{\"name\":\"db\",\"argv\":[\"db\"]}\n",
        )
        .unwrap();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "db"]);
        assert_eq!(specs[0].command, TaskCommand::Shell("./serve".into()));
    }

    #[test]
    fn a_write_errors_name_the_line() {
        assert_eq!(
            parse_specs("# c\nname=a -- x\nname=b cpu=1 -- y")
                .unwrap_err()
                .to_string(),
            "line 3: unknown key \"cpu\" (expected name, cpus, mem, disk, ports, env, grace, timeout, \
             health_cmd, health_http, health_tcp, health_delay, health_interval, health_timeout, \
             health_grace, health_failures)"
        );
    }

    #[test]
    fn a_write_may_not_repeat_a_task_name() {
        let e = parse_specs("name=web -- a\nname=db -- b\nname=web -- c").unwrap_err();
        assert_eq!(e.to_string(), "line 3: duplicate task name \"web\"");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn a_write_without_specs_is_an_error() {
        for text in ["", "\n\n", "# only a comment\n  \n"] {
            let e = parse_specs(text).unwrap_err();
            assert_eq!(e.kind, SpecErrorKind::NoSpecs);
            assert!(!e.to_string().starts_with("line"));
        }
    }

    #[test]
    fn validate_name_is_usable_for_framework_names() {
        assert_eq!(validate_name("spark-1.x_y"), Ok(()));
        assert_eq!(validate_name("-x"), Err(NameError::BadStart('-')));
        assert_eq!(validate_name("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(validate_name("é"), Err(NameError::BadStart('é')));
    }

    // --- the spec itself ---

    #[test]
    fn resources_are_the_spec_scalars_without_ports() {
        let s = spec("name=x cpus=0.5 mem=64 disk=10 ports=3 -- true");
        assert_eq!(s.resources().to_string(), "cpus:0.5;disk:10;mem:64");
        assert_eq!(
            spec("name=x -- true").resources().to_string(),
            "cpus:0.1;mem:32"
        );
    }

    #[test]
    fn to_line_writes_the_canonical_shell_form() {
        let s = spec(r#"grace=5000ms  mem=64 env="B=x y" name=web env=A=1 -- ./serve"#);
        assert_eq!(
            s.to_line(),
            r#"name=web cpus=0.1 mem=64 env=A=1 env="B=x y" grace=5s -- ./serve"#
        );
    }

    #[test]
    fn to_line_writes_json_when_the_shell_form_cannot_carry_the_spec() {
        let argv = spec(r#"{"name":"x","argv":["a","b c"],"cpus":"0.25","grace":0.5}"#);
        assert_eq!(
            argv.to_line(),
            r#"{"name":"x","argv":["a","b c"],"cpus":0.25,"mem":32,"grace":"500ms"}"#
        );
        let multi = spec(r#"{"name":"x","cmd":"echo a\necho b"}"#);
        assert!(multi.to_line().starts_with('{'));
        assert_eq!(parse_specs(&multi.to_line()).unwrap(), vec![multi]);
    }

    #[test]
    fn specs_travel_as_json_through_serde() {
        let s = spec("name=x cpus=0.1 env=A=b -- echo hi");
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""cpus":"0.1""#), "{json}");
        assert!(json.contains(r#""command":{"shell":"echo hi"}"#), "{json}");
        assert_eq!(serde_json::from_str::<TaskSpec>(&json).unwrap(), s);
    }

    // --- properties ---

    fn arb_text() -> impl Strategy<Value = String> {
        // Quotes, backslashes, separators, '=' and odd whitespace are where quoting can go wrong.
        prop::collection::vec(
            prop_oneof![
                4 => prop::sample::select(vec![
                    "a", "Z", "0", " ", "  ", "\t", "\"", "\\", "=", "--", " -- ", "#", "{", "}",
                    "\n", "\r", "é", "\u{3000}", "'", "$", ";",
                ]).prop_map(String::from),
                1 => "[^\u{0}]{0,3}",
            ],
            0..8,
        )
        .prop_map(|v| v.concat())
    }

    fn arb_spec() -> impl Strategy<Value = TaskSpec> {
        let command = prop_oneof![
            arb_text()
                .prop_filter("non-empty", |c| !c.trim().is_empty())
                .prop_map(TaskCommand::Shell),
            (
                arb_text().prop_filter("program", |p| !p.is_empty()),
                prop::collection::vec(arb_text(), 0..3)
            )
                .prop_map(|(p, rest)| TaskCommand::Argv(std::iter::once(p).chain(rest).collect())),
        ];
        let scalar =
            |min: i64| prop_oneof![min..10_000_000i64, min..=i64::MAX].prop_map(Scalar::from_milli);
        (
            "[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
            command,
            scalar(1),
            scalar(1),
            scalar(0),
            prop_oneof![Just(0u32), 0..=MAX_PORTS],
            prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,5}", arb_text(), 0..4),
            prop_oneof![
                Just(DEFAULT_GRACE_MS),
                any::<u64>(),
                (0u64..1000).prop_map(|s| s * 1000)
            ],
            prop_oneof![Just(None), (1u64..).prop_map(Some)],
            prop_oneof![Just(None), arb_health().prop_map(Some)],
        )
            .prop_map(
                |(
                    name,
                    command,
                    cpus,
                    mem,
                    disk,
                    mut ports,
                    env,
                    grace_ms,
                    timeout_ms,
                    mut health,
                )| {
                    // A port check needs its port: take the index modulo the ports, or ask for it.
                    if let Some(Probe::Http { port_index, .. } | Probe::Tcp { port_index }) =
                        health.as_mut().map(|h| &mut h.probe)
                    {
                        match ports {
                            0 => ports = *port_index + 1,
                            n => *port_index %= n,
                        }
                    }
                    TaskSpec {
                        name,
                        command,
                        cpus,
                        mem,
                        disk,
                        ports,
                        env,
                        grace_ms,
                        timeout_ms,
                        health,
                    }
                },
            )
    }

    fn arb_health() -> impl Strategy<Value = HealthCheck> {
        let probe = prop_oneof![
            arb_text()
                .prop_filter("non-blank", |c| !c.trim().is_empty())
                .prop_map(Probe::Cmd),
            (0..MAX_PORTS, "/[!-~]{0,12}")
                .prop_map(|(port_index, path)| Probe::Http { port_index, path }),
            (0..MAX_PORTS).prop_map(|port_index| Probe::Tcp { port_index }),
        ];
        let duration = |default: u64, min: u64| {
            prop_oneof![
                Just(default),
                min..=u64::MAX,
                (min..1000).prop_map(|s| s * 1000)
            ]
        };
        (
            probe,
            duration(health::DEFAULT_DELAY_MS, 0),
            duration(health::DEFAULT_INTERVAL_MS, 1),
            duration(health::DEFAULT_TIMEOUT_MS, 1),
            duration(health::DEFAULT_GRACE_MS, 0),
            prop_oneof![Just(health::DEFAULT_FAILURES), 1..=MAX_HEALTH_FAILURES],
        )
            .prop_map(
                |(probe, delay_ms, interval_ms, timeout_ms, grace_ms, failures)| HealthCheck {
                    probe,
                    delay_ms,
                    interval_ms,
                    timeout_ms,
                    grace_ms,
                    failures,
                },
            )
    }

    proptest! {
        #[test]
        fn prop_to_line_parses_back_to_the_same_spec(s in arb_spec()) {
            let line = s.to_line();
            prop_assert!(!line.contains('\n'), "{}", line);
            prop_assert_eq!(parse_spec_line(&line).map_err(|e| format!("{line}: {e}")), Ok(s.clone()));
            prop_assert_eq!(parse_specs(&line).map_err(|e| e.to_string()), Ok(vec![s]));
        }

        #[test]
        fn prop_arbitrary_lines_never_panic(line in ".*") {
            let _ = parse_spec_line(&line);
            let _ = parse_specs(&line);
        }

        #[test]
        fn prop_spec_like_lines_never_panic(
            words in prop::collection::vec(
                prop_oneof![
                    Just("name=x".to_string()), Just("--".to_string()), Just("env=".to_string()),
                    "(cpus|mem|disk|ports|grace)=[0-9.eE+-]{0,6}(ms|s|m|h)?",
                    "health_(cmd|http|tcp|delay|interval|timeout|grace|failures)=[0-9a-z/. -]{0,6}",
                    arb_text(),
                ],
                0..8,
            )
        ) {
            let line = words.join(" ");
            let _ = parse_spec_line(&line);
        }

        #[test]
        fn prop_json_like_lines_never_panic(
            fields in prop::collection::vec(
                (
                    prop::sample::select(vec!["name", "cmd", "argv", "cpus", "mem", "disk", "ports", "env", "grace", "health", "x"]),
                    prop_oneof![
                        "-?[0-9]{1,4}(\\.[0-9]{0,5})?([eE][+-]?[0-9]{1,4})?",
                        "\"[a-z0-9.]{0,6}\"",
                        Just("[\"a\"]".to_string()), Just("{\"A\":\"b\"}".to_string()),
                        "\\{\"(cmd|http|tcp|delay|interval|timeout|grace|failures|x)\":(\"[0-9a-z/. ]{0,5}\"|[0-9.-]{1,4})\\}",
                        Just("null".to_string()), Just("true".to_string()),
                    ],
                ),
                0..6,
            )
        ) {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let _ = parse_spec_line(&format!("{{{}}}", body.join(",")));
        }
    }
}
