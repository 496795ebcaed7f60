//! The Admin and Agent services end to end, over real gRPC on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use gateway_proto::v1::{self, watch_response::Update};
use gateway_proto::{apply_delta, view_from_wire};
use policy_compiler::{Host, compile, parse, to_kernel};
use tonic::Code;

fn apply_req(text: &str, dry_run: bool, expected: Option<u64>) -> v1::ApplyPolicyRequest {
    v1::ApplyPolicyRequest {
        policy_toml: text.into(),
        file_name: "demo.toml".into(),
        dry_run,
        expected_revision: expected,
        skip_tests: false,
    }
}

/// Appends a grant at the end (rule ids of earlier grants stay): alice gets the db.
fn demo_plus_db_grant() -> String {
    format!(
        "{}\n[[allow]]\nname = \"engineering-db\"\nprincipals = [\"engineering\"]\nresources = [\"db\"]\n",
        DEMO.split("# ---------------------------------------------------------------- tests")
            .next()
            .unwrap()
    )
}

#[tokio::test]
async fn apply_plan_and_dry_run() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;

    let dry = admin
        .apply_policy(apply_req(DEMO, true, None))
        .await
        .unwrap()
        .into_inner();
    assert!(!dry.applied);
    let plan = dry.plan.unwrap();
    assert_eq!((plan.base_revision, plan.new_revision), (0, 1));
    assert!(
        plan.objects
            .iter()
            .all(|o| o.change == v1::ChangeKind::Added as i32)
    );
    assert_eq!(
        plan.objects.len(),
        // network, connector, resources, users, devices, groups, grants, tests
        1 + 1 + 4 + 2 + 2 + 2 + 4 + 11,
        "every object listed"
    );
    let hosts: Vec<&str> = plan.hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(
        hosts,
        [
            "connector:demo-connector",
            "device:alice-laptop",
            "device:bob-laptop"
        ]
    );
    assert!(
        plan.hosts
            .iter()
            .all(|h| h.new_generation == 1 && h.total.unwrap().added > 0)
    );
    // Nothing changed.
    let cur = admin
        .get_policy(v1::GetPolicyRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((cur.revision, cur.policy_toml.as_str()), (0, ""));
    assert!(ctl.state.generations().is_empty());

    let applied = admin
        .apply_policy(apply_req(DEMO, false, Some(0)))
        .await
        .unwrap()
        .into_inner();
    assert!(applied.applied);
    assert_eq!(applied.plan.unwrap().new_revision, 1);
    assert_eq!(
        ctl.state
            .generations()
            .values()
            .copied()
            .collect::<Vec<_>>(),
        [1, 1, 1]
    );

    // The same policy again: no object, no host changes, same revision.
    let again = apply(&mut admin, DEMO).await;
    assert!(again.objects.is_empty() && again.hosts.is_empty());
    assert_eq!(again.new_revision, 1);

    // Stale expected revision.
    let e = admin
        .apply_policy(apply_req(DEMO, false, Some(0)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("revision 1"), "{}", e.message());

    // A change that affects alice and the connector, not bob.
    let plan = admin
        .apply_policy(apply_req(&demo_plus_db_grant(), true, Some(1)))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    let hosts: Vec<(&str, u64, u64)> = plan
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), h.base_generation, h.new_generation))
        .collect();
    assert_eq!(
        hosts,
        [
            ("connector:demo-connector", 1, 2),
            ("device:alice-laptop", 1, 2)
        ]
    );
    assert!(
        plan.objects
            .iter()
            .any(|o| o.name == "engineering-db" && o.change == v1::ChangeKind::Added as i32)
    );

    // Invalid: located error in the caller's file, nothing changes.
    let bad = DEMO.replace("address = \"198.18.1.10\"", "address = \"198.18.1.300\"");
    let e = admin
        .apply_policy(apply_req(&bad, false, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let line = DEMO
        .lines()
        .position(|l| l.contains("198.18.1.10\""))
        .unwrap()
        + 1;
    assert!(
        e.message().starts_with(&format!("demo.toml:{line}:")),
        "{}",
        e.message()
    );
    assert_eq!(
        admin
            .get_policy(v1::GetPolicyRequest::default())
            .await
            .unwrap()
            .into_inner()
            .revision,
        1
    );
    ctl.stop().await;
}

#[tokio::test]
async fn crud_not_found_invalid_argument() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, DEMO).await;
    let before = admin
        .get_policy(v1::GetPolicyRequest::default())
        .await
        .unwrap()
        .into_inner();

    // Get / list.
    let web = admin
        .get_object(v1::GetObjectRequest {
            kind: v1::ObjectKind::Resource as i32,
            name: "web".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .object
        .unwrap();
    assert!(
        web.toml.starts_with("[[resource]]\n") && web.toml.contains("address = \"198.18.1.5\"")
    );
    let users = admin
        .list_objects(v1::ListObjectsRequest {
            kind: v1::ObjectKind::User as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = users.objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["alice@example.com", "bob@example.com"]);

    // NOT_FOUND.
    for e in [
        admin
            .get_object(v1::GetObjectRequest {
                kind: v1::ObjectKind::Device as i32,
                name: "nope".into(),
            })
            .await
            .unwrap_err(),
        admin
            .delete_object(v1::DeleteObjectRequest {
                kind: v1::ObjectKind::Group as i32,
                name: "nope".into(),
                expected_revision: None,
                dry_run: false,
                skip_tests: false,
            })
            .await
            .unwrap_err(),
        admin
            .update_object(v1::UpdateObjectRequest {
                object: Some(v1::PolicyObject {
                    kind: v1::ObjectKind::Resource as i32,
                    name: "nope".into(),
                    toml: "name = \"nope\"\nnetwork = \"corp\"\naddress = \"198.18.1.7\"\n".into(),
                }),
                expected_revision: None,
                dry_run: false,
                skip_tests: false,
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }

    // INVALID_ARGUMENT, located in the object's own text; nothing changes.
    let e = admin
        .create_object(v1::CreateObjectRequest {
            object: Some(v1::PolicyObject {
                kind: v1::ObjectKind::Resource as i32,
                name: "ssh".into(),
                toml:
                    "name = \"ssh\"\nnetwork = \"nowhere\"\naddress = \"198.18.1.22\"\ntcp = [22]\n"
                        .into(),
            }),
            expected_revision: None,
            dry_run: false,
            skip_tests: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("resource:ssh:2:11: error:"),
        "{}",
        e.message()
    );
    assert!(e.message().contains("nowhere"), "{}", e.message());
    // Deleting a resource a grant uses: who uses it, located in objects; nothing changes.
    let e = admin
        .delete_object(v1::DeleteObjectRequest {
            kind: v1::ObjectKind::Resource as i32,
            name: "web".into(),
            expected_revision: None,
            dry_run: false,
            skip_tests: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("resource web is used by grant ")
            && e.message().contains("change or delete those first")
            && !e.message().contains("policy.toml:"),
        "{}",
        e.message()
    );
    // Already exists.
    let e = admin
        .create_object(v1::CreateObjectRequest {
            object: Some(web.clone()),
            expected_revision: None,
            dry_run: false,
            skip_tests: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let after = admin
        .get_policy(v1::GetPolicyRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (after.revision, &after.policy_toml),
        (before.revision, &before.policy_toml)
    );

    // Create, update, delete.
    let ssh = v1::PolicyObject {
        kind: v1::ObjectKind::Resource as i32,
        name: "ssh".into(),
        toml: "name = \"ssh\"\nnetwork = \"corp\"\naddress = \"198.18.1.22\"\ntcp = [22]\n".into(),
    };
    let plan = admin
        .create_object(v1::CreateObjectRequest {
            object: Some(ssh.clone()),
            expected_revision: Some(1),
            dry_run: false,
            skip_tests: false,
        })
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert_eq!(plan.new_revision, 2);
    assert_eq!(plan.objects.len(), 1);
    let grant = v1::PolicyObject {
        kind: v1::ObjectKind::Grant as i32,
        name: "eng-ssh".into(),
        toml:
            "[[allow]]\nname = \"eng-ssh\"\nprincipals = [\"engineering\"]\nresources = [\"ssh\"]\n"
                .into(),
    };
    let plan = admin
        .create_object(v1::CreateObjectRequest {
            object: Some(grant),
            expected_revision: None,
            dry_run: false,
            skip_tests: false,
        })
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert!(plan.hosts.iter().any(|h| h.host == "device:alice-laptop"));
    assert!(!plan.hosts.iter().any(|h| h.host == "device:bob-laptop"));
    let ex = admin
        .explain(v1::ExplainRequest {
            from: "alice-laptop".into(),
            to: "198.18.1.22:22/tcp".into(),
            at: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ex.verdict, v1::Verdict::Allow as i32, "{}", ex.text);
    assert_eq!(ex.reason, "granted");
    let mut updated = ssh.clone();
    updated.toml = updated.toml.replace("tcp = [22]", "tcp = [2222]");
    admin
        .update_object(v1::UpdateObjectRequest {
            object: Some(updated),
            expected_revision: None,
            dry_run: false,
            skip_tests: false,
        })
        .await
        .unwrap();
    let t = admin
        .test_access(v1::TestAccessRequest {
            assertions: vec![
                v1::Assertion {
                    name: "new port".into(),
                    from: "alice-laptop".into(),
                    to: "198.18.1.22:2222/tcp".into(),
                    expect: "allow".into(),
                    at: None,
                },
                v1::Assertion {
                    name: "old port".into(),
                    from: "alice-laptop".into(),
                    to: "198.18.1.22:22/tcp".into(),
                    expect: "allow".into(),
                    at: None,
                },
            ],
            include_policy_tests: true,
        })
        .await
        .unwrap()
        .into_inner();
    // The policy's 11 tests and the new port pass; the old port fails.
    assert_eq!((t.passed, t.failed), (12, 1), "{:?}", t.results);
    assert!(
        !t.results
            .iter()
            .find(|r| r.name == "old port")
            .unwrap()
            .passed
    );
    admin
        .delete_object(v1::DeleteObjectRequest {
            kind: v1::ObjectKind::Grant as i32,
            name: "eng-ssh".into(),
            expected_revision: None,
            dry_run: false,
            skip_tests: false,
        })
        .await
        .unwrap();
    // Audit trail: apply, create, create, update, delete (failed attempts leave nothing),
    // after the creation of the test's admin key.
    let mut audit = admin
        .audit_report(v1::AuditReportRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(audit[0].action, "create_api_key");
    audit.remove(0);
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.target.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("apply_policy", "policy"),
            ("create_object", "resource:ssh"),
            ("create_object", "grant:eng-ssh"),
            ("update_object", "resource:ssh"),
            ("delete_object", "grant:eng-ssh"),
        ]
    );
    assert!(audit.iter().all(|a| a.actor.starts_with("key:test-admin-")));
    assert!(audit[3].before.contains("tcp = [22]") && audit[3].after.contains("tcp = [2222]"));
    ctl.stop().await;
}

#[tokio::test]
async fn enroll_watch_fanout_only_affected_hosts() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, DEMO).await;
    let mut streams = Vec::new();
    let mut views = Vec::new();
    // Enrolling a device registers its WireGuard key, which changes the views of the
    // connectors it may reach: every agent is enrolled before any watches, and
    // generations are counted from each one's snapshot.
    let mut auths = Vec::new();
    for host in [
        "connector:demo-connector",
        "device:alice-laptop",
        "device:bob-laptop",
    ] {
        auths.push((host, enroll(&ctl, host).await));
    }
    let mut gens = Vec::new();
    for (host, auth) in auths {
        let (s, view, generation) = watch_snapshot(&ctl, &auth).await;
        views.push(view);
        gens.push(generation);
        streams.push((host, auth, s));
    }
    // Bad credentials and tokens.
    let mut agent = ctl.agent().await;
    let e = agent
        .watch(v1::WatchRequest {
            auth: Some(v1::AgentAuth {
                agent_id: streams[0].1.agent_id.clone(),
                credential: "wrong".into(),
            }),
            generation: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = agent
        .enroll(v1::EnrollRequest {
            token: "zt-enroll-nope".into(),
            hostname: String::new(),
            public_key: common::wg_key(),
            host: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = agent
        .ack(v1::AckRequest {
            auth: Some(streams[2].1.clone()),
            generation: 7,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    apply(&mut admin, &demo_plus_db_grant()).await;
    let text = admin
        .get_policy(v1::GetPolicyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .policy_toml;
    let policy = parse(&text, "p", now()).unwrap().policy;
    for (i, (host, auth, s)) in streams.iter_mut().enumerate() {
        if *host == "device:bob-laptop" {
            assert!(next(s, 1).await.is_none(), "bob's agent gets nothing");
            continue;
        }
        let m = next(s, 5).await.expect("delta");
        assert_eq!((m.generation, m.base_generation), (gens[i] + 1, gens[i]));
        let Some(Update::Delta(d)) = m.update else {
            panic!("delta expected")
        };
        apply_delta(&mut views[i], &d).unwrap();
        let h = gateway_proto::parse_host(host).unwrap();
        let fresh = compile(&policy, &h, now()).unwrap();
        assert_eq!(
            to_kernel(&views[i], 0, |t| t as u64),
            to_kernel(&fresh, 0, |t| t as u64)
        );
        agent
            .ack(v1::AckRequest {
                auth: Some(auth.clone()),
                generation: gens[i] + 1,
            })
            .await
            .unwrap();
    }
    let agents = admin
        .list_agents(v1::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 3);
    for a in &agents {
        assert!(a.connected, "{a:?}");
        let g = gens[streams.iter().position(|s| s.0 == a.host).unwrap()];
        let expect = if a.host == "device:bob-laptop" {
            (0, g)
        } else {
            (g + 1, g + 1)
        };
        assert_eq!((a.acked_generation, a.current_generation), expect, "{a:?}");
    }
    ctl.stop().await;
}

#[tokio::test]
async fn resume_after_missed_changes_converges() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, DEMO).await;
    let auth = enroll(&ctl, "connector:demo-connector").await;
    let mut agent = ctl.agent().await;
    let mut s = open_watch(&mut agent, &auth, 0).await;
    let m = next(&mut s, 5).await.unwrap();
    let Some(Update::Snapshot(v)) = m.update else {
        panic!()
    };
    let mut view = view_from_wire(&v).unwrap();
    let have = m.generation;
    drop(s);

    // Three changes while disconnected.
    let base = demo_plus_db_grant();
    let v2 = base.clone();
    let v3 = base.replace("tcp = [\"443\"]", "tcp = [\"443\", \"8443\"]");
    let v4 = v3.replace(
        "members = [\"bob@example.com\"]",
        "members = [\"bob@example.com\", \"alice@example.com\"]",
    );
    for p in [&v2, &v3, &v4] {
        apply(&mut admin, p).await;
    }
    let gen_now = ctl.state.generations()["connector:demo-connector"];
    assert_eq!(gen_now, have + 3);

    // Resume from the old generation: deltas only, then converged.
    let mut s = open_watch(&mut agent, &auth, have).await;
    let mut g = have;
    while g < gen_now {
        let m = next(&mut s, 5).await.expect("missed delta");
        assert_eq!(m.base_generation, g, "contiguous deltas");
        let Some(Update::Delta(d)) = m.update else {
            panic!("delta expected on resume")
        };
        apply_delta(&mut view, &d).unwrap();
        g = m.generation;
    }
    let policy = parse(&v4, "p", now()).unwrap().policy;
    let fresh = compile(&policy, &Host::Connector("demo-connector".into()), now()).unwrap();
    assert_eq!(
        to_kernel(&view, 1, |t| t as u64),
        to_kernel(&fresh, 1, |t| t as u64)
    );
    assert!(gateway_proto::same_meta(&view, &fresh));
    assert!(next(&mut s, 1).await.is_none(), "nothing more");
    drop(s);

    // Already current: nothing is sent. Unknown or zero generation: a snapshot.
    let mut s = open_watch(&mut agent, &auth, gen_now).await;
    assert!(next(&mut s, 1).await.is_none());
    for have in [0, 999] {
        let mut s = open_watch(&mut agent, &auth, have).await;
        let m = next(&mut s, 5).await.unwrap();
        assert_eq!((m.generation, m.base_generation), (gen_now, 0));
        let Some(Update::Snapshot(v)) = m.update else {
            panic!()
        };
        assert_eq!(
            to_kernel(&view_from_wire(&v).unwrap(), 1, |t| t as u64),
            to_kernel(&fresh, 1, |t| t as u64)
        );
    }
    ctl.stop().await;
}

fn event(
    ts: &str,
    ev: &str,
    verdict: &str,
    user: &str,
    device: &str,
    resource: &str,
) -> v1::ConnectionEvent {
    v1::ConnectionEvent {
        timestamp: ts.into(),
        event: ev.into(),
        verdict: verdict.into(),
        reason: if verdict == "allow" {
            "granted".into()
        } else {
            "no_grant".into()
        },
        user: Some(user.into()),
        device: Some(device.into()),
        src_ip: Some("198.19.1.10".into()),
        src_port: Some(40000),
        resource: Some(resource.into()),
        dst_ip: Some("198.18.1.5".into()),
        protocol: Some("tcp".into()),
        dst_port: Some(443),
        connector: Some("demo-connector".into()),
        remote_network: Some("corp".into()),
        rule_id: 1,
        host: "connector:demo-connector".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn events_reported_then_queried_and_followed() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, DEMO).await;
    let auth = enroll(&ctl, "connector:demo-connector").await;
    let mut follow = admin
        .follow_events(v1::FollowEventsRequest {
            filter: Some(v1::EventFilter {
                verdict: Some("deny".into()),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let evs = [
        event(
            "2026-01-01T10:00:00.000Z",
            "flow_start",
            "allow",
            "alice@example.com",
            "alice-laptop",
            "web",
        ),
        event(
            "2026-01-01T10:00:01.500Z",
            "flow_end",
            "allow",
            "alice@example.com",
            "alice-laptop",
            "web",
        ),
        event(
            "2026-01-01T10:05:00Z",
            "deny",
            "deny",
            "bob@example.com",
            "bob-laptop",
            "db",
        ),
        event(
            "2026-01-01T11:00:00.250Z",
            "deny",
            "deny",
            "bob@example.com",
            "bob-laptop",
            "web",
        ),
    ];
    let reqs = vec![
        v1::ReportEventsRequest {
            auth: Some(auth.clone()),
            events: evs[..2].to_vec(),
        },
        v1::ReportEventsRequest {
            auth: None,
            events: evs[2..].to_vec(),
        },
    ];
    let r = ctl
        .agent()
        .await
        .report_events(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 4);
    // Unauthenticated stream.
    let e = ctl
        .agent()
        .await
        .report_events(tokio_stream::iter(vec![v1::ReportEventsRequest {
            auth: None,
            events: evs[..1].to_vec(),
        }]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let q = |f: v1::EventFilter, limit: u32| {
        let mut admin = admin.clone();
        async move {
            admin
                .query_events(v1::QueryEventsRequest {
                    filter: Some(f),
                    limit,
                })
                .await
                .unwrap()
                .into_inner()
                .events
        }
    };
    assert_eq!(q(Default::default(), 0).await.len(), 4);
    let bob = q(
        v1::EventFilter {
            user: Some("bob@example.com".into()),
            ..Default::default()
        },
        0,
    )
    .await;
    assert_eq!(bob.len(), 2);
    let t0 = controller::parse_timestamp_ms("2026-01-01T10:00:01.500Z").unwrap();
    let range = q(
        v1::EventFilter {
            since_unix_ms: Some(t0),
            until_unix_ms: Some(t0 + 3_000_000),
            ..Default::default()
        },
        0,
    )
    .await;
    let times: Vec<i64> = range.iter().map(|e| e.time_unix_ms).collect();
    assert_eq!(times, [t0, t0 + 298_500]);
    let web_deny = q(
        v1::EventFilter {
            resource: Some("web".into()),
            verdict: Some("deny".into()),
            device: Some("bob-laptop".into()),
            ..Default::default()
        },
        0,
    )
    .await;
    assert_eq!(web_deny.len(), 1);
    assert_eq!(
        web_deny[0].event.as_ref().unwrap().timestamp,
        "2026-01-01T11:00:00.250Z"
    );
    assert_eq!(
        q(
            v1::EventFilter {
                event: Some("flow_end".into()),
                ..Default::default()
            },
            0
        )
        .await
        .len(),
        1
    );
    assert_eq!(q(Default::default(), 3).await.len(), 3);
    assert!(web_deny[0].agent_id == auth.agent_id);

    // The follower saw exactly the two denies.
    for want in ["db", "web"] {
        let e = tokio::time::timeout(Duration::from_secs(5), follow.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(e.event.unwrap().resource.as_deref(), Some(want));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), follow.message())
            .await
            .is_err()
    );
    ctl.stop().await;
}

#[tokio::test]
async fn restart_loses_nothing() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, DEMO).await;
    apply(&mut admin, &demo_plus_db_grant()).await;
    let auth = enroll(&ctl, "device:alice-laptop").await;
    ctl.agent()
        .await
        .ack(v1::AckRequest {
            auth: Some(auth.clone()),
            generation: 2,
        })
        .await
        .unwrap();
    let r = ctl
        .agent()
        .await
        .report_events(tokio_stream::iter(vec![v1::ReportEventsRequest {
            auth: Some(auth.clone()),
            // Alice's own laptop reports its own flow (an agent reports for its host).
            events: vec![event(
                "2026-01-01T10:00:00Z",
                "flow_start",
                "allow",
                "alice@example.com",
                "alice-laptop",
                "db",
            )],
        }]))
        .await
        .unwrap();
    assert_eq!(r.into_inner().accepted, 1);
    let policy = admin
        .get_policy(v1::GetPolicyRequest::default())
        .await
        .unwrap()
        .into_inner();
    let objects = admin
        .list_objects(v1::ListObjectsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let gens = ctl.state.generations();
    let views: Vec<_> = gens.keys().map(|h| ctl.state.view(h).unwrap()).collect();
    let audit = admin
        .audit_report(v1::AuditReportRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    ctl.stop().await;

    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    let p2 = admin
        .get_policy(v1::GetPolicyRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (p2.revision, &p2.policy_toml),
        (policy.revision, &policy.policy_toml)
    );
    assert_eq!(
        admin
            .list_objects(v1::ListObjectsRequest::default())
            .await
            .unwrap()
            .into_inner(),
        objects
    );
    assert_eq!(ctl.state.generations(), gens);
    for (h, v) in gens.keys().zip(&views) {
        let (g, view) = ctl.state.view(h).unwrap();
        assert_eq!(g, v.0);
        assert_eq!(
            to_kernel(&view, 0, |t| t as u64),
            to_kernel(&v.1, 0, |t| t as u64)
        );
    }
    let agents = admin
        .list_agents(v1::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 1);
    assert_eq!(
        (
            agents[0].agent_id.as_str(),
            agents[0].acked_generation,
            agents[0].connected
        ),
        (auth.agent_id.as_str(), 2, false)
    );
    let evs = admin
        .query_events(v1::QueryEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(evs.len(), 1);
    // The same records, then the creation of the restarted controller's test key.
    let after = admin
        .audit_report(v1::AuditReportRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(after[..audit.len()], audit[..]);
    assert_eq!(after.len(), audit.len() + 1);
    assert_eq!(after[audit.len()].action, "create_api_key");
    // The agent's credential still works, and it resumes from its generation with deltas.
    let mut s = open_watch(&mut ctl.agent().await, &auth, 1).await;
    let m = next(&mut s, 5).await.unwrap();
    assert_eq!((m.generation, m.base_generation), (2, 1));
    assert!(matches!(m.update, Some(Update::Delta(_))));
    // A used token stays used.
    let tok = admin
        .create_enrollment_token(v1::CreateEnrollmentTokenRequest {
            host: "device:bob-laptop".into(),
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut agent = ctl.agent().await;
    agent
        .enroll(v1::EnrollRequest {
            token: tok.clone(),
            hostname: "b".into(),
            public_key: common::wg_key(),
            host: None,
        })
        .await
        .unwrap();
    let e = agent
        .enroll(v1::EnrollRequest {
            token: tok,
            hostname: "b".into(),
            public_key: common::wg_key(),
            host: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    ctl.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ctl.channel().await);
    for svc in ["", "ztgateway.v1.Admin", "ztgateway.v1.Agent"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: svc.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{svc}"
        );
    }
    ctl.stop().await;
}
