//! systemd's `Type=notify` for the controller: with `NOTIFY_SOCKET` set, the real binary
//! sends `READY=1` only once its listener accepts connections, and `STOPPING=1` on SIGTERM,
//! then exits 0. The socket is a datagram socket of the test's own (what systemd binds).
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONTROLLER: &str = env!("CARGO_BIN_EXE_gateway-controller");

/// The next notification on `sock` within `within`, as text.
fn next(sock: &UnixDatagram, within: Duration) -> Option<String> {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 4096];
    sock.recv(&mut b)
        .ok()
        .map(|n| String::from_utf8_lossy(&b[..n]).into_owned())
}

#[test]
fn ready_once_listening_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("controller.db");
    let o = Command::new(CONTROLLER)
        .arg("init")
        .args(common::db_args(&db))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let socket = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(CONTROLLER)
        .args(["run", "--insecure-plaintext", "--listen", &listen])
        .args(common::db_args(&db))
        .env("NOTIFY_SOCKET", &socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let ready = next(&sock, Duration::from_secs(30));
    // When READY=1 arrives, the port already accepts connections.
    let connects = std::net::TcpStream::connect(&listen).is_ok();
    let pid = child.id() as libc::pid_t;
    assert!(
        ready
            .as_deref()
            .is_some_and(|m| m.lines().any(|l| l == "READY=1")),
        "no READY=1 within {:?}: {ready:?}",
        started.elapsed()
    );
    assert!(
        connects,
        "READY=1 came before the listener accepted connections"
    );
    // SAFETY: signalling the child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let stopping = next(&sock, Duration::from_secs(10));
    assert!(
        stopping
            .as_deref()
            .is_some_and(|m| m.lines().any(|l| l == "STOPPING=1")),
        "no STOPPING=1 after SIGTERM: {stopping:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the controller did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
