//! Repair of a WAV file a crash left: the input is the file. Repair must not panic, a
//! repaired file must need no second repair, and it must never grow.
#![no_main]

use hotline::wav::{repair_wav, RepairOutcome};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One file per process, in memory when /dev/shm exists (the run is I/O-bound otherwise).
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("hotline-fuzz-wav-{}.wav", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    std::fs::write(path, data).expect("write the temporary file");
    match repair_wav(path) {
        Ok(RepairOutcome::Repaired { .. }) => {
            let len = std::fs::metadata(path).expect("stat").len();
            assert!(len <= data.len() as u64, "repair grew the file");
            match repair_wav(path) {
                Ok(RepairOutcome::AlreadyValid) => {}
                other => panic!("a repaired file needs repair again: {other:?}"),
            }
        }
        Ok(RepairOutcome::AlreadyValid) | Err(_) => {}
    }
});
