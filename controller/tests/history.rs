//! What the store keeps of each host's history and of its agents, on both backends: the
//! last `DELTA_HISTORY` deltas of a host (written and pruned by the hundred when a change
//! touches many hosts), enough for an agent to resume after a restart of the controller;
//! acknowledgements written within the controller's one-second tick; the texts of the
//! last `REVISIONS_KEPT` policy revisions.
#![allow(clippy::unwrap_used)]

mod common;

use common::{DEMO, open_state, raw, tempdir};
use controller::model::{AgentCredential, ViewUpdate};
use controller::objects::Kind;
use controller::state::ChangeOpts;
use controller::store::{DELTA_HISTORY, REVISIONS_KEPT};

const CONNECTOR: &str = "connector:demo-connector";

/// DEMO with the web resource on port `port`: the connector's view changes.
fn with_port(port: u32) -> String {
    DEMO.replacen("tcp = [\"443\"]", &format!("tcp = [\"{port}\"]"), 1)
}

#[test]
fn a_host_keeps_its_last_deltas_and_an_agent_resumes_from_them_after_a_restart() {
    let (_dir, path) = tempdir();
    let opts = ChangeOpts::default();
    let state = open_state(&path);
    state.apply_policy(DEMO, "policy.toml", &opts).unwrap();
    let token = state.create_token(CONNECTOR, 60, "key:test").unwrap();
    let e = state
        .enroll(&token.token, "h", None, &common::wg_key(), None)
        .unwrap();
    let auth = AgentCredential {
        agent_id: e.agent_id,
        credential: e.credential,
    };
    let changes = DELTA_HISTORY as u32 + 40;
    for n in 0..changes {
        state
            .apply_policy(&with_port(2000 + n), "policy.toml", &opts)
            .unwrap();
    }
    let current = state.generations()[CONNECTOR];
    assert!(current > changes as u64, "every change moved the connector");
    // The store holds the last DELTA_HISTORY deltas (and never fewer).
    let db = raw(&path);
    let kept = db.int(
        "SELECT count(*) FROM host_deltas WHERE host = ?1",
        &[CONNECTOR.into()],
    );
    assert_eq!(kept, DELTA_HISTORY, "deltas kept of {CONNECTOR}");
    let oldest = db.int(
        "SELECT min(generation) FROM host_deltas WHERE host = ?1",
        &[CONNECTOR.into()],
    );
    assert_eq!(oldest as u64, current - DELTA_HISTORY as u64 + 1);
    // Acknowledged, then the controller restarts: the ack is stored, and an agent 30
    // generations behind resumes with deltas, one an older one with a snapshot.
    state.ack(Some(&auth), current - 30).unwrap();
    assert_eq!(state.flush_acks(false).unwrap(), 1);
    assert_eq!(
        db.int(
            "SELECT acked_generation FROM agents WHERE id = ?1",
            &[auth.agent_id.as_str().into()]
        ) as u64,
        current - 30
    );
    drop(state);
    let state = open_state(&path);
    let mut w = state.watch(Some(&auth), current - 30).unwrap();
    let mut got = Vec::new();
    while let Ok(m) = w.updates.try_recv() {
        got.push(m);
    }
    assert_eq!(got.len(), 30, "one delta per missed generation");
    assert!(got.iter().all(|m| matches!(m.update, ViewUpdate::Delta(_))));
    assert_eq!(got[0].base_generation, current - 30);
    assert_eq!(got.last().unwrap().generation, current);
    let mut w = state
        .watch(Some(&auth), current - DELTA_HISTORY as u64 - 5)
        .unwrap();
    let m = w.updates.try_recv().unwrap();
    assert!(
        matches!(m.update, ViewUpdate::Snapshot(_)),
        "too far behind: a snapshot"
    );
}

