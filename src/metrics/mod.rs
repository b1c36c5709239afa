//! Prometheus metrics: what the hotline counts, in the OpenMetrics text format that
//! `/metrics` serves (the console module runs that listener).
//!
//! Counters and histograms fed as things happen ([`tally`] turns the switchboard's
//! effects into facts; the store writer's batches are timed by the shell), and
//! figures read from the live state at scrape time ([`LiveFigures`], answered by the
//! serve loop like a control request). Labels are fixed vocabularies (outcomes, end
//! reasons, states, counter names): nothing about a caller ever becomes a label.

pub mod tally;

use crate::media::engine::{ClockLateness, LATENESS_BOUNDS_US};
use crate::sip::endpoint::Stats;
use crate::sip::transport::TransportCounts;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally::Fact;
use tokio::sync::{mpsc, oneshot};

/// The content type of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Operator states, every one reported (zero when nobody is in it).
pub const OPERATOR_STATES: [&str; 6] = [
    "offline",
    "available",
    "ringing",
    "on_call",
    "wrap_up",
    "paused",
];

/// What the serve loop reports at scrape time.
#[derive(Debug, Clone)]
pub struct LiveFigures {
    /// Answered dialogs in progress (callers and operator legs).
    pub active_calls: u64,
    /// Every call the endpoint holds, ringing and ending ones included.
    pub calls: u64,
    pub queue_callers: u64,
    /// Operators per state name of [`OPERATOR_STATES`].
    pub operators: Vec<(&'static str, u64)>,
    /// Live registration bindings of operator phones.
    pub registrations: u64,
    pub sip: Stats,
    pub transport: TransportCounts,
}

impl LiveFigures {
    pub fn empty() -> LiveFigures {
        LiveFigures {
            active_calls: 0,
            calls: 0,
            queue_callers: 0,
            operators: Vec::new(),
            registrations: 0,
            sip: Stats::default(),
            transport: TransportCounts {
                send_errors: 0,
                queue_full: 0,
                tcp_refused: 0,
                tcp_message_timeouts: 0,
                tls_handshake_failures: 0,
            },
        }
    }
}

/// A scrape's question to the serve loop.
pub type FiguresRequest = oneshot::Sender<LiveFigures>;

/// The channel the serve loop answers figure requests on.
pub fn figures_channel() -> (mpsc::Sender<FiguresRequest>, mpsc::Receiver<FiguresRequest>) {
    mpsc::channel(16)
}

type Label = Vec<(&'static str, String)>;

fn label(key: &'static str, value: impl Into<String>) -> Label {
    vec![(key, value.into())]
}

/// Every metric of the hotline.
pub struct Metrics {
    registry: Registry,
    calls: Family<Label, Counter>,
    calls_ended: Family<Label, Counter>,
    queue_wait: Family<Label, Histogram>,
    recordings: Family<Label, Counter>,
    recording_bytes: Family<Label, Counter>,
    store_commit: Histogram,
    logins: Family<Label, Counter>,
    live: Arc<LiveCollector>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn wait_histogram() -> Histogram {
    // 1 s to about 34 min.
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let calls = Family::<Label, Counter>::default();
        registry.register(
            "hotline_calls",
            "Callers' calls ended, by outcome (operator, voicemail, abandoned, ivr)",
            calls.clone(),
        );
        let calls_ended = Family::<Label, Counter>::default();
        registry.register(
            "hotline_calls_ended",
            "Calls ended (callers and operator legs), by end reason",
            calls_ended.clone(),
        );
        let queue_wait =
            Family::<Label, Histogram>::new_with_constructor(wait_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "hotline_queue_wait",
            "Time callers waited in the queue, by how the wait ended (answered, abandoned, voicemail)",
            Unit::Seconds,
            queue_wait.clone(),
        );
        let recordings = Family::<Label, Counter>::default();
        registry.register(
            "hotline_recordings",
            "Recordings stored, by kind (voicemail, conversation)",
            recordings.clone(),
        );
        let recording_bytes = Family::<Label, Counter>::default();
        registry.register_with_unit(
            "hotline_recording",
            "Bytes of recordings stored since start, by kind",
            Unit::Bytes,
            recording_bytes.clone(),
        );
        // 100 us to about 3.3 s.
        let store_commit = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register_with_unit(
            "hotline_store_commit",
            "Time the store writer took per batch (one transaction, one fsync)",
            Unit::Seconds,
            store_commit.clone(),
        );
        let logins = Family::<Label, Counter>::default();
        registry.register(
            "hotline_console_logins",
            "Console login attempts, by result (ok, wrong_password, locked_out, busy)",
            logins.clone(),
        );
        let live = Arc::new(LiveCollector {
            figures: Mutex::new(LiveFigures::empty()),
            lateness: std::sync::OnceLock::new(),
            srtp_drops: std::sync::OnceLock::new(),
        });
        registry.register_collector(Box::new(SharedLive(live.clone())));
        Metrics {
            registry,
            calls,
            calls_ended,
            queue_wait,
            recordings,
            recording_bytes,
            store_commit,
            logins,
            live,
        }
    }

    /// Counts what happened.
    pub fn record(&self, fact: &Fact) {
        match fact {
            Fact::CallOutcome(o) => {
                self.calls
                    .get_or_create(&label("outcome", o.as_str()))
                    .inc();
            }
            Fact::CallEnded(reason) => {
                self.calls_ended
                    .get_or_create(&label("reason", reason.clone()))
                    .inc();
            }
            Fact::QueueResult { outcome, waited } => {
                if let Some(w) = waited {
                    self.queue_wait
                        .get_or_create(&label("outcome", *outcome))
                        .observe(w.as_secs_f64());
                }
            }
            Fact::Recording { kind, bytes } => {
                self.recordings.get_or_create(&label("kind", *kind)).inc();
                self.recording_bytes
                    .get_or_create(&label("kind", *kind))
                    .inc_by(*bytes);
            }
        }
    }

    /// The media clock whose lateness `/metrics` reports (set once, when media starts).
    pub fn attach_clock(&self, lateness: Arc<ClockLateness>) {
        let _ = self.live.lateness.set(lateness);
    }

    /// The media layer's count of dropped SRTP packets (set once, when media starts).
    pub fn attach_srtp_drops(&self, drops: Arc<crate::media::srtp_leg::SrtpDrops>) {
        let _ = self.live.srtp_drops.set(drops);
    }

    pub fn store_batch(&self, took: Duration) {
        self.store_commit.observe(took.as_secs_f64());
    }

    /// A console login attempt: "ok", "wrong_password", "locked_out" or "busy".
    pub fn login(&self, result: &'static str) {
        self.logins.get_or_create(&label("result", result)).inc();
    }

    /// The text a scrape gets, with `figures` as the live values.
    pub fn encode(&self, figures: LiveFigures) -> String {
        *self.live.figures.lock().unwrap_or_else(|p| p.into_inner()) = figures;
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("metrics encoding failed: {e}");
        }
        out
    }
}

/// Values read at scrape time: the serve loop's figures and the media clock.
#[derive(Debug)]
struct LiveCollector {
    figures: Mutex<LiveFigures>,
    lateness: std::sync::OnceLock<Arc<ClockLateness>>,
    srtp_drops: std::sync::OnceLock<Arc<crate::media::srtp_leg::SrtpDrops>>,
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value.min(i64::MAX as u64) as i64);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    key: &'static str,
    values: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (v, n) in values {
        let labels = [(key, *v)];
        ConstCounter::new(*n).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The registry owns its collectors; this one is shared with `Metrics::encode`.
#[derive(Debug)]
struct SharedLive(Arc<LiveCollector>);

impl Collector for SharedLive {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode_into(encoder)
    }
}

impl LiveCollector {
    fn encode_into(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let f = self
            .figures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        gauge(
            &mut encoder,
            "hotline_active_calls",
            "Answered calls in progress (callers and operator legs)",
            f.active_calls,
        )?;
        gauge(
            &mut encoder,
            "hotline_sip_calls",
            "Calls the SIP endpoint holds, ringing and ending ones included",
            f.calls,
        )?;
        gauge(
            &mut encoder,
            "hotline_queue_callers",
            "Callers waiting in the operator queue",
            f.queue_callers,
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "hotline_operators",
                "Operators by state",
                None,
                MetricType::Gauge,
            )?;
            for state in OPERATOR_STATES {
                let n = f
                    .operators
                    .iter()
                    .filter(|(s, _)| *s == state)
                    .map(|(_, n)| *n)
                    .sum::<u64>();
                let labels = [("state", state)];
                ConstGauge::new(n.min(i64::MAX as u64) as i64)
                    .encode(metric.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut encoder,
            "hotline_operator_registrations",
            "Live registrations of operator phones",
            f.registrations,
        )?;
        let s = f.sip;
        counter_family(
            &mut encoder,
            "hotline_sip_dropped",
            "SIP messages the endpoint refused or dropped, by reason",
            "reason",
            &[
                ("rate_limited", s.rate_limited),
                ("malformed", s.malformed),
                ("refused", s.refused),
                ("busy", s.busy),
                ("overload", s.overload),
                ("stray_response", s.stray_responses),
            ],
        )?;
        counter_family(
            &mut encoder,
            "hotline_sip_retransmissions_absorbed",
            "Retransmitted SIP requests answered from the transaction without new work",
            "kind",
            &[("request", s.retransmissions_absorbed)],
        )?;
        let t = f.transport;
        counter_family(
            &mut encoder,
            "hotline_sip_transport_errors",
            "SIP transport failures, by kind",
            "kind",
            &[
                ("send_error", t.send_errors),
                ("queue_full", t.queue_full),
                ("tcp_refused", t.tcp_refused),
                ("tcp_message_timeout", t.tcp_message_timeouts),
                ("tls_handshake_failure", t.tls_handshake_failures),
            ],
        )?;
        let d = self
            .srtp_drops
            .get()
            .map(|d| d.counts())
            .unwrap_or_default();
        counter_family(
            &mut encoder,
            "hotline_srtp_dropped",
            "Received SRTP packets dropped, by reason (auth_failed, replayed, malformed)",
            "reason",
            &[
                ("auth_failed", d.auth_failed),
                ("replayed", d.replayed),
                ("malformed", d.malformed),
            ],
        )?;
        let clock = self.lateness.get();
        gauge(
            &mut encoder,
            "hotline_overloaded",
            "1 while the media clock is too late to take new calls (they get 503), else 0",
            u64::from(clock.is_some_and(|c| c.overloaded())),
        )?;
        let l = match clock {
            Some(l) => l.counts(),
            None => ClockLateness::default().counts(),
        };
        let mut buckets: Vec<(f64, u64)> = LATENESS_BOUNDS_US
            .iter()
            .zip(l.buckets.iter())
            .map(|(b, n)| (*b as f64 / 1e6, *n))
            .collect();
        buckets.push((f64::MAX, l.buckets[LATENESS_BOUNDS_US.len()]));
        let metric = encoder.encode_descriptor(
            "hotline_rtp_send_lateness",
            "How late the media clock sent each 20 ms tick's packets against its schedule",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        let mut metric = metric;
        metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            l.sum_us as f64 / 1e6,
            l.count,
            &buckets,
            None,
        )?;
        Ok(())
    }
}

/// The lateness under which `q` (0..1) of the clock's ticks fell, from the histogram's
/// buckets (the bucket's upper bound; None before the first tick).
pub fn lateness_quantile(
    counts: &crate::media::engine::LatenessCounts,
    q: f64,
) -> Option<Duration> {
    if counts.count == 0 {
        return None;
    }
    let want = (q * counts.count as f64).ceil() as u64;
    let mut seen = 0;
    for (i, n) in counts.buckets.iter().enumerate() {
        seen += n;
        if seen >= want {
            return Some(match LATENESS_BOUNDS_US.get(i) {
                Some(us) => Duration::from_micros(*us),
                None => Duration::MAX,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::console::Outcome;

    #[test]
    fn text_has_every_family_and_no_caller_data() {
        let lateness = Arc::new(ClockLateness::default());
        lateness.observe(Duration::from_micros(300));
        lateness.observe(Duration::from_millis(3));
        let m = Metrics::new();
        m.attach_clock(lateness.clone());
        lateness.set_overloaded(true);
        m.record(&Fact::CallOutcome(Outcome::Voicemail));
        m.record(&Fact::CallEnded("caller-bye".into()));
        m.record(&Fact::QueueResult {
            outcome: "answered",
            waited: Some(Duration::from_secs(3)),
        });
        m.record(&Fact::Recording {
            kind: "voicemail",
            bytes: 16_044,
        });
        m.store_batch(Duration::from_millis(2));
        m.login("wrong_password");
        let text = m.encode(LiveFigures {
            active_calls: 1,
            calls: 2,
            queue_callers: 3,
            operators: vec![("available", 2), ("paused", 1)],
            registrations: 4,
            sip: Stats {
                rate_limited: 5,
                overload: 9,
                ..Stats::default()
            },
            transport: TransportCounts {
                send_errors: 0,
                queue_full: 0,
                tcp_refused: 6,
                tcp_message_timeouts: 7,
                tls_handshake_failures: 8,
            },
        });
        for line in [
            "hotline_active_calls 1",
            "hotline_sip_calls 2",
            "hotline_queue_callers 3",
            "hotline_operators{state=\"available\"} 2",
            "hotline_operators{state=\"ringing\"} 0",
            "hotline_operator_registrations 4",
            "hotline_sip_dropped_total{reason=\"rate_limited\"} 5",
            "hotline_sip_dropped_total{reason=\"overload\"} 9",
            "hotline_overloaded 1",
            "hotline_sip_transport_errors_total{kind=\"tcp_refused\"} 6",
            "hotline_sip_transport_errors_total{kind=\"tcp_message_timeout\"} 7",
            "hotline_sip_transport_errors_total{kind=\"tls_handshake_failure\"} 8",
            "hotline_calls_total{outcome=\"voicemail\"} 1",
            "hotline_calls_ended_total{reason=\"caller-bye\"} 1",
            "hotline_queue_wait_seconds_count{outcome=\"answered\"} 1",
            "hotline_recordings_total{kind=\"voicemail\"} 1",
            "hotline_recording_bytes_total{kind=\"voicemail\"} 16044",
            "hotline_store_commit_seconds_count 1",
            "hotline_console_logins_total{result=\"wrong_password\"} 1",
            "hotline_rtp_send_lateness_seconds_count 2",
            "hotline_rtp_send_lateness_seconds_bucket{le=\"0.0005\"} 1",
            "hotline_rtp_send_lateness_seconds_bucket{le=\"+Inf\"} 2",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        let p99 = lateness_quantile(&lateness.counts(), 0.99).unwrap();
        assert_eq!(p99, Duration::from_millis(5));
        let p50 = lateness_quantile(&lateness.counts(), 0.5).unwrap();
        assert_eq!(p50, Duration::from_micros(500));
    }
}
