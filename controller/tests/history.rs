//! What the store keeps of each host's history and of its agents, on both backends: the
//! last `DELTA_HISTORY` deltas of a host (written and pruned by the hundred when a change
//! touches many hosts), enough for an agent to resume after a restart of the controller;
//! acknowledgements written within the controller's one-second tick.
#![allow(clippy::unwrap_used)]

mod common;

use common::{DEMO, open_state, raw, tempdir};
use controller::model::{AgentCredential, ViewUpdate};
use controller::state::ChangeOpts;
use controller::store::DELTA_HISTORY;

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
