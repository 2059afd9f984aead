//! What a hostile mount sends past the limits is refused with an error and leaves the master
//! as it was: a request larger than the master decodes, a write with an oversized field, a
//! client id another mount uses, and a write too large for one command through the mount.

use mesofs_kernel::proto::{write_request::Op, Launch, RegisterFramework, WriteRequest};
use mesofs_kernel::tls::TlsFiles;
use mesofs_tests::probe;
use mesofs_tests::{can_run, Cluster, Mounted};

#[test]
fn oversized_and_forged_writes_are_refused_and_change_nothing() {
    if !can_run() {
        return;
    }
    let c = Cluster::start(&[]);
    let hostile = TlsFiles::load(&c.ca.issue("mount", "hostile", &[])).unwrap();
    let other = TlsFiles::load(&c.ca.issue("mount", "other", &[])).unwrap();
    let master = c.master_addr.clone();
    c.sh_ok("mkdir frameworks/mine");
    let before = c.sh_ok("ls frameworks");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let send = |req: WriteRequest| probe::send_write(&master, hostile.client(), req);
        let launch = |text: String| WriteRequest {
            uid: 0,
            gid: 0,
            user: "root".into(),
            op: Some(Op::Launch(Launch {
                framework: "mine".into(),
                offer_id: "1-1".into(),
                text,
            })),
            ..WriteRequest::default()
        };

        // Larger than a master decodes: refused before it is read whole.
        let said = send(launch("x".repeat(9 << 20))).await;
        assert!(
            said.starts_with("OutOfRange") || said.contains("message length too large"),
            "{said}"
        );
        // Within what the master decodes, but longer than a write's text may be.
        let said = send(launch("x".repeat(2 << 20))).await;
        assert!(
            said.starts_with("errno 22") && said.contains("at most 1048576"),
            "{said}"
        );
        let said = send(WriteRequest {
            client: "c".repeat(200),
            seq: 1,
            ..launch("name=t -- true".into())
        })
        .await;
        assert!(
            said.starts_with("errno 22") && said.contains("client id"),
            "{said}"
        );
        // Two mounts that use the same client id and write number: without each principal's
        // client ids being its own, the second write would be answered as a retry of the
        // first and never applied.
        let register = |name: &str| WriteRequest {
            client: "same".into(),
            seq: 1,
            done_below: 1,
            uid: 0,
            gid: 0,
            user: "root".into(),
            op: Some(Op::RegisterFramework(RegisterFramework {
                name: name.into(),
                user: "root".into(),
            })),
        };
        let said = send(register("first")).await;
        assert!(said.starts_with("errno 0"), "{said}");
        let said = probe::send_write(&master, other.client(), register("second")).await;
        assert!(said.starts_with("errno 0"), "{said}");
    });
    assert_eq!(c.read("frameworks/first/principal"), "mount:hostile");
    assert_eq!(
        c.read("frameworks/second/principal"),
        "mount:other",
        "the second mount's write was applied, not taken for the first's"
    );
    c.sh_ok("rmdir frameworks/first frameworks/second");
    assert_eq!(c.sh_ok("ls frameworks"), before);

    // Through the mount: one write(2) larger than a command may be is refused with EFBIG.
    let o = c
        .sh_ok("cat frameworks/mine/offers/next")
        .trim()
        .to_string();
    let out = c.sh(&format!(
        "head -c 2000000 /dev/zero | tr '\\0' x | dd bs=2000000 count=1 iflag=fullblock status=none of=frameworks/mine/offers/{o}/launch"
    ));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("File too large"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the master still answers: a launch through the mount runs.
    let o = c
        .sh_ok("cat frameworks/mine/offers/next")
        .trim()
        .to_string();
    c.sh_ok(&format!(
        "echo 'name=ok -- true' > frameworks/mine/offers/{o}/launch"
    ));
    assert_eq!(
        c.sh_ok("cat frameworks/mine/tasks/ok/wait").trim(),
        "TASK_FINISHED"
    );
}
