//! The architecture, checked on the source: imports point one way (the layers of
//! docs/architecture.md), and only the I/O shell reads a clock or the operating
//! system's randomness. Both checks read `src/` as text; test code (`#[cfg(test)]`
//! modules and `tests.rs` files) is exempt.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. A module may use modules of lower
/// layers; within a layer only the pairs in `SAME_LAYER` are allowed.
const LAYERS: &[&[&str]] = &[
    // Shared data: types every layer uses, and the configuration.
    &["call", "capacity", "config"],
    // Small protocol helpers used by the cores.
    &["sdp", "privacy", "reference", "wav"],
    // Protocol cores (sans-IO) with their thin tokio sides, and storage.
    &["sip", "media", "ivr", "queue", "store", "trunk"],
    // Hosts: call logic that joins the cores; tools on the cores' data.
    &["accounts", "app", "prompts"],
    // The shell: drivers, sockets, the control socket, the console and metrics
    // listeners, start-up, the data subcommands.
    &[
        "control",
        "driver",
        "uac",
        "serve",
        "admin",
        "keys",
        "vault",
        "maintenance",
        "console",
        "metrics",
    ],
];

const SAME_LAYER: &[(&str, &str)] = &[
    ("serve", "control"),
    ("serve", "driver"),
    ("serve", "vault"),
    ("serve", "maintenance"),
    ("serve", "console"),
    ("serve", "metrics"),
    ("console", "metrics"),
    ("uac", "driver"),
    ("admin", "control"),
    ("admin", "keys"),
    ("admin", "vault"),
    ("vault", "control"),
    ("vault", "keys"),
    // A trunk's registration speaks SIP through the endpoint's client transactions.
    ("trunk", "sip"),
];

/// Files of the I/O shell: the only ones that may read a clock or OS randomness.
const SHELL_FILES: &[&str] = &[
    "src/main.rs",
    "src/control.rs",
    "src/driver.rs",
    "src/uac.rs",
    "src/sip/transport.rs",
    "src/media/engine.rs",
    "src/media/receiver.rs",
    "src/media/recording_sink.rs",
    "src/store/writer.rs",
    "src/admin.rs",
    "src/keys.rs",
    "src/vault.rs",
    "src/maintenance.rs",
    // The console's listener, routes and database pool; its sessions, lockout, CSRF
    // and board rules are sans-IO and checked.
    "src/console/mod.rs",
    "src/console/web.rs",
    "src/console/http.rs",
    "src/console/db.rs",
];
const SHELL_DIRS: &[&str] = &["src/serve/"];

const CLOCK_AND_RANDOMNESS: &[&str] = &[
    "Instant::now(",
    "SystemTime::now(",
    "OffsetDateTime::now",
    "thread_rng(",
    "rand::random",
    "OsRng",
    "from_entropy(",
    "getrandom",
];

fn src_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src readable") {
        let path = entry.unwrap().path();
        if path.is_dir() {
            src_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `src/sip/endpoint.rs` -> `sip`; `src/lib.rs` and `src/main.rs` -> None.
fn top_module(rel: &str) -> Option<String> {
    let rest = rel.strip_prefix("src/")?;
    let first = rest.split('/').next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The file's text without its test code.
fn non_test_code(rel: &str, text: &str) -> String {
    if rel.ends_with("/tests.rs") || rel.ends_with("_tests.rs") {
        return String::new();
    }
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        // Comments may name what they forbid.
        let code = line.split("//").next().unwrap_or("");
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Every `crate::name` a file's non-test code refers to.
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    src_files(&root().join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&p).unwrap();
            (rel, text)
        })
        .collect()
}

/// What a set of sources breaks of the layering rules, one line each.
fn layer_violations(files: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (rel, text) in files {
        let Some(module) = top_module(rel) else {
            continue;
        };
        let Some(own) = layer_of(&module) else {
            problems.push(format!(
                "{rel}: module `{module}` is in no layer (add it to LAYERS and docs/architecture.md)"
            ));
            continue;
        };
        for used in crate_references(&non_test_code(rel, text)) {
            if used == module {
                continue;
            }
            let Some(theirs) = layer_of(&used) else {
                problems.push(format!("{rel}: uses `crate::{used}`, which is in no layer"));
                continue;
            };
            let allowed = theirs < own
                || (theirs == own && SAME_LAYER.contains(&(module.as_str(), used.as_str())));
            if !allowed {
                problems.push(format!(
                    "{rel}: `{module}` (layer {own}) uses `crate::{used}` (layer {theirs})"
                ));
            }
        }
    }
    problems
}

fn clock_violations(files: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (rel, text) in files {
        if SHELL_FILES.contains(&rel.as_str()) || SHELL_DIRS.iter().any(|d| rel.starts_with(d)) {
            continue;
        }
        let code = non_test_code(rel, text);
        for (n, line) in code.lines().enumerate() {
            for pattern in CLOCK_AND_RANDOMNESS {
                if line.contains(pattern) {
                    problems.push(format!(
                        "{rel}:{}: `{pattern}` outside the I/O shell (pass time or a seeded RNG in)",
                        n + 1
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn imports_point_down_the_layers() {
    let problems = layer_violations(&sources());
    assert!(problems.is_empty(), "layering:\n{}", problems.join("\n"));
}

#[test]
fn only_the_shell_reads_clocks_and_os_randomness() {
    let problems = clock_violations(&sources());
    assert!(problems.is_empty(), "clocks:\n{}", problems.join("\n"));
}

/// The checks themselves catch what they are for (and ignore test code and comments).
#[test]
fn the_checks_catch_violations() {
    let bad = vec![
        (
            "src/sip/endpoint.rs".to_string(),
            "use crate::media::prompt::Prompt;\nfn f() { let t = std::time::Instant::now(); }\n// Instant::now() in a comment\n#[cfg(test)]\nmod tests { use crate::app::App; fn g() { let _ = std::time::Instant::now(); } }\n".to_string(),
        ),
        ("src/store/mod.rs".to_string(), "use crate::sip::CallEvent;\nfn r() -> u8 { rand::random() }\n".to_string()),
        ("src/media/engine.rs".to_string(), "fn f() { let _ = tokio::time::Instant::now(); }\n".to_string()),
        ("src/newthing.rs".to_string(), String::new()),
    ];
    let layers = layer_violations(&bad);
    assert_eq!(layers.len(), 3, "{layers:#?}");
    assert!(layers[0].contains("`sip` (layer 2) uses `crate::media` (layer 2)"));
    assert!(layers[1].contains("`store` (layer 2) uses `crate::sip`"));
    assert!(layers[2].contains("in no layer"));
    let clocks = clock_violations(&bad);
    assert_eq!(clocks.len(), 2, "{clocks:#?}");
    assert!(clocks[0].starts_with("src/sip/endpoint.rs:2:"));
    assert!(clocks[1].starts_with("src/store/mod.rs:2:"));
}
