//! `hotline prompts import` as an administrator uses it with a studio's delivery:
//! WAV (44.1 kHz stereo), FLAC, MP3 and Ogg recordings become telephone prompts
//! that pass `hotline check`; a clipped and a silent recording are refused by name
//! and nothing else in the prompts directory changes. Also `hotline prompts list`.

mod common;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn hotline(args: &[&str], prompts: &Path) -> Output {
    Command::new(common::bin())
        .args(args)
        .arg("--set")
        .arg(format!("prompts.dir=\"{}\"", prompts.display()))
        .output()
        .expect("run hotline")
}

/// Name -> SHA-256 of every file in `dir`.
fn hashes(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                hex::encode(Sha256::digest(&bytes)),
            )
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn write_wav(path: &Path, rate: u32, samples: impl Iterator<Item = f64>) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)
            .unwrap();
    }
    w.finalize().unwrap();
}

const IMPORTED: [&str; 4] = ["message_saved", "goodbye", "no_speech", "call_back_later"];

#[test]
fn four_formats_are_imported_and_clipped_or_silent_recordings_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts");
    copy_dir(&root().join("prompts/ru"), &prompts);
    let studio = tmp.path().join("studio");
    copy_dir(&root().join("tests/data/studio"), &studio);
    std::fs::remove_file(studio.join("README.md")).unwrap();
    // Clipped: a 300 Hz tone driven 4 dB past full scale.
    write_wav(
        &studio.join("invalid_key.wav"),
        44_100,
        (0..88_200).map(|i| 1.6 * (i as f64 * 300.0 * std::f64::consts::TAU / 44_100.0).sin()),
    );
    // Silent: two seconds of nothing.
    write_wav(
        &studio.join("no_input.wav"),
        44_100,
        std::iter::repeat_n(0.0, 88_200),
    );
    std::fs::write(studio.join("notes.txt"), "take 3 is the best").unwrap();
    write_wav(
        &studio.join("hello.wav"),
        8000,
        std::iter::repeat_n(0.1, 800),
    );
    let before = hashes(&prompts);

    let out = hotline(&["prompts", "import", studio.to_str().unwrap()], &prompts);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{table}");
    assert_eq!(out.status.code(), Some(1), "some recordings were refused");
    let line = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for {id}:\n{table}"))
            .to_string()
    };
    for id in IMPORTED {
        assert!(line(id).ends_with("written"), "{}", line(id));
    }
    assert!(
        line("invalid_key").contains("NOT IMPORTED: clipped in"),
        "{}",
        line("invalid_key")
    );
    assert!(
        line("no_input").contains("NOT IMPORTED: silent"),
        "{}",
        line("no_input")
    );
    assert!(table.contains("ignored notes.txt: not a WAV, FLAC, MP3 or Ogg file"));
    assert!(table.contains("ignored hello.wav: \"hello\" is not a prompt id in prompts.toml"));
    let missing = table
        .lines()
        .find(|l| l.starts_with("still missing"))
        .expect("missing ids");
    assert!(
        missing.contains("greeting") && missing.contains("no_input"),
        "{missing}"
    );
    assert!(
        !IMPORTED
            .iter()
            .any(|id| missing.contains(&format!(" {id},"))),
        "{missing}"
    );

    // Exactly the four canonical WAVs changed; nothing added or removed.
    let after = hashes(&prompts);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    let changed: Vec<&str> = before
        .iter()
        .filter(|(name, hash)| after[*name] != **hash)
        .map(|(name, _)| name.as_str())
        .collect();
    let mut expected: Vec<String> = IMPORTED.iter().map(|id| format!("{id}.wav")).collect();
    expected.sort();
    assert_eq!(changed, expected);

    // Telephone format, trimmed, and at the level `check` wants.
    for id in IMPORTED {
        let r = hound::WavReader::open(prompts.join(format!("{id}.wav"))).unwrap();
        let spec = r.spec();
        assert_eq!(
            (spec.channels, spec.sample_rate, spec.bits_per_sample),
            (1, 8000, 16),
            "{id}"
        );
    }
    let list = hotline(&["prompts", "list", "--json"], &prompts);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let entry = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap()
            .clone()
    };
    for id in IMPORTED {
        let e = entry(id);
        assert_eq!(e["problems"], serde_json::json!([]), "{e}");
        assert_eq!(e["placeholder"], false, "{e}");
        let lufs = e["levels"]["lufs"].as_f64().unwrap();
        assert!((lufs + 19.0).abs() < 0.3, "{id}: {lufs} LUFS");
        assert!(
            e["levels"]["leading_silence"].as_f64().unwrap() <= 0.2,
            "{e}"
        );
    }
    // The 0.8 s of silence before the 44.1 kHz take is gone.
    let seconds = entry("message_saved")["levels"]["seconds"]
        .as_f64()
        .unwrap();
    assert!(seconds < 3.0, "message_saved is {seconds} s");
    assert_eq!(entry("greeting")["placeholder"], true);

    let check = hotline(&["check"], &prompts);
    assert!(
        check.status.success(),
        "check after import: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Files that are not what their name says, truncated or hostile, are reported;
/// the import never stops half-way or panics, and writes nothing for them.
#[test]
fn damaged_files_are_reported_not_imported() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts");
    copy_dir(&root().join("prompts/ru"), &prompts);
    let studio = tmp.path().join("studio");
    std::fs::create_dir_all(&studio).unwrap();
    let flac = std::fs::read(root().join("tests/data/studio/goodbye.flac")).unwrap();
    std::fs::write(studio.join("goodbye.flac"), &flac[..200]).unwrap();
    let mut noise = vec![0u8; 40_000];
    let mut x: u32 = 12345;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(studio.join("no_speech.mp3"), &noise).unwrap();
    std::fs::write(studio.join("call_back_later.ogg"), b"OggS\0\0\0\0").unwrap();
    std::fs::write(
        studio.join("message_saved.wav"),
        b"RIFF\xff\xff\xff\xffWAVEfmt ",
    )
    .unwrap();
    // Two recordings of one prompt: which is meant is not guessed.
    std::fs::copy(
        root().join("tests/data/studio/goodbye.flac"),
        studio.join("digit_1.flac"),
    )
    .unwrap();
    std::fs::copy(
        root().join("tests/data/studio/no_speech.mp3"),
        studio.join("digit_1.mp3"),
    )
    .unwrap();
    let before = hashes(&prompts);
    let out = hotline(
        &["prompts", "import", studio.to_str().unwrap(), "--json"],
        &prompts,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "{report:#}");
    for row in rows {
        assert_eq!(row["written"], false, "{row}");
        assert!(!row["problems"].as_array().unwrap().is_empty(), "{row}");
    }
    let digit = rows.iter().find(|r| r["id"] == "digit_1").unwrap();
    assert_eq!(
        digit["problems"][0],
        "more than one recording of this prompt"
    );
    assert_eq!(hashes(&prompts), before, "nothing was written");
    assert!(std::fs::read_dir(&prompts)
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with('.')));
}

#[test]
fn prompts_list_shows_words_and_durations() {
    let out = Command::new(common::bin())
        .args(["prompts", "list"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let greeting = text
        .lines()
        .find(|l| l.starts_with("greeting "))
        .expect("greeting row");
    assert!(greeting.contains("Здравствуйте."), "{greeting}");
    assert!(greeting.contains("-19.0"), "{greeting}");
    let beep = text.lines().find(|l| l.starts_with("beep ")).unwrap();
    assert!(
        beep.contains("1000 Hz tone, 400 ms") && beep.contains("-22.0"),
        "{beep}"
    );
}

/// docs/prompts.md records each prompt's duration; it must match the audio.
#[test]
fn the_durations_in_docs_match_the_prompts() {
    let out = Command::new(common::bin())
        .args(["prompts", "list", "--markdown"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let docs = std::fs::read_to_string(root().join("docs/prompts.md")).unwrap();
    assert!(
        docs.contains(&table),
        "docs/prompts.md is out of date; replace its table with `hotline prompts list --markdown`:\n{table}"
    );
}
