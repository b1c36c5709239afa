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
                normal_scheduling();
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

/// The probe stands for any normal thread on the machine, whatever class the
/// generator runs in (`bench/ivr-load.sh` can put it in the idle class, so that
/// the stand-in for remote phones does not compete with the machine it measures):
/// this thread goes back to the normal policy, keeping the process's nice value.
fn normal_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a valid parameter for the calling thread (pid 0).
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
    if rc != 0 {
        eprintln!(
            "loadgen: the timer probe could not take normal scheduling: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_thread_leaves_the_idle_class_the_generator_runs_in() {
        let policy = std::thread::spawn(|| {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: a valid parameter for the calling thread.
            assert_eq!(
                unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) },
                0
            );
            // SAFETY: no arguments beyond the calling thread.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_IDLE);
            normal_scheduling();
            // SAFETY: as above.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_OTHER);
    }
}
