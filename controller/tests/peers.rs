//! WireGuard peers through the controller: the keys agents register at enrollment (and
//! rotate) reach exactly the connectors that may see them, in one push; revocation,
//! deleting a grant or a device takes them away; enrollments without a valid key are
//! refused and leave the token unused; connectors are policy objects.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use gateway_proto::apply_delta;
use gateway_proto::v1::{self, ObjectKind, watch_response::Update};
use policy_compiler::{HostView, WgKey};
use tonic::Code;
use tonic::Streaming;
use tonic::transport::Channel;

const POLICY: &str = r#"
[[remote_network]]
name = "dc"
cidrs = ["10.1.0.0/16"]
connectors = ["dc-1"]

[[remote_network]]
name = "lab"
cidrs = ["10.2.0.0/16"]
connectors = ["lab-1"]

[[resource]]
name = "db"
network = "dc"
address = "10.1.0.5"
tcp = [5432]

[[resource]]
name = "bench"
network = "lab"
address = "10.2.0.5"
tcp = [22]

[[user]]
email = "alice@x.test"

[[user]]
email = "bob@x.test"

[[device]]
name = "alice-laptop"
owner = "alice@x.test"
address = "100.64.0.1"

[[device]]
name = "bob-laptop"
owner = "bob@x.test"
address = "100.64.0.2"

[[connector]]
name = "dc-1"
public_key = "DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1A="
endpoint = "203.0.113.1:51820"

[[connector]]
name = "lab-1"
public_key = "LAB1LAB1LAB1LAB1LAB1LAB1LAB1LAB1LAB1LAB1LAA="
endpoint = "lab.example.net:51820"

[[allow]]
name = "alice-db"
principals = ["alice@x.test"]
resources = ["db"]

[[allow]]
name = "bob-bench"
principals = ["bob@x.test"]
resources = ["bench"]
"#;

fn key(n: u8) -> String {
    WgKey([n; 32]).to_string()
}

