//! `hotline operator ...` and `hotline queue` against a data directory with no server.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn run(data: &Path, args: &[&str]) -> Output {
    Command::new(common::bin())
        .arg("--set")
        .arg(format!("storage.data_dir=\"{}\"", data.display()))
        .args(args)
        .output()
        .expect("run hotline")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(data: &Path, args: &[&str]) -> String {
    let out = run(data, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn failure(data: &Path, args: &[&str]) -> String {
    let out = run(data, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should fail: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stderr(&out)
}

/// Every byte under the data directory (database, WAL, shared memory).
fn data_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            all.extend(std::fs::read(path).unwrap());
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn operator_accounts_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let out = ok(&data, &["operator", "add", "Anna", "--json"]);
    let added: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    let keys: Vec<&String> = added.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 3, "{added}");
    assert_eq!(added["name"], "Anna");
    assert_eq!(added["sip_username"], "anna");
    let password = added["password"].as_str().unwrap().to_string();
    assert_eq!(password.len(), 20);

    // Text mode, a Cyrillic pseudonym and a chosen password.
    let out = ok(
        &data,
        &["operator", "add", "Борис", "--password", "s3cret-enough"],
    );
    assert!(out.contains("Борис"), "{out}");
    assert!(out.contains("s3cret-enough"), "{out}");
    assert!(out.contains("hotline"), "the realm is shown: {out}");
    let boris_user = out
        .lines()
        .find_map(|l| l.strip_prefix("SIP username:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(boris_user.starts_with("op"), "{boris_user}");

    let err = failure(&data, &["operator", "add", "Anna"]);
    assert!(err.contains("already exists"), "{err}");
    let err = failure(&data, &["operator", "add", "carl", "--password", "short"]);
    assert!(err.contains("too short"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let list: serde_json::Value =
        serde_json::from_str(&ok(&data, &["operator", "list", "--json"])).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Anna", "Борис"]);
    assert_eq!(list[1]["sip_username"], boris_user.as_str());
    assert_eq!(list[0]["last_state"], serde_json::Value::Null);
    let text = ok(&data, &["operator", "list"]);
    assert!(
        text.contains("Anna") && text.contains(&boris_user),
        "{text}"
    );

    // A new password replaces the old one; neither is stored in clear.
    let out = ok(&data, &["operator", "passwd", "Anna", "--json"]);
    let changed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(changed["name"], "Anna");
    assert_eq!(changed["sip_username"], "anna");
    let new_password = changed["password"].as_str().unwrap();
    assert_ne!(new_password, password);
    let bytes = data_bytes(&data);
    assert!(!bytes.is_empty());
    for secret in [password.as_str(), new_password, "s3cret-enough"] {
        assert!(!contains(&bytes, secret), "{secret} is in the database");
    }
    let err = failure(&data, &["operator", "passwd", "nobody"]);
    assert!(err.contains("no operator named \"nobody\""), "{err}");

    assert!(ok(&data, &["operator", "remove", "Anna"]).contains("removed"));
    let err = failure(&data, &["operator", "remove", "Anna"]);
    assert!(err.contains("no operator named \"Anna\""), "{err}");
    let list: serde_json::Value =
        serde_json::from_str(&ok(&data, &["operator", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[test]
fn live_commands_need_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let err = failure(&data, &["queue"]);
    assert!(err.contains("not running"), "{err}");
    let err = failure(&data, &["queue", "--json"]);
    assert!(err.contains("not running"), "{err}");
    let err = failure(&data, &["operator", "state", "anna", "available"]);
    assert_eq!(
        err.trim(),
        "hotline is not running (operator state applies to a running server)"
    );
    // A socket left behind by a server that died is no server either.
    std::fs::create_dir_all(&data).unwrap();
    drop(std::os::unix::net::UnixListener::bind(data.join("control.sock")).unwrap());
    let err = failure(&data, &["operator", "state", "anna", "paused"]);
    assert!(err.contains("not running"), "{err}");
    // Only the two states an operator may choose.
    let out = run(&data, &["operator", "state", "anna", "on_call"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn broken_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hotline.db"), vec![b'x'; 4096]).unwrap();
    let err = failure(&data, &["operator", "list"]);
    assert!(err.contains("hotline.db"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
