//! `export [-o FILE]`: the controller's live policy as a TOML file `apply` takes back
//! with an empty plan, with the comments of the last applied file where they still hold
//! (the controller's GetPolicy text).

use std::io::Write as _;
use std::path::Path;

use gateway_proto::v1;

use crate::connect::Ctl;
use crate::fail::{Fail, R};

/// The exported text: a comment naming the revision, then the policy's tables.
fn exported(policy: &str, revision: u64) -> String {
    let mut s = format!(
        "# The policy of the controller at revision {revision}, exported by `gatewayctl export`.\n\
         # Apply it back with `gatewayctl apply FILE`.\n"
    );
    if !policy.is_empty() {
        s.push('\n');
        s.push_str(policy);
        if !policy.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

/// Writes `text` to `path` through a temporary file in the same folder and a rename, so
/// the file is never seen half written.
fn write_atomically(path: &Path, text: &str) -> R<()> {
    let fail = |e: std::io::Error| Fail::Usage(format!("cannot write `{}`: {e}", path.display()));
    let name = path
        .file_name()
        .ok_or_else(|| Fail::Usage(format!("`{}` is not a file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".gatewayctl-{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let r = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(fail)
}

pub async fn export(ctl: &Ctl, out: Option<&Path>) -> R<()> {
    let mut a = ctl.admin.clone();
    let r = ctl
        .call(
            "read the policy",
            a.get_policy(v1::GetPolicyRequest::default()),
        )
        .await?;
    let text = exported(&r.policy_toml, r.revision);
    match out {
        Some(path) => write_atomically(path, &text),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}
