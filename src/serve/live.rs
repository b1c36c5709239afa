//! The serve loop's side of the console and the metrics: it watches the effects the
//! switchboard hands the shell (what callers answered, their reference codes, when
//! operators changed state, how calls and waits ended, what was recorded), builds the
//! live board from the queue's snapshot and publishes it (throttled, only on change),
//! answers the console's requests and the metrics endpoint's figure requests.
//!
//! Shell: reads the wall clock for the day's counters; the rules (throttle, change
//! detection, outcome tally) are the sans-IO parts in `console::board` and
//! `metrics::tally`.

use crate::app::{state_name, Effect, Switchboard};
use crate::call::{CallEvent, CallId, WallClock};
use crate::config::Config;
use crate::console::board::{Board, BoardCaller, BoardFrame, BoardOperator, Changes, Throttle};
use crate::console::dates::Calendar;
use crate::console::{LiveCommand, LiveRequest};
use crate::driver::Driver;
use crate::metrics::tally::{Fact, Tally};
use crate::metrics::{FiguresRequest, LiveFigures, Metrics, OPERATOR_STATES};
use crate::queue::core::OperatorState;
use crate::store::console::DayCounts;
use crate::store::{BatchObserver, BatchStage, StoreCommand};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Answers kept per caller for the board (a flow asks a handful of questions).
const MAX_ANSWERS: usize = 32;

#[derive(Debug, Default, Clone)]
struct CallerInfo {
    answers: Vec<(String, String)>,
    reference: Option<String>,
}

pub struct Live {
    board_tx: watch::Sender<Arc<BoardFrame>>,
    throttle: Throttle,
    changes: Changes,
    callers: HashMap<CallId, CallerInfo>,
    /// When each operator (SIP username) entered its current state.
    since: HashMap<String, SystemTime>,
    /// Every account: SIP username -> name.
    accounts: BTreeMap<String, String>,
    tally: Tally,
    facts: Vec<Fact>,
    metrics: Arc<Metrics>,
    calendar: Calendar,
    day: jiff::civil::Date,
    today: DayCounts,
    wall: WallClock,
}

fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Times each store batch for `hotline_store_commit_seconds` (on the writer's thread).
pub fn store_observer(metrics: Arc<Metrics>) -> BatchObserver {
    let mut began: Option<Instant> = None;
    Box::new(move |stage| match stage {
        BatchStage::Begin => began = Some(Instant::now()),
        BatchStage::Done { .. } => {
            if let Some(t) = began.take() {
                metrics.store_batch(t.elapsed());
            }
        }
    })
}

impl Live {
    pub fn new(
        cfg: &Config,
        conn: &rusqlite::Connection,
        wall: WallClock,
        metrics: Arc<Metrics>,
    ) -> Result<(Live, watch::Receiver<Arc<BoardFrame>>), String> {
        let calendar = Calendar::load(&cfg.console.time_zone)
            .map_err(|e| format!("{}: console.time_zone: {e}", cfg.source))?;
        let (board_tx, board_rx) = watch::channel(Arc::new(BoardFrame::new(0, Board::default())));
        let now = SystemTime::now();
        let mut live = Live {
            board_tx,
            throttle: Throttle::new(Duration::from_millis(cfg.console.board_interval_ms)),
            changes: Changes::default(),
            callers: HashMap::new(),
            since: HashMap::new(),
            accounts: BTreeMap::new(),
            tally: Tally::default(),
            facts: Vec::new(),
            metrics,
            day: calendar.today(now),
            calendar,
            today: DayCounts::default(),
            wall,
        };
        live.today = live.counts_of(conn, live.day);
        live.reload_accounts(conn);
        Ok((live, board_rx))
    }

    fn counts_of(&self, conn: &rusqlite::Connection, day: jiff::civil::Date) -> DayCounts {
        let counted = self
            .calendar
            .days(day, day)
            .map_err(|e| e.to_string())
            .and_then(|(a, b)| {
                crate::store::console::day_counts(conn, &a, &b).map_err(|e| e.to_string())
            });
        counted.unwrap_or_else(|e| {
            tracing::error!("cannot count today's calls: {e}");
            DayCounts::default()
        })
    }

    /// Account names changed (or may have): read them again.
    pub fn reload_accounts(&mut self, conn: &rusqlite::Connection) {
        match crate::store::list_operators(conn) {
            Ok(rows) => {
                self.accounts = rows.into_iter().map(|r| (r.sip_username, r.name)).collect();
            }
            Err(e) => tracing::error!("cannot load operator accounts for the board: {e}"),
        }
    }

    /// Something the shell is about to carry out.
    pub fn effect(&mut self, effect: &Effect) {
        if let Effect::Store(cmd) = effect {
            match cmd {
                StoreCommand::Answer {
                    call, key, digits, ..
                } => {
                    let info = self.callers.entry(*call).or_default();
                    if info.answers.len() < MAX_ANSWERS {
                        info.answers.retain(|(k, _)| k != key);
                        info.answers.push((key.clone(), digits.clone()));
                    }
                }
                StoreCommand::Reference { call, code } => {
                    self.callers.entry(*call).or_default().reference = Some(code.clone());
                }
                StoreCommand::Event(CallEvent::Ended { call, .. }) => {
                    self.callers.remove(call);
                }
                StoreCommand::OperatorState { operator, at, .. } => {
                    self.since.insert(operator.clone(), *at);
                }
                _ => {}
            }
        }
        self.tally.effect(effect, &mut self.facts);
        for fact in self.facts.drain(..) {
            self.metrics.record(&fact);
            match fact {
                Fact::QueueResult {
                    outcome: "answered",
                    ..
                } => self.today.answered += 1,
                Fact::QueueResult {
                    outcome: "abandoned",
                    ..
                } => self.today.abandoned += 1,
                Fact::Recording {
                    kind: "voicemail", ..
                } => self.today.voicemails += 1,
                _ => {}
            }
        }
    }

    /// When the loop must wake to publish a board it held back.
    pub fn deadline(&self) -> Option<Instant> {
        self.throttle.deadline()
    }

    /// After the loop handled something: publish the board if it is due and changed.
    pub fn after_wake(&mut self, sb: &Switchboard, now: Instant) {
        if !self.throttle.wake(now) {
            return;
        }
        let today = self.calendar.today(self.wall.at(now));
        if today != self.day {
            self.day = today;
            self.today = DayCounts::default();
        }
        let board = self.board(sb, now);
        if let Some(frame) = self.changes.offer(board) {
            self.board_tx.send_replace(Arc::new(frame));
        }
    }

    fn board(&self, sb: &Switchboard, now: Instant) -> Board {
        let snap = sb.app.queue_snapshot(now);
        let wall_now = self.wall.at(now);
        let callers = snap
            .callers
            .iter()
            .map(|c| {
                let info = self.callers.get(&c.call.0).cloned().unwrap_or_default();
                BoardCaller {
                    call: c.call.0,
                    position: c.position,
                    priority: c.priority,
                    waiting_since_ms: epoch_ms(wall_now.checked_sub(c.waited).unwrap_or(wall_now)),
                    answers: info.answers,
                    reference: info.reference,
                    offered_to: c
                        .offered_to
                        .iter()
                        .map(|o| sb.app.operator_name(o))
                        .collect(),
                }
            })
            .collect();
        let mut operators: Vec<BoardOperator> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for o in &snap.operators {
            seen.insert(o.id.clone());
            operators.push(BoardOperator {
                user: o.id.clone(),
                name: self
                    .accounts
                    .get(&o.id)
                    .cloned()
                    .unwrap_or_else(|| sb.app.operator_name(&o.id)),
                state: state_name(&o.state),
                since_ms: self.since.get(&o.id).map(|t| epoch_ms(*t)),
                misses: o.consecutive_misses,
                phones: sb.ep.operator_contacts(&o.id, now).len(),
                offer: match &o.state {
                    OperatorState::Ringing(call) => Some(call.0),
                    _ => None,
                },
            });
        }
        for (user, name) in &self.accounts {
            if !seen.contains(user) {
                operators.push(BoardOperator {
                    user: user.clone(),
                    name: name.clone(),
                    state: "offline",
                    since_ms: self.since.get(user).map(|t| epoch_ms(*t)),
                    misses: 0,
                    phones: 0,
                    offer: None,
                });
            }
        }
        operators.sort_by(|a, b| a.name.cmp(&b.name).then(a.user.cmp(&b.user)));
        Board {
            callers,
            operators,
            today: self.today,
        }
    }

    /// Answers a console request from the live state.
    pub fn console(
        &mut self,
        sb: &mut Switchboard,
        conn: &rusqlite::Connection,
        cfg: &Config,
        req: LiveRequest,
        now: Instant,
    ) {
        let reply = match req.command {
            LiveCommand::SetOperatorState { user, available } => sb
                .app
                .set_operator_state(&user, available, "console", now)
                .map(str::to_string),
            LiveCommand::OperatorsChanged => {
                super::answers::load_operators(conn, cfg, sb);
                self.reload_accounts(conn);
                Ok("reloaded".to_string())
            }
        };
        let _ = req.reply.send(reply);
    }

    /// The figures a metrics scrape reports.
    pub fn figures(&self, sb: &Switchboard, driver: &Driver, req: FiguresRequest, now: Instant) {
        let snap = sb.app.queue_snapshot(now);
        let mut operators: Vec<(&'static str, u64)> =
            OPERATOR_STATES.iter().map(|s| (*s, 0)).collect();
        let mut registrations = 0;
        for o in &snap.operators {
            let name = state_name(&o.state);
            if let Some(e) = operators.iter_mut().find(|(s, _)| *s == name) {
                e.1 += 1;
            }
            registrations += sb.ep.operator_contacts(&o.id, now).len() as u64;
        }
        // Accounts the queue has not seen since start are offline.
        let offline_accounts = self
            .accounts
            .keys()
            .filter(|u| !snap.operators.iter().any(|o| &o.id == *u))
            .count() as u64;
        if let Some(e) = operators.iter_mut().find(|(s, _)| *s == "offline") {
            e.1 += offline_accounts;
        }
        let _ = req.send(LiveFigures {
            active_calls: sb.ep.active_calls() as u64,
            calls: sb.ep.call_count() as u64,
            queue_callers: snap.callers.len() as u64,
            operators,
            registrations,
            sip: sb.ep.stats(),
            transport: driver.transports.stats.snapshot(),
        });
    }
}
