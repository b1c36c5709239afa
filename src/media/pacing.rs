//! When the media clock sends each 20 ms frame, sans-IO: frame k is due k × 20 ms
//! after the clock's start, and this says, at each wake, whether a frame goes now,
//! whether time has to be skipped first, and when to wake next.
//!
//! After a late wake the clock neither bursts nor drops audio:
//!
//! - Behind by up to `MAX_CATCH_UP_FRAMES`, the owed frames go one per
//!   `CATCH_UP_SPACING` (10 ms, twice the normal rate) until the schedule is met
//!   again: packets at most 60 ms late, which a receiver's jitter buffer absorbs, and
//!   never two packets of a stream back to back.
//! - Behind by more, packets that late would be discarded by most jitter buffers (the
//!   caller would lose words), and catching up at twice the rate would cost the most
//!   CPU exactly when there is least. So the excess becomes a gap in time: each
//!   stream's RTP timestamp jumps over it and the next packet carries the marker bit
//!   (RFC 3551 §4.1, as after silence suppression), and the audio goes on from where
//!   it stopped. The caller hears a pause, not a cut.
//!
//! Before, the clock was a tokio interval with `MissedTickBehavior::Burst`: after a
//! stall every missed tick ran at once and each stream sent all its owed packets
//! back to back.

use std::time::Duration;

/// One frame.
pub const FRAME: Duration = Duration::from_millis(super::core::FRAME_MS);
/// Frames behind schedule that are made good by sending faster; more becomes a gap.
pub const MAX_CATCH_UP_FRAMES: u64 = 3;
/// Time between two frames while catching up.
pub const CATCH_UP_SPACING: Duration = Duration::from_millis(10);

/// What to do at a wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Whether one frame goes out now.
    pub send: bool,
    /// Frames of time to skip (timestamps jump, nothing sent) before that frame.
    pub skip: u32,
    /// How far behind the schedule the clock was at this wake: the oldest owed
    /// frame's lateness (zero when nothing was owed).
    pub late: Duration,
    /// When the frame sent at this wake was due, from the clock's start: its send
    /// slots are due from there (`core::SEND_SLOTS`).
    pub due: Duration,
    /// When to wake next, from the clock's start.
    pub wake_at: Duration,
}

#[derive(Debug, Default)]
pub struct FramePacer {
    /// The next frame to send (or skip).
    next: u64,
}

impl FramePacer {
    pub fn new() -> FramePacer {
        FramePacer::default()
    }

    fn due(frame: u64) -> Duration {
        FRAME * frame.min(u32::MAX as u64) as u32
    }

    /// Frames sent or skipped so far.
    pub fn frames(&self) -> u64 {
        self.next
    }

