//! The audit chain's format is a contract with every database already written: a trail
//! written by an earlier controller must still verify. Pinned two ways: a reference
//! implementation of the chain written here from its specification (HMAC-SHA-256 under
//! the audit key over `ztgw-audit-v2` and the length-prefixed fields), checked against
//! the controller and against a known head; and a trail written by that reference
//! straight into a database, which the controller must verify and extend.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{open_state, open_store, raw};

use hmac::Mac as _;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A fixed master key (the key file holds it as 64 hex characters).
const MASTER: [u8; 32] = [7u8; 32];

/// The head of [`records`] chained under [`MASTER`], as computed by the controller at
/// 42da1bb (before the state and store were split by aggregate).
const PINNED_HEAD: &str = "8a8c3a54c285fb8f9e76ec34a6da02f4b4582fd5ac26d39daf56d692d35a1b64";

/// (time_ms, actor, action, target, before, after, revision): empty fields, non-ASCII,
/// new lines, a field that holds what looks like the next field, long texts.
type Fields = (
    i64,
    &'static str,
    &'static str,
    &'static str,
    String,
    String,
    u64,
);

fn records() -> Vec<Fields> {
    vec![
        (
            1_700_000_000_000,
            "local:init",
            "create_api_key",
            "api_key:bootstrap-admin",
            String::new(),
            "role admin, expires 2024-02-13T22:13:20Z".into(),
            0,
        ),
        (
            1_700_000_001_234,
            "key:bootstrap-admin",
            "apply_policy",
            "policy",
            String::new(),
            "[[user]]\nemail = \"zoë@example.com\"\n".into(),
            1,
        ),
        (
            1_700_000_002_000,
            "agent:agent-0123456789abcdef",
            "enroll_agent",
            "connector:dc-1",
            String::new(),
            "agent agent-0123456789abcdef (dc-1.example)".into(),
            1,
        ),
        (
            -1,
            "",
            "login_failure",
            "",
            "\u{0}\u{8}len".into(),
            "x".repeat(10_000),
            u64::MAX,
        ),
        (
            1_700_000_003_000,
            "peer:2001:db8::1",
            "admin_auth_failure",
            "admin api",
            "before".into(),
            "unknown API key (repeated 41 more times until 2023-11-14T22:14:20Z)".into(),
            7,
        ),
    ]
}

/// The audit key: HMAC-SHA-256 of the master key over its label.
fn audit_key(master: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(master).unwrap();
    m.update(b"ztgw audit chain v2");
    m.finalize().into_bytes().to_vec()
}

/// The reference hash of one record (see the module docs).
#[allow(clippy::too_many_arguments)]
fn reference_hash(
    id: u64,
    time_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    before: &str,
    after: &str,
    revision: u64,
    prev_hash: &str,
) -> String {
    let mut m = HmacSha256::new_from_slice(&audit_key(&MASTER)).unwrap();
    m.update(b"ztgw-audit-v2");
    for f in [
        id.to_string().as_bytes(),
        time_ms.to_string().as_bytes(),
        actor.as_bytes(),
        action.as_bytes(),
        target.as_bytes(),
        before.as_bytes(),
        after.as_bytes(),
        revision.to_string().as_bytes(),
        prev_hash.as_bytes(),
    ] {
        m.update(&(f.len() as u64).to_be_bytes());
        m.update(f);
    }
    controller::hex(&m.finalize().into_bytes())
}

/// (id, prev_hash, hash) of every record, chained with the reference.
fn reference_chain() -> Vec<(u64, String, String)> {
    let mut prev = controller::store::GENESIS_HASH.to_string();
    let mut out = Vec::new();
    for (i, (t, actor, action, target, before, after, rev)) in records().into_iter().enumerate() {
        let id = i as u64 + 1;
        let h = reference_hash(id, t, actor, action, target, &before, &after, rev, &prev);
        out.push((id, prev.clone(), h.clone()));
        prev = h;
    }
    out
}

