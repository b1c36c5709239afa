//! Real-time scheduling for the media threads (the 20 ms clock and the RTP receive
//! thread), as Asterisk (`-p`) and FreeSWITCH do for theirs: when the machine is busy,
//! a normal thread waits for a core behind everything else, and what callers hear
//! stretches by that wait. At 2,000 talking calls on two cores shared with the load
//! generator, the send deviation p99 went from 10 ms to under 2 ms with the clock
//! at `SCHED_RR` (`docs/load-testing.md`). Signalling, the console and storage stay
//! at normal priority: a SIP flood must not take the machine from its administrator.

use std::io;

pub use crate::config::MAX_REALTIME_PRIORITY as MAX_PRIORITY;

/// Puts the calling thread under `SCHED_RR` at `priority`; 0 leaves it as it is.
/// Fails with `PermissionDenied` without `CAP_SYS_NICE` or a `RLIMIT_RTPRIO` (systemd
/// `LimitRTPRIO=`) that allows the priority.
pub fn raise_current_thread(priority: u8) -> io::Result<()> {
    if priority == 0 {
        return Ok(());
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority.min(MAX_PRIORITY)),
    };
    // SAFETY: sets the scheduling of the calling thread only; `param` outlives the call.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_RR, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// The calling thread's scheduling policy and real-time priority.
pub fn current_thread_policy() -> (i32, i32) {
    let mut policy = 0;
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: reads the calling thread's own scheduling into locals.
    unsafe { libc::pthread_getschedparam(libc::pthread_self(), &mut policy, &mut param) };
    (policy, param.sched_priority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_leaves_the_thread_alone_and_a_priority_applies_when_permitted() {
        std::thread::spawn(|| {
            let before = current_thread_policy();
            raise_current_thread(0).unwrap();
            assert_eq!(current_thread_policy(), before);
            match raise_current_thread(5) {
                Ok(()) => assert_eq!(current_thread_policy(), (libc::SCHED_RR, 5)),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
                    assert_eq!(current_thread_policy(), before);
                }
            }
        })
        .join()
        .unwrap();
    }
}