#[test]
fn every_revision_keeps_the_text_getpolicy_gave_then_the_last_ones_are_kept_and_survive_a_restart()
{
    let (_dir, path) = tempdir();
    let opts = |actor: &str| ChangeOpts {
        actor: actor.into(),
        ..ChangeOpts::default()
    };
    let state = open_state(&path);
    assert!(state.policy_revisions(0, 0).unwrap().is_empty());
    let none = state.policy_at(1).unwrap_err().to_string();
    assert!(none.contains("no revision 1"), "{none}");

    // Three kinds of change, each a revision; a plan (dry run) and a no-op are not.
    state
        .apply_policy(DEMO, "policy.toml", &opts("user:alice"))
        .unwrap();
    let mut seen = vec![state.policy()];
    let db = state.object(Kind::Resource, "db").unwrap().0.toml;
    let changed = db.replace("\"5432\"", "\"5433\"");
    assert_ne!(db, changed, "the edit changes the object");
    state
        .update_object(Kind::Resource, "db", &changed, &opts("key:ci"))
        .unwrap();
    seen.push(state.policy());
    state
        .apply_policy(
            &with_port(8443),
            "policy.toml",
            &ChangeOpts {
                dry_run: true,
                ..opts("user:bob")
            },
        )
        .unwrap();
    state
        .apply_policy(&with_port(8443), "policy.toml", &opts("user:bob"))
        .unwrap();
    seen.push(state.policy());
    state
        .apply_policy(&with_port(8443), "policy.toml", &opts("user:bob"))
        .unwrap();
    let list = state.policy_revisions(0, 0).unwrap();
    let got: Vec<(u64, &str, &str)> = list
        .iter()
        .map(|r| (r.revision, r.actor.as_str(), r.action.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (3, "user:bob", "apply_policy"),
            (2, "key:ci", "update_object"),
            (1, "user:alice", "apply_policy")
        ]
    );
    for (text, revision) in &seen {
        assert_eq!(
            &state.policy_at(*revision).unwrap(),
            &(text.clone(), *revision)
        );
        let r = list.iter().find(|r| r.revision == *revision).unwrap();
        assert_eq!(r.bytes, text.len() as u64, "revision {revision}'s size");
    }
    // The texts differ where the changes were.
    assert!(seen[0].0.contains("\"5432\"") && seen[1].0.contains("\"5433\""));
    assert!(seen[2].0.contains("\"8443\"") && !seen[1].0.contains("\"8443\""));
    // Paging.
    let older: Vec<u64> = state
        .policy_revisions(3, 1)
        .unwrap()
        .iter()
        .map(|r| r.revision)
        .collect();
    assert_eq!(older, [2]);

    // The last REVISIONS_KEPT are kept; older ones say so.
    let extra = REVISIONS_KEPT + 5;
    for n in 0..extra {
        state
            .apply_policy(
                &with_port(3000 + n as u32),
                "policy.toml",
                &opts("key:loop"),
            )
            .unwrap();
    }
    let current = state.revision();
    assert_eq!(current, 3 + extra);
    let kept = state.policy_revisions(0, 1000).unwrap();
    assert_eq!(kept.len() as u64, REVISIONS_KEPT);
    assert_eq!(kept.last().unwrap().revision, current - REVISIONS_KEPT + 1);
    let gone = state.policy_at(current - REVISIONS_KEPT).unwrap_err();
    assert!(
        matches!(gone, controller::Error::NotFound(_)) && gone.to_string().contains("not kept"),
        "{gone}"
    );
    assert!(state.policy_at(current - REVISIONS_KEPT + 1).is_ok());
    let ahead = state.policy_at(current + 1).unwrap_err().to_string();
    assert!(ahead.contains(&format!("at revision {current}")), "{ahead}");

    // A restart keeps them.
    let (text, _) = state.policy();
    drop(state);
    let state = open_state(&path);
    assert_eq!(state.policy_at(current).unwrap(), (text.clone(), current));
    assert_eq!(state.policy_revisions(0, 1000).unwrap(), kept);

    // A database from before revisions were kept: the current one is kept at start-up.
    drop(state);
    raw(&path).execute("DELETE FROM policy_revisions", &[]);
    let state = open_state(&path);
    let after = state.policy_revisions(0, 0).unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(
        (
            after[0].revision,
            after[0].action.as_str(),
            after[0].actor.as_str()
        ),
        (current, "kept_at_upgrade", "")
    );
    assert_eq!(state.policy_at(current).unwrap(), (text, current));
}
