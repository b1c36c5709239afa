//! Operations on the real binary: `--version`, `check` refusing what `serve` would
//! refuse, logs without colour codes when stderr is not a terminal.

mod common;

use std::process::Command;

fn hotline(args: &[&str]) -> std::process::Output {
    Command::new(common::bin())
        .args(args)
        .output()
        .expect("run hotline")
}

#[test]
fn version_is_printed() {
    let o = hotline(&["--version"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        text.trim(),
        format!("hotline {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_refuses_a_data_directory_serve_could_not_create() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let under_a_file = file.path().join("data");
    let set = format!("storage.data_dir=\"{}\"", under_a_file.display());
    let o = hotline(&["--set", &set, "check"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("storage.data_dir"), "{err}");
    assert!(err.contains("not a directory"), "{err}");

    // What serve says about the same directory.
    let o = hotline(&["--set", &set, "serve"]);
    assert!(!o.status.success());

    let dir = tempfile::tempdir().unwrap();
    let fine = format!("storage.data_dir=\"{}\"", dir.path().join("a/b").display());
    let o = hotline(&["--set", &fine, "check"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(!dir.path().join("a").exists(), "check creates nothing");
}

#[test]
fn check_refuses_priority_rules_on_answers_the_flow_never_stores() {
    let o = hotline(&["--set", "queue.priority_answers=[\"stauts=1\"]", "check"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("queue.priority_answers[0]") && err.contains("\"stauts\""),
        "{err}"
    );
    let o = hotline(&["--set", "queue.priority_answers=[\"status=1\"]", "check"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}

#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    let mut server = common::Server::start(&[]);
    server.stop();
    let log = server.log_text();
    assert!(log.contains("hotline started"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape in the log");
}
