//! The timer probe: a thread that sleeps in 20 ms steps and records how late it
//! wakes. When the probe is late too, the machine stalled, not the server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(i64, u32)>>,
}

impl Probe {
    pub fn start() -> std::io::Result<Probe> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("timer-probe".into())
            .spawn(move || {
                let mut samples = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    let before = super::net::monotonic_ns();
                    std::thread::sleep(Duration::from_millis(20));
                    let after = super::net::monotonic_ns();
                    let late_us = ((after - before - 20_000_000).max(0) / 1000) as u32;
                    samples.push((after, late_us));
                }
                samples
            })?;
        Ok(Probe { stop, thread })
    }

    /// Stops the thread; returns (wake-up time ns, lateness µs) pairs.
    pub fn finish(self) -> Vec<(i64, u32)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}
