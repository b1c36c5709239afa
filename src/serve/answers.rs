//! Answers to the control socket's commands (`hotline queue`, `operator state`,
//! account changes, `status`) from the live state of the running hotline, and the
//! loading of operator accounts into the registrar and the queue host.

use crate::app::{state_name, App, Switchboard};
use crate::config::Config;
use crate::control::ControlCommand;
use crate::driver::Driver;
use crate::sip::Endpoint;
use serde_json::json;
use std::time::Instant;

/// Hands every operator account to the registrar and the pseudonyms to the host.
pub fn load_operators(conn: &rusqlite::Connection, cfg: &Config, sb: &mut Switchboard) {
    match crate::accounts::all_credentials(conn, &cfg.operators.realm) {
        Ok(all) => {
            let names = all.iter().map(|(u, (n, _))| (u.clone(), n.clone()));
            sb.app.set_operator_names(names.collect());
            let credentials = all.into_iter().map(|(u, (_, h))| (u, h));
            sb.ep.set_operator_credentials(credentials.collect());
        }
        Err(e) => tracing::error!("cannot load operator accounts: {e}"),
    }
}

/// Answers one request of the local control socket.
pub fn control(
    sb: &mut Switchboard,
    driver: &Driver,
    accounts: &rusqlite::Connection,
    cfg: &Config,
    command: ControlCommand,
) -> serde_json::Value {
    let now = Instant::now();
    match command {
        ControlCommand::Queue => queue(&sb.app, &sb.ep, now),
        ControlCommand::OperatorState { name, state } => {
            let available = match state.as_str() {
                "available" => true,
                "paused" => false,
                other => {
                    return json!({"ok": false, "error": format!("unknown state \"{other}\" (available or paused)")})
                }
            };
            load_operators(accounts, cfg, sb);
            let Some(user) = sb.app.operator_user(&name) else {
                return json!({"ok": false, "error": format!("no operator named \"{name}\"")});
            };
            match sb.app.set_operator_state(&user, available, "cli", now) {
                Ok(state) => json!({"ok": true, "state": state}),
                Err(e) => json!({"ok": false, "error": e}),
            }
        }
        ControlCommand::OperatorsChanged => {
            load_operators(accounts, cfg, sb);
            json!({"ok": true})
        }
        // The sealing commands are answered by the vault before this.
        ControlCommand::Unseal { .. }
        | ControlCommand::Seal
        | ControlCommand::SealStatus
        | ControlCommand::OpenCalls { .. } => json!({"ok": false, "error": "not handled here"}),
        ControlCommand::Trunks => json!({"ok": true, "trunks": sb.trunks.status(now)}),
        ControlCommand::Status => {
            let transport = driver.transports.stats.snapshot();
            json!({
                "ok": true,
                "calls": sb.ep.call_count(),
                "active_calls": sb.ep.active_calls(),
                "sip": sb.ep.stats(),
                "transport": transport,
            })
        }
    }
}

fn queue(app: &App, ep: &Endpoint, now: Instant) -> serde_json::Value {
    let snap = app.queue_snapshot(now);
    let callers: Vec<_> = snap
        .callers
        .iter()
        .map(|c| {
            json!({
                "call": c.call.0,
                "position": c.position,
                "priority": c.priority,
                "waited_s": c.waited.as_secs_f64(),
                "offered_to": c.offered_to.iter().map(|o| app.operator_name(o)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let operators: Vec<_> = snap
        .operators
        .iter()
        .map(|o| {
            json!({
                "name": app.operator_name(&o.id),
                "sip_username": o.id,
                "state": state_name(&o.state),
                "idle_s": o.idle_for.map(|d| d.as_secs_f64()),
                "misses": o.consecutive_misses,
                "contacts": ep.operator_contacts(&o.id, now).len(),
            })
        })
        .collect();
    json!({"ok": true, "callers": callers, "operators": operators})
}