#[test]
fn the_chain_format_is_pinned() {
    let keys = controller::keys::Keys::from_master(&MASTER);
    let chain = reference_chain();
    for ((t, actor, action, target, before, after, rev), (id, prev, want)) in
        records().into_iter().zip(&chain)
    {
        let got = controller::store::audit_hash(
            &keys, *id, t, actor, action, target, &before, &after, rev, prev,
        );
        assert_eq!(
            &got, want,
            "record {id}: the controller and the reference differ"
        );
    }
    assert_eq!(chain.last().unwrap().2, PINNED_HEAD);
}

#[test]
fn a_trail_written_by_an_earlier_controller_still_verifies_and_grows() {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("controller.db");
    let key_file = controller::keys::default_key_file(&db);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_file)
        .unwrap()
        .write_all(format!("{}\n", controller::hex(&MASTER)).as_bytes())
        .unwrap();
    // A keyed database with an empty trail, then the earlier controller's records,
    // written as it wrote them.
    drop(open_state(&db));
    let write_trail = || {
        let c = raw(&db);
        c.batch("DELETE FROM audit; DELETE FROM audit_head;");
        for ((t, actor, action, target, before, after, rev), (id, prev, h)) in
            records().into_iter().zip(reference_chain())
        {
            c.execute(
                "INSERT INTO audit (id, time_ms, actor, action, target, before, after, revision, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                &controller::vals![
                    id as i64, t, actor, action, target, before, after, rev as i64, prev, &h
                ],
            );
            c.execute(
                "INSERT INTO audit_head (one, id, hash) VALUES (1, ?1, ?2)
                 ON CONFLICT (one) DO UPDATE SET id = excluded.id, hash = excluded.hash",
                &controller::vals![id as i64, h],
            );
        }
    };
    write_trail();

    let state = open_state(&db);
    let v = state.verify_audit(Some(PINNED_HEAD)).unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!((v.records, v.head_hash.as_str()), (5, PINNED_HEAD));
    assert_eq!(v.expected_head_id, Some(5));
    let read = state.audit_report(None, None, 0).unwrap();
    let chain = reference_chain();
    assert_eq!(read.len(), 5);
    for (r, (want, (id, prev, hash))) in read.iter().zip(records().into_iter().zip(chain)) {
        assert_eq!(r.id, id);
        assert_eq!(
            (
                r.actor.as_str(),
                r.action.as_str(),
                r.target.as_str(),
                r.before.as_str(),
                r.after.as_str(),
                r.revision
            ),
            (want.1, want.2, want.3, &*want.4, &*want.5, want.6)
        );
        assert_eq!((r.prev_hash.as_str(), r.hash.as_str()), (&*prev, &*hash));
    }
    // The controller extends the earlier trail: its records link onto the last one.
    state.bootstrap_admin_key("after-the-split").unwrap();
    let v = state.verify_audit(Some(PINNED_HEAD)).unwrap();
    assert!(
        v.ok && v.records == 6 && v.expected_head_id == Some(5),
        "{v:?}"
    );
    let read = state.audit_report(None, None, 0).unwrap();
    assert_eq!(read[5].prev_hash, PINNED_HEAD);
    assert_eq!(read[5].action, "create_api_key");
    drop(state);

    // The twin that can fail: one byte changed in an earlier record is found.
    write_trail();
    raw(&db).execute("UPDATE audit SET after = 'role auditor' WHERE id = 1", &[]);
    let state = open_state(&db);
    let v = state.verify_audit(None).unwrap();
    assert!(!v.ok && v.first_bad_id == Some(1), "{v:?}");
    let keys = Arc::new(controller::keys::Keys::from_master(&MASTER));
    drop(state);
    let v = open_store(&db, keys).unwrap().verify_audit(None).unwrap();
    assert!(!v.ok && v.first_bad_id == Some(1), "{v:?}");
}