async fn token(ctl: &Controller, host: &str) -> String {
    ctl.admin()
        .await
        .create_enrollment_token(v1::CreateEnrollmentTokenRequest {
            host: host.into(),
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

async fn enroll_with(
    agent: &mut gateway_proto::v1::agent_client::AgentClient<Channel>,
    token: &str,
    public_key: &str,
) -> Result<v1::AgentAuth, tonic::Status> {
    agent
        .enroll(v1::EnrollRequest {
            token: token.into(),
            hostname: "h".into(),
            host: None,
            public_key: public_key.into(),
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            v1::AgentAuth {
                agent_id: r.agent_id,
                credential: r.credential,
            }
        })
}

/// A watching agent: its stream and the view it has built.
struct Watching {
    stream: Streaming<v1::WatchResponse>,
    view: HostView,
    generation: u64,
}

async fn watch(ctl: &Controller, auth: &v1::AgentAuth) -> Watching {
    let (stream, view, generation) = watch_snapshot(ctl, auth).await;
    Watching {
        stream,
        view,
        generation,
    }
}

impl Watching {
    /// The next delta (applied), or `None` when nothing comes within a second.
    async fn delta(&mut self) -> Option<v1::ViewDelta> {
        let m = next(&mut self.stream, 1).await?;
        assert_eq!(m.base_generation, self.generation);
        let Some(Update::Delta(d)) = m.update else {
            panic!("delta expected")
        };
        apply_delta(&mut self.view, &d).unwrap();
        self.generation = m.generation;
        Some(d)
    }

    fn peer_keys(&self) -> Vec<String> {
        self.view
            .peers
            .iter()
            .map(|p| p.public_key.to_string())
            .collect()
    }
}

#[tokio::test]
async fn agent_keys_reach_exactly_the_connectors_that_may_see_them() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, POLICY).await;
    let mut agent = ctl.agent().await;

    // The connectors' agents register their own keys (they replace the policy's).
    let dc_auth = enroll_with(&mut agent, &token(&ctl, "connector:dc-1").await, &key(1))
        .await
        .unwrap();
    let lab_auth = enroll_with(&mut agent, &token(&ctl, "connector:lab-1").await, &key(2))
        .await
        .unwrap();
    let mut dc = watch(&ctl, &dc_auth).await;
    let mut lab = watch(&ctl, &lab_auth).await;
    assert!(dc.view.peers.is_empty() && lab.view.peers.is_empty());

    // A malformed key, the all-zero key, another agent's key: refused, naming the
    // field, and the token stays usable. (No key is an agent without a tunnel: below.)
    let alice_token = token(&ctl, "device:alice-laptop").await;
    for (bad, why) in [
        (
            "not a key".to_string(),
            "invalid `EnrollRequest.public_key`",
        ),
        ("AAAA".to_string(), "decodes to 3 bytes"),
        (WgKey([0; 32]).to_string(), "all-zero"),
        (key(1), "uses this key already"),
        (
            "DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1A=".to_string(),
            "the policy gives this key to connector `dc-1`",
        ),
    ] {
        let e = enroll_with(&mut agent, &alice_token, &bad)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains(why), "{bad}: {}", e.message());
    }
    assert!(dc.delta().await.is_none() && lab.delta().await.is_none());

    // Alice enrolls with a key: dc-1 gets her as a peer in one delta; lab-1 nothing.
    let alice_auth = enroll_with(&mut agent, &alice_token, &key(10))
        .await
        .unwrap();
    let d = dc.delta().await.expect("dc-1 learns alice");
    assert_eq!(d.peers_upserted.len(), 1);
    assert_eq!(d.peers_upserted[0].name, "alice-laptop");
    assert_eq!(d.peers_upserted[0].allowed_ips, ["100.64.0.1/32"]);
    assert!(d.peers_removed.is_empty());
    assert_eq!(dc.peer_keys(), [key(10)]);
    assert!(lab.delta().await.is_none(), "lab-1 never learns alice");

    // Alice's own view: dc-1, with the key its agent registered, and her address.
    let alice = watch(&ctl, &alice_auth).await;
    assert_eq!(alice.peer_keys(), [key(1)]);
    assert_eq!(
        alice.view.peers[0].endpoint.as_deref(),
        Some("203.0.113.1:51820")
    );
    assert_eq!(
        alice.view.tunnel_addresses,
        ["100.64.0.1".parse::<std::net::IpAddr>().unwrap()]
    );

    // Rotation: the old key leaves and the new one arrives in the same delta.
    let generation = agent
        .rotate_key(v1::RotateKeyRequest {
            auth: Some(alice_auth.clone()),
            public_key: key(11),
        })
        .await
        .unwrap()
        .into_inner()
        .generation;
    assert_eq!(
        generation, alice.generation,
        "alice's own view does not change"
    );
    let d = dc.delta().await.expect("rotation delta");
    assert_eq!(d.peers_removed, [key(10)]);
    assert_eq!(d.peers_upserted.len(), 1);
    assert_eq!(d.peers_upserted[0].public_key, key(11));
    assert_eq!(dc.peer_keys(), [key(11)]);
    assert!(lab.delta().await.is_none());
    // A malformed rotation changes nothing.
    let e = agent
        .rotate_key(v1::RotateKeyRequest {
            auth: Some(alice_auth.clone()),
            public_key: "xyz".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("RotateKeyRequest.public_key"));
    assert!(dc.delta().await.is_none());

    // Bob: lab-1 only.
    let bob_auth = enroll_with(
        &mut agent,
        &token(&ctl, "device:bob-laptop").await,
        &key(20),
    )
    .await
    .unwrap();
    assert_eq!(
        lab.delta().await.expect("lab-1 learns bob").peers_upserted[0].name,
        "bob-laptop"
    );
    assert!(dc.delta().await.is_none(), "dc-1 never learns bob");
    assert_eq!(lab.peer_keys(), [key(20)]);

    // The keys are listed.
    let agents = admin
        .list_agents(v1::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    let listed = |id: &str| {
        agents
            .iter()
            .find(|a| a.agent_id == id)
            .unwrap()
            .public_key
            .clone()
    };
    assert_eq!(listed(&alice_auth.agent_id), key(11));
    assert_eq!(listed(&bob_auth.agent_id), key(20));
    assert_eq!(listed(&dc_auth.agent_id), key(1));

    // Revoking alice's agent takes her key out of dc-1's view in one push.
    admin
        .revoke_agent(v1::RevokeAgentRequest {
            agent_id: alice_auth.agent_id.clone(),
        })
        .await
        .unwrap();
    let d = dc.delta().await.expect("revocation delta");
    assert_eq!(d.peers_removed, [key(11)]);
    assert!(dc.view.peers.is_empty());

    // Deleting bob's grant takes him out of lab-1's view.
    admin
        .delete_object(v1::DeleteObjectRequest {
            kind: ObjectKind::Grant as i32,
            name: "bob-bench".into(),
            expected_revision: None,
            dry_run: false,
            skip_tests: false,
        })
        .await
        .unwrap();
    let d = lab.delta().await.expect("grant deleted");
    assert_eq!(d.peers_removed, [key(20)]);
    assert!(lab.view.peers.is_empty());

    // An agent without a tunnel enrolls without a key: accepted, and no connector learns
    // a peer from it.
    let again = token(&ctl, "device:alice-laptop").await;
    enroll_with(&mut agent, &again, "").await.unwrap();
    assert!(dc.delta().await.is_none() && dc.view.peers.is_empty());
    ctl.stop().await;
}

#[tokio::test]
async fn connectors_are_policy_objects_and_keys_survive_a_restart() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, POLICY).await;
    let list = admin
        .list_objects(v1::ListObjectsRequest {
            kind: ObjectKind::Connector as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = list.objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["dc-1", "lab-1"]);
    assert!(
        list.objects
            .iter()
            .all(|o| o.kind == ObjectKind::Connector as i32)
    );
    // Update: a new endpoint reaches alice's device view.
    let alice_auth = enroll(&ctl, "device:alice-laptop").await;
    let mut alice = watch(&ctl, &alice_auth).await;
    assert_eq!(
        alice.view.peers[0].endpoint.as_deref(),
        Some("203.0.113.1:51820")
    );
    let plan = admin
        .update_object(v1::UpdateObjectRequest {
            object: Some(v1::PolicyObject {
                kind: ObjectKind::Connector as i32,
                name: "dc-1".into(),
                toml: "name = \"dc-1\"\npublic_key = \"DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1DC1A=\"\nendpoint = \"[2001:db8::1]:51820\"\n".into(),
            }),
            expected_revision: None,
            dry_run: false,
            skip_tests: false,
        })
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    let h = plan
        .hosts
        .iter()
        .find(|h| h.host == "device:alice-laptop")
        .unwrap();
    assert_eq!(h.peers.unwrap().changed, 1);
    alice.delta().await.expect("endpoint change");
    assert_eq!(
        alice.view.peers[0].endpoint.as_deref(),
        Some("[2001:db8::1]:51820")
    );
    // A connector no network lists is refused, located in the object's text.
    let e = admin
        .create_object(v1::CreateObjectRequest {
            object: Some(v1::PolicyObject {
                kind: ObjectKind::Connector as i32,
                name: "ghost".into(),
                toml: format!(
                    "name = \"ghost\"\npublic_key = \"{}\"\nendpoint = \"192.0.2.1:1\"\n",
                    key(99)
                ),
            }),
            expected_revision: None,
            dry_run: false,
            skip_tests: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("connector:ghost:1:"),
        "{}",
        e.message()
    );
    assert!(
        e.message().contains("unknown connector `ghost`"),
        "{}",
        e.message()
    );
    // Deleting the connector takes the tunnel away.
    admin
        .delete_object(v1::DeleteObjectRequest {
            kind: ObjectKind::Connector as i32,
            name: "dc-1".into(),
            expected_revision: None,
            dry_run: false,
            skip_tests: false,
        })
        .await
        .unwrap();
    alice.delta().await.expect("connector deleted");
    assert!(alice.view.peers.is_empty());
    // The registered key is stored: after a restart it still stands in for the policy's.
    let agents = admin
        .list_agents(v1::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    let alice_key = agents[0].public_key.clone();
    assert!(!alice_key.is_empty());
    // No other host may get her registered key through the policy.
    let e = admin
        .update_object(v1::UpdateObjectRequest {
            object: Some(v1::PolicyObject {
                kind: ObjectKind::Device as i32,
                name: "bob-laptop".into(),
                toml: format!(
                    "name = \"bob-laptop\"\nowner = \"bob@x.test\"\naddress = \"100.64.0.2\"\npublic_key = \"{alice_key}\"\n"
                ),
            }),
            expected_revision: None,
            dry_run: false,
            skip_tests: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("device `bob-laptop`"),
        "{}",
        e.message()
    );
    ctl.stop().await;
    let ctl = Controller::start(&db).await;
    let agents = ctl
        .admin()
        .await
        .list_agents(v1::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents[0].public_key, alice_key);
    let (_, view) = ctl.state.view("connector:dc-1").unwrap();
    assert_eq!(
        view.peers
            .iter()
            .map(|p| p.public_key.to_string())
            .collect::<Vec<_>>(),
        [alice_key]
    );
    ctl.stop().await;
}

/// A revoked agent's key is accepted nowhere, even where the policy itself writes it:
/// revoking alice's agent takes her off dc-1 although her `[[device]]` carries that key.
#[tokio::test]
async fn a_revoked_key_is_withdrawn_even_from_the_policy() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    let with_key = POLICY.replace(
        "address = \"100.64.0.1\"",
        &format!("address = \"100.64.0.1\"\npublic_key = \"{}\"", key(30)),
    );
    apply(&mut admin, &with_key).await;
    let mut agent = ctl.agent().await;
    let dc_auth = enroll_with(&mut agent, &token(&ctl, "connector:dc-1").await, &key(1))
        .await
        .unwrap();
    let mut dc = watch(&ctl, &dc_auth).await;
    // The policy's key makes alice a peer of dc-1 before any agent of hers exists.
    assert_eq!(dc.peer_keys(), [key(30)]);
    let alice = enroll_with(
        &mut agent,
        &token(&ctl, "device:alice-laptop").await,
        &key(30),
    )
    .await
    .unwrap();
    admin
        .revoke_agent(v1::RevokeAgentRequest {
            agent_id: alice.agent_id.clone(),
        })
        .await
        .unwrap();
    let d = dc.delta().await.expect("revocation delta");
    assert_eq!(d.peers_removed, [key(30)]);
    assert!(dc.view.peers.is_empty());
    // A new agent of alice's with a new key brings her back.
    enroll_with(
        &mut agent,
        &token(&ctl, "device:alice-laptop").await,
        &key(31),
    )
    .await
    .unwrap();
    dc.delta().await.expect("re-enrollment delta");
    assert_eq!(dc.peer_keys(), [key(31)]);
    ctl.stop().await;
}
