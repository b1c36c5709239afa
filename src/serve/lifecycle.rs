//! The server's life after start-up: reload on SIGHUP, drain and stop on SIGTERM, and
//! what systemd is told about it (`sd_notify`: READY, RELOADING, STOPPING, WATCHDOG).

use super::{admission_config, load};
use crate::app::Switchboard;
use crate::config::Config;
use sd_notify::NotifyState;
use std::time::{Duration, Instant};

/// How `serve` was started, beyond the configuration.
pub struct ServeOptions {
    /// On SIGTERM: refuse new calls and give calls in progress this long to end before
    /// hanging them up (zero: hang up at once).
    pub drain: Duration,
    /// Reads the configuration again, from the same file and overrides (SIGHUP).
    pub reload: Box<dyn Fn() -> Result<Config, Vec<String>> + Send>,
}

/// Where the server is between its start and its exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// New calls refused; calls in progress may end on their own until then.
    Draining {
        until: Instant,
    },
    /// Every call hung up; BYE transactions get until then to complete.
    HangingUp {
        until: Instant,
    },
}

impl Phase {
    pub fn deadline(self) -> Option<Instant> {
        match self {
            Phase::Running => None,
            Phase::Draining { until } | Phase::HangingUp { until } => Some(until),
        }
    }

    pub fn hanging_up(self) -> bool {
        matches!(self, Phase::HangingUp { .. })
    }
}

/// Time BYE transactions and the trunks' un-registrations get before the exit.
const HANG_UP_GRACE: Duration = Duration::from_secs(3);

/// A stop was asked for (SIGTERM, Ctrl-C): the next phase. A second stop during a
/// drain hangs up at once.
pub fn stop(sb: &mut Switchboard, phase: Phase, drain: Duration, now: Instant) -> Phase {
    notify(&[NotifyState::Stopping]);
    sb.ep.stop_admitting();
    if phase == Phase::Running && !drain.is_zero() && sb.ep.call_count() > 0 {
        tracing::info!(
            calls = sb.ep.call_count(),
            drain_s = drain.as_secs(),
            "draining: new calls are refused, calls in progress may end"
        );
        return Phase::Draining { until: now + drain };
    }
    hang_up(sb, now)
}

/// Hangs up every call and un-registers the trunks.
pub fn hang_up(sb: &mut Switchboard, now: Instant) -> Phase {
    tracing::info!(
        calls = sb.ep.call_count(),
        "shutting down: hanging up every call"
    );
    sb.ep.stop_admitting();
    sb.ep.hangup_all(now);
    sb.shutdown_trunks(now);
    sb.after_input(now);
    Phase::HangingUp {
        until: now + HANG_UP_GRACE,
    }
}

/// SIGHUP: reads the configuration, flow and prompts again and checks them as
/// `hotline check` does. New calls get the new flow and prompts and the new limits;
/// calls in progress keep theirs. Anything wrong: the old ones stay, and the log says
/// why. Settings that only a restart can change are named in the log.
pub fn reload(sb: &mut Switchboard, cfg: &mut Config, options: &ServeOptions) {
    notify(&[NotifyState::Reloading]);
    let result = (options.reload)().and_then(|new| {
        let (flow, prompts) = load::call_flow(&new)?;
        let mut problems = load::path_limit_problems(&flow, &prompts);
        let mut unused_seed = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
        if let Err(errors) = super::trunks::from_config(&new, &mut unused_seed) {
            problems.extend(errors);
        }
        if problems.is_empty() {
            Ok((new, flow, prompts))
        } else {
            Err(problems)
        }
    });
    match result {
        Ok((new, flow, prompts)) => {
            let restart: Vec<&str> = restart_only_changes(cfg, &new);
            if !restart.is_empty() {
                tracing::warn!(
                    sections = restart.join(", "),
                    "reload: these settings take effect at the next start"
                );
            }
            sb.app.replace_flow(flow, prompts);
            sb.ep.set_admission(admission_config(&new));
            cfg.ivr = new.ivr;
            cfg.prompts = new.prompts;
            cfg.limits = new.limits;
            tracing::info!("reloaded: new calls get the flow, prompts and limits read now");
        }
        Err(problems) => {
            for p in &problems {
                tracing::error!("reload refused: {p}");
            }
            tracing::error!(
                problems = problems.len(),
                "reload refused: calls go on with the flow, prompts and settings they had"
            );
        }
    }
    notify(&[NotifyState::Ready]);
}

/// Sections a reload does not apply (listeners, storage, keys, queue and operator
/// rules held by running state).
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut out = Vec::new();
    for (name, changed) in [
        ("sip", differs(&old.sip, &new.sip)),
        ("rtp", differs(&old.rtp, &new.rtp)),
        ("storage", differs(&old.storage, &new.storage)),
        ("privacy", differs(&old.privacy, &new.privacy)),
        ("operators", differs(&old.operators, &new.operators)),
        ("queue", differs(&old.queue, &new.queue)),
        ("log", differs(&old.log, &new.log)),
        ("retention", differs(&old.retention, &new.retention)),
        ("trunks", differs(&old.trunks, &new.trunks)),
        ("console", differs(&old.console, &new.console)),
        ("metrics", differs(&old.metrics, &new.metrics)),
        ("tls", differs(&old.tls, &new.tls)),
    ] {
        if changed {
            out.push(name);
        }
    }
    out
}

/// Tells systemd (when it started us with `Type=notify`); a no-op elsewhere.
pub fn notify(states: &[NotifyState]) {
    let _ = sd_notify::notify(false, states);
}

/// The interval at which the main loop proves to systemd that it still turns, if
/// `WatchdogSec=` is set: half the watchdog's timeout.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}
