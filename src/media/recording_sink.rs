//! The recording sink: a thread of its own that creates, writes, flushes, finishes
//! (fsync, SHA-256) recordings from the media core's `SinkCommand`s, so that no file
//! operation ever runs on the task that paces RTP.
//!
//! Owns the open `WavRecorder`s. Commands of one recording are handled in order;
//! finishing (fsync of file and directory, hashing the whole file) runs on a short-
//! lived thread per recording, so a long conversation being finished does not hold
//! up the writes of the others. Every answer goes back to the engine as a
//! `SinkResult`. Must not decide anything about calls.

use super::core::{RecordingId, SinkCommand, SinkResult};
use crate::call::Channels;
use crate::wav::{RecorderConfig, WavRecorder};
use std::collections::HashMap;
use std::sync::mpsc;

pub struct RecordingSink {
    commands: mpsc::Sender<SinkCommand>,
}

struct Open {
    recorder: WavRecorder,
    /// The first write error; later audio is not written, what came before is kept.
    failed: Option<String>,
    left: Vec<i16>,
    right: Vec<i16>,
}

impl RecordingSink {
    /// Starts the sink's thread; `results` is called on that thread (or a finishing
    /// one) with every answer.
    pub fn spawn(results: impl Fn(SinkResult) + Send + Sync + 'static) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<SinkCommand>();
        let results = std::sync::Arc::new(results);
        std::thread::Builder::new()
            .name("recordings".into())
            .spawn(move || run(rx, results))?;
        Ok(RecordingSink { commands: tx })
    }

    pub fn send(&self, cmd: SinkCommand) {
        let _ = self.commands.send(cmd);
    }
}

fn run(
    commands: mpsc::Receiver<SinkCommand>,
    results: std::sync::Arc<dyn Fn(SinkResult) + Send + Sync>,
) {
    let mut open: HashMap<RecordingId, Open> = HashMap::new();
    while let Ok(cmd) = commands.recv() {
        match cmd {
            SinkCommand::Open { id, path, channels } => {
                let config = RecorderConfig {
                    channels,
                    ..RecorderConfig::default()
                };
                match WavRecorder::create(&path, config) {
                    Ok(recorder) => {
                        open.insert(
                            id,
                            Open {
                                recorder,
                                failed: None,
                                left: Vec::new(),
                                right: Vec::new(),
                            },
                        );
                    }
                    Err(e) => results(SinkResult::OpenFailed {
                        id,
                        error: e.to_string(),
                    }),
                }
            }
            SinkCommand::Write { id, samples } => {
                let Some(o) = open.get_mut(&id) else { continue };
                if o.failed.is_some() {
                    continue;
                }
                let written = match o.recorder.channels() {
                    Channels::Mono => o.recorder.write_mono(&samples),
                    Channels::Stereo => {
                        o.left.clear();
                        o.right.clear();
                        for pair in samples.chunks_exact(2) {
                            o.left.push(pair[0]);
                            o.right.push(pair[1]);
                        }
                        o.recorder.write_stereo(&o.left, &o.right)
                    }
                };
                if let Err(e) = written {
                    tracing::error!(
                        path = %o.recorder.path().display(),
                        "recording write failed: {e}"
                    );
                    o.failed = Some(e.to_string());
                }
            }
            SinkCommand::Finish { id, keep_samples } => {
                let Some(o) = open.remove(&id) else { continue };
                let results = results.clone();
                let finish = move || {
                    let Open {
                        recorder, failed, ..
                    } = o;
                    let finished = match keep_samples {
                        Some(k) if k < recorder.samples() => recorder.finish_truncated(k),
                        _ => recorder.finish(),
                    }
                    .map_err(|e| e.to_string());
                    let result = match (failed, finished) {
                        (None, r) => r,
                        (Some(e), Ok(info)) => Err(format!(
                            "{e} (audio up to the failure kept in {})",
                            info.path.display()
                        )),
                        (Some(e), Err(f)) => Err(format!("{e}; then {f}")),
                    };
                    results(SinkResult::Finished { id, result });
                };
                if std::thread::Builder::new()
                    .name("recording-finish".into())
                    .spawn(finish)
                    .is_err()
                {
                    tracing::error!("cannot start a thread to finish a recording");
                }
            }
        }
    }
}
