//! Fuzz targets, run as property tests in CI: whatever bytes arrive, the parsers and decoders
//! of everything a peer sends (task specs, resources, ACLs, the gRPC messages, the commands
//! and Raft messages inside them) return an error or a value and never panic, and a command
//! that decodes applies to the state and to a mount's copy of it without panicking.

use mesofs_kernel::acls::Acls;
use mesofs_kernel::proto::{AgentMessage, RaftPayload, ReadRequest, WatchEvent, WriteRequest};
use mesofs_kernel::raft::TypeConfig;
use mesofs_kernel::resources::Resources;
use mesofs_kernel::spec::{parse_spec_line, parse_specs};
use mesofs_kernel::state::{
    AgentInfo, AgentState, ClusterState, Command, NewTask, TaskState, Transition,
};
use mesofs_kernel::watch::{LeaderEvent, StateEvent, View};
use proptest::prelude::*;

/// Valid commands of a small cluster's life, as the JSON the log holds.
fn seeds() -> Vec<String> {
    let spec = parse_spec_line("name=t cpus=0.5 mem=64 ports=1 -- sleep 9").unwrap();
    let commands = vec![
        Command::RegisterAgent {
            agent: AgentInfo {
                id: "a1".into(),
                hostname: "h".into(),
                address: "127.0.0.1:5051".into(),
                resources: Resources::parse("cpus:4;mem:1024;ports:[31000-31009]").unwrap(),
                state: AgentState::Active,
                registered_ms: 1,
                registration: 0,
                attributes: Default::default(),
            },
            running: vec!["f-1.t".into()],
        },
        Command::RegisterFramework {
            name: "f".into(),
            user: "root".into(),
            principal: Some("mount:m".into()),
            uid: 0,
            gid: 0,
            time_ms: 2,
        },
        Command::LaunchTasks {
            framework_id: "f-1".into(),
            agent_id: "a1".into(),
            role: "*".into(),
            tasks: vec![NewTask {
                resources: spec
                    .resources()
                    .add(&Resources::parse("ports:[31000-31000]").unwrap()),
                spec,
                ports: vec![31000],
            }],
            time_ms: 3,
        },
        Command::UpdateTask {
            task_id: "f-1.t".into(),
            transition: Transition {
                state: TaskState::Running,
                reason: String::new(),
                message: "up".into(),
                time_ms: 4,
                exit_code: None,
                signal: None,
            },
        },
        Command::KillTask {
            task_id: "f-1.t".into(),
            time_ms: 5,
        },
        Command::SetFrameworkRoles {
            framework_id: "f-1".into(),
            roles: vec!["eng/web".into(), "*".into()],
        },
        Command::ConfigureRole {
            role: "eng".into(),
            setting: mesofs_kernel::allocator::roles::RoleSetting::Limit(Some(
                Resources::parse("cpus:2").unwrap(),
            )),
        },
        Command::Reserve {
            agent_id: "a1".into(),
            resources: Resources::parse("cpus(eng):1;ports(eng):[31005-31006]").unwrap(),
        },
        Command::Unreserve {
            agent_id: "a1".into(),
            resources: Resources::parse("cpus(eng):1").unwrap(),
        },
    ];
    let mut seeds: Vec<String> = commands
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    seeds.push(serde_json::to_string(&Command::Batch(commands)).unwrap());
    seeds
}

/// A seed with some bytes replaced, inserted or removed.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let n = seeds().len();
    (
        0..n,
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8),
    )
        .prop_map(|(i, edits)| {
            let mut bytes = seeds()[i].clone().into_bytes();
            for (at, how, b) in edits {
                if bytes.is_empty() {
                    bytes.push(b);
                    continue;
                }
                let at = at.index(bytes.len());
                match how {
                    0 => bytes[at] = b,
                    1 => bytes.insert(at, b),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            bytes
        })
}

/// Applies every seed command, then `cmd`, to a state and to a view of it; the lookups the
/// state keeps as it applies are those it rebuilds when read back.
fn apply_after_seeds(cmd: &Command) {
    let mut state = ClusterState::default();
    let mut view = View::default();
    let all: Vec<Command> = seeds()
        .iter()
        .take(7)
        .map(|s| serde_json::from_str(s).unwrap())
        .chain([cmd.clone()])
        .collect();
    for (i, c) in all.into_iter().enumerate() {
        let index = i as u64 + 1;
        state.apply(index, &c);
        view.apply_state(StateEvent::Applied { index, command: c });
    }
    let back: ClusterState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    assert_eq!(
        back, state,
        "lookups kept as commands apply drifted from the state"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn specs_resources_and_acls_never_panic_on_any_text(text in "\\PC{0,300}") {
        let _ = parse_specs(&text);
        let _ = parse_specs(&format!("{{\"name\": \"t\", \"cmd\": {text}}}"));
        let _ = Resources::parse(&text);
        let _ = Resources::parse(&format!("cpus:{text};ports:[{text}]"));
        let _ = Acls::parse(&text);
    }

    #[test]
    fn grpc_messages_decode_any_bytes_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        use prost::Message;
        let _ = WriteRequest::decode(bytes.as_slice());
        let _ = AgentMessage::decode(bytes.as_slice());
        let _ = ReadRequest::decode(bytes.as_slice());
        let _ = RaftPayload::decode(bytes.as_slice());
        let _ = WatchEvent::decode(bytes.as_slice());
    }

    #[test]
    fn raft_messages_decode_any_bytes_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&bytes);
        let _ = serde_json::from_slice::<openraft::raft::VoteRequest<u64>>(&bytes);
        let _ = serde_json::from_slice::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(&bytes);
        let _ = serde_json::from_slice::<LeaderEvent>(&bytes);
        let _ = serde_json::from_slice::<StateEvent>(&bytes);
    }

    #[test]
    fn a_mangled_command_is_refused_or_applies_without_panicking(bytes in mutated()) {
        if let Ok(cmd) = serde_json::from_slice::<Command>(&bytes) {
            apply_after_seeds(&cmd);
        }
    }
}

#[test]
fn every_seed_command_decodes_and_applies() {
    for s in seeds() {
        let cmd: Command = serde_json::from_str(&s).unwrap();
        apply_after_seeds(&cmd);
    }
}
