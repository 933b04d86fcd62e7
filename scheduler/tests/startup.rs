//! The `scheduler` binary never starts blind: with its lease/ledger database on a port nothing
//! listens on, `scheduler run` exits 1 within `[scheduler] connect_timeout`, naming the
//! database and its URL with the password hidden. Real Redis as the broker.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn unreachable_database_at_start_exits_1_naming_it() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let db_url = format!("postgres://postgres:s3cret-pw@127.0.0.1:{port}/ledger");
    let path = std::env::temp_dir().join(format!("jft-sched-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &path,
        format!(
            "[broker]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n\
             [database]\nurl = \"{db_url}\"\n\
             [scheduler]\nadmin_addr = \"127.0.0.1:0\"\nconnect_timeout = \"2s\"\n"
        ),
    )
    .unwrap();

    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_scheduler"))
        .arg("--config")
        .arg(&path)
        .arg("run")
        .env_remove("JOBFLEET_CONFIG")
        .env_remove("JOBFLEET_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env_remove("JOBFLEET_BROKER_URL")
        .env_remove("JOBFLEET_BROKER_BACKEND")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(8) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&path);
            panic!("scheduler still running after 8s with its database unreachable");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = std::fs::remove_file(&path);
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("database"), "names the service: {err}");
    assert!(
        err.contains(&format!("postgres://postgres:***@127.0.0.1:{port}/ledger")),
        "names the URL, password hidden: {err}"
    );
    assert!(!err.contains("s3cret-pw"), "password printed: {err}");
    assert!(
        err.contains("JOBFLEET_DATABASE_URL"),
        "says what to check: {err}"
    );
}