    /// A wake at `elapsed` since the clock's start.
    pub fn poll(&mut self, elapsed: Duration) -> Plan {
        let due_now = (elapsed.as_nanos() / FRAME.as_nanos()) as u64 + 1;
        let owed = due_now.saturating_sub(self.next);
        if owed == 0 {
            return Plan {
                send: false,
                skip: 0,
                late: Duration::ZERO,
                due: Self::due(self.next),
                wake_at: Self::due(self.next),
            };
        }
        let late = elapsed.saturating_sub(Self::due(self.next));
        // The frame due at this moment is not behind; those before it are.
        let behind = owed - 1;
        let skip = if behind > MAX_CATCH_UP_FRAMES {
            behind
        } else {
            0
        };
        self.next += skip + 1;
        let wake_at = if Self::due(self.next) <= elapsed {
            elapsed + CATCH_UP_SPACING
        } else {
            Self::due(self.next)
        };
        Plan {
            send: true,
            skip: skip.min(u32::MAX as u64) as u32,
            late,
            due: Self::due(self.next - 1),
            wake_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{Codec, MediaCommand};
    use crate::config::PortRange;
    use crate::media::core::{EngineCommand, InbandPolicy, MediaConfig, MediaCore};
    use crate::media::prompt::{Prompt, PromptAudio};
    use crate::media::rtp::SAMPLES_PER_FRAME;
    use rand::SeedableRng;
    use std::net::SocketAddr;
    use std::sync::Arc;

    const MS: Duration = Duration::from_millis(1);

    /// Wakes the pacer as a timer would (at `wake_at`), except that the wakes in
    /// `stalls` (start, length) happen only when the stall ends; returns the times at
    /// which frames were sent and the skips.
    fn drive(until: Duration, stalls: &[(Duration, Duration)]) -> Vec<(Duration, Plan)> {
        let mut p = FramePacer::new();
        let mut at = Duration::ZERO;
        let mut out = Vec::new();
        while at < until {
            if let Some(&(start, len)) = stalls.iter().find(|(s, l)| at >= *s && at < *s + *l) {
                at = start + len;
            }
            let plan = p.poll(at);
            if plan.send {
                out.push((at, plan));
            }
            assert!(
                plan.wake_at > at,
                "the next wake is later: {plan:?} at {at:?}"
            );
            at = plan.wake_at;
        }
        out
    }

    #[test]
    fn a_plan_says_when_the_frame_it_sends_was_due() {
        let mut p = FramePacer::new();
        let plan = p.poll(Duration::ZERO);
        assert_eq!((plan.send, plan.due), (true, Duration::ZERO));
        let plan = p.poll(25 * MS);
        assert_eq!((plan.send, plan.due, plan.late), (true, 20 * MS, 5 * MS));
        // Far behind: the skipped frames are jumped over, and the frame sent is the
        // one due now, so its send slots are not all overdue.
        let plan = p.poll(200 * MS);
        assert_eq!((plan.send, plan.skip, plan.due), (true, 8, 200 * MS));
    }

    #[test]
    fn an_on_time_clock_sends_one_frame_per_frame_time() {
        let sent = drive(1000 * MS, &[]);
        assert_eq!(sent.len(), 50);
        for (i, (at, plan)) in sent.iter().enumerate() {
            assert_eq!(*at, FRAME * i as u32);
            assert_eq!((plan.skip, plan.late), (0, Duration::ZERO));
        }
    }

    #[test]
    fn a_short_stall_is_made_good_at_twice_the_rate_without_a_burst() {
        // Frames due at 100..=160 ms wait until 160 ms.
        let sent = drive(400 * MS, &[(100 * MS, 60 * MS)]);
        assert_eq!(sent.len(), 20, "every frame up to 380 ms is sent");
        assert!(sent.iter().all(|(_, p)| p.skip == 0));
        for w in sent.windows(2) {
            assert!(w[1].0 - w[0].0 >= CATCH_UP_SPACING, "{w:?}");
        }
        let late: Vec<u64> = sent
            .iter()
            .filter(|(_, p)| !p.late.is_zero())
            .map(|(_, p)| p.late.as_millis() as u64)
            .collect();
        assert_eq!(late, [60, 50, 40, 30, 20, 10]);
    }

    #[test]
    fn a_long_stall_becomes_a_gap_in_time() {
        // 500 ms without a wake: at 600 ms the 25 frames due from 100 ms are skipped.
        let sent = drive(1000 * MS, &[(100 * MS, 500 * MS)]);
        let (at, plan) = sent.iter().find(|(_, p)| p.skip > 0).copied().unwrap();
        assert_eq!(at, 600 * MS);
        assert_eq!(plan.late, 500 * MS);
        assert_eq!(plan.skip, 25);
        // Back on schedule at once: sent + skipped frames match elapsed time.
        let frames: u64 = sent.iter().map(|(_, p)| 1 + p.skip as u64).sum();
        assert_eq!(frames, 50);
        let after: Vec<Duration> = sent.iter().map(|(t, _)| *t).filter(|t| *t > at).collect();
        assert_eq!(after.first(), Some(&(620 * MS)));
    }

    /// The media core driven by the pacer in simulated time, with the clock stalled
    /// twice while a prompt plays: every frame of the prompt reaches the caller, in
    /// order; the stream's packets never come closer than 10 ms; sequence numbers
    /// have no hole; the long stall shows as one timestamp jump with the marker bit.
    #[test]
    fn a_prompt_survives_stalls_whole_and_unbursted() {
        let mut core = MediaCore::new(
            MediaConfig {
                ports: PortRange {
                    first: 20000,
                    last: 20010,
                },
                rtp_timeout: Duration::ZERO,
                inband: InbandPolicy::Never,
                latch: false,
            },
            &mut rand::rngs::StdRng::seed_from_u64(5),
        );
        let caller: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        core.handle_command(
            EngineCommand::Sip(MediaCommand::Allocate {
                call: 1,
                local_ip: [127, 0, 0, 1].into(),
            }),
            0,
        );
        core.handle_command(
            EngineCommand::Sip(MediaCommand::Start {
                call: 1,
                remote: Some(caller),
                signal_ip: caller.ip(),
                codec: Codec::Pcmu,
                telephone_event_pt: None,
                send: true,
                confirmed: true,
                srtp: None,
            }),
            0,
        );
        // 100 frames, each at its own level, so each frame's bytes are its own.
        let pcm: Vec<i16> = (0..100)
            .flat_map(|f: i16| std::iter::repeat_n(f * 300 - 15_000, SAMPLES_PER_FRAME as usize))
            .collect();
        let prompt = Arc::new(Prompt::new(PromptAudio::new("numbered", pcm)));
        core.handle_command(
            EngineCommand::Play {
                call: 1,
                token: 1,
                prompts: vec![prompt.clone()],
                looping: false,
            },
            0,
        );
        let stalls = [(300 * MS, 50 * MS), (900 * MS, 400 * MS)];
        let mut p = FramePacer::new();
        let mut at = Duration::ZERO;
        let mut packets: Vec<(Duration, Vec<u8>)> = Vec::new();
        while at < 3000 * MS {
            if let Some(&(s, l)) = stalls.iter().find(|(s, l)| at >= *s && at < *s + *l) {
                at = s + l;
            }
            let plan = p.poll(at);
            if plan.send {
                if plan.skip > 0 {
                    core.skip_frames(plan.skip);
                }
                core.tick(at.as_millis() as u64, &mut |_, to, pkt| {
                    assert_eq!(to, caller);
                    packets.push((at, pkt.to_vec()));
                });
            }
            at = plan.wake_at;
        }
        for w in packets.windows(2) {
            assert!(w[1].0 - w[0].0 >= CATCH_UP_SPACING, "burst at {:?}", w[1].0);
        }
        fn reader(b: &[u8]) -> rtp_rs::RtpReader<'_> {
            rtp_rs::RtpReader::new(b).expect("RTP")
        }
        let mut jumps = Vec::new();
        for w in packets.windows(2) {
            let (a, b) = (reader(&w[0].1), reader(&w[1].1));
            assert_eq!(
                b.sequence_number(),
                a.sequence_number().next(),
                "no sequence hole"
            );
            let step = b.timestamp().wrapping_sub(a.timestamp());
            if step != SAMPLES_PER_FRAME {
                assert!(b.mark(), "a timestamp jump is marked");
                jumps.push(step / SAMPLES_PER_FRAME);
            }
        }
        // The 400 ms stall: the frames due from 900 to 1280 ms are skipped at 1300 ms
        // and the one due then is sent: one step of 21 frames.
        assert_eq!(jumps, [21]);
        let encoded = prompt.encoded(Codec::Pcmu);
        let heard: Vec<&[u8]> = packets.iter().map(|(_, b)| reader(b).payload()).collect();
        let expected: Vec<&[u8]> = encoded.frames().collect();
        assert_eq!(expected.len(), 100);
        assert_eq!(&heard[..100], &expected[..], "every prompt frame, in order");
        let silence = [Codec::Pcmu.silence_byte(); SAMPLES_PER_FRAME as usize];
        assert!(heard[100..].iter().all(|f| *f == silence));
    }
}
