//! Break-glass: `gateway-controller init` run again on the database of a running
//! controller mints a new, uniquely named admin key that works at once (no restart);
//! wrong keys stay refused. The real binaries, a plaintext controller on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_proto::v1;
use tonic::transport::Channel;

const CONTROLLER: &str = env!("CARGO_BIN_EXE_gateway-controller");

/// Kills the controller when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gateway-controller init --db DB [ARGS]`: (exit status, stdout, stderr).
fn init(db: &Path, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(CONTROLLER)
        .arg("init")
        .args(common::db_args(db))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

async fn whoami(ch: &Channel, key: &str) -> Result<String, tonic::Status> {
    controller::auth::admin_client(ch.clone(), key)
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .map(|r| r.into_inner().principal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_mints_a_working_key_on_a_running_controller() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("controller.db");
    let (ok, first, err) = init(&db, &[]);
    assert!(ok && first.starts_with("zt-key-"), "{err}");
    assert!(err.contains("key=bootstrap-admin "), "{err}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let _ctl = Running(
        Command::new(CONTROLLER)
            .args(["run", "--insecure-plaintext", "--listen", &listen])
            .args(common::db_args(&db))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let ch = loop {
        match Channel::from_shared(format!("http://{listen}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(ch) => break ch,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the controller did not listen on {listen}: {e}"),
        }
    };
    // Control: the key minted before the start works.
    assert_eq!(whoami(&ch, &first).await.unwrap(), "key:bootstrap-admin");

    // Break-glass while it runs: a new name, no error, and the key works at once.
    let (ok, second, err) = init(&db, &[]);
    assert!(ok && second.starts_with("zt-key-"), "{err}");
    assert!(err.contains("key=bootstrap-admin-2 "), "{err}");
    // It is listed before its first use, and its name cannot be taken over the API.
    let mut admin = controller::auth::admin_client(ch.clone(), &first);
    let names: Vec<String> = admin
        .list_api_keys(v1::ListApiKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["bootstrap-admin", "bootstrap-admin-2"]);
    let e = admin
        .create_api_key(v1::CreateApiKeyRequest {
            name: "bootstrap-admin-2".into(),
            role: v1::Role::Auditor as i32,
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert_eq!(whoami(&ch, &second).await.unwrap(), "key:bootstrap-admin-2");

    // A wrong key is still refused (and again, from the negative cache).
    for _ in 0..2 {
        let e = whoami(&ch, "zt-key-0123456789abcdef").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    }
    // A third one, right after the refusals (the lookup bound lets it through within
    // a second).
    let (ok, third, err) = init(&db, &[]);
    assert!(ok && err.contains("key=bootstrap-admin-3 "), "{err}");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match whoami(&ch, &third).await {
            Ok(p) => {
                assert_eq!(p, "key:bootstrap-admin-3");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the third key did not work within 2s: {e:?}"),
        }
    }
    // An explicit name that exists is refused, naming it; nothing is printed.
    let (ok, out, err) = init(&db, &["--key-name", "bootstrap-admin"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("an API key named `bootstrap-admin` exists"),
        "{err}"
    );
    // Every key minted works (the first too).
    for (k, name) in [(&first, "bootstrap-admin"), (&second, "bootstrap-admin-2")] {
        assert_eq!(whoami(&ch, k).await.unwrap(), format!("key:{name}"));
    }
}
