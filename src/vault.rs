//! The running server's unsealed state: the age identity that `hotline unseal` handed
//! over the control socket, in memory only, and the control commands that use it.
//!
//! Owns the identity while unsealed (never written anywhere; zeroized by `hotline
//! seal`, on replacement and when the process ends) and answers `unseal`, `seal`,
//! `seal_status` and `open_calls`. Calls, recording and the queue never need it:
//! sealing uses only the public recipients.

use crate::config::Config;
use crate::control::{ControlCommand, ControlRequest};
use crate::store::{details, seal};
use age::x25519;
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Calls one `open_calls` request may ask for.
pub const MAX_OPEN_CALLS: usize = 5000;

pub struct Vault {
    identities: Arc<Mutex<Option<Vec<x25519::Identity>>>>,
    recipients: Vec<String>,
    db: PathBuf,
}

impl Vault {
    pub fn new(cfg: &Config) -> Vault {
        Vault {
            identities: Arc::default(),
            recipients: seal::parse_recipients(&cfg.storage.recipients)
                .map(|r| r.iter().map(|r| r.to_string()).collect())
                .unwrap_or_default(),
            db: cfg.database_path(),
        }
    }

    pub fn is_unsealed(&self) -> bool {
        self.identities.lock().map(|i| i.is_some()).unwrap_or(false)
    }

    /// Answers the sealing commands; gives any other request back.
    pub fn handle(&self, req: ControlRequest) -> Option<ControlRequest> {
        let reply = match &req.command {
            ControlCommand::Unseal { identity } => self.unseal(identity.expose()),
            ControlCommand::Seal => {
                let was = self
                    .identities
                    .lock()
                    .map(|mut i| i.take().is_some())
                    .unwrap_or(false);
                if was {
                    tracing::info!("sealed: identity forgotten");
                }
                json!({"ok": true, "sealed": true})
            }
            ControlCommand::SealStatus => json!({
                "ok": true,
                "sealing": !self.recipients.is_empty(),
                "sealed": !self.is_unsealed(),
                "recipients": self.recipients,
            }),
            ControlCommand::OpenCalls { calls } => {
                let calls = calls.clone();
                let identities = self.identities.clone();
                let db = self.db.clone();
                let ControlRequest { reply, .. } = req;
                // Decrypting thousands of blobs takes a while: off the event loop.
                tokio::task::spawn_blocking(move || {
                    let _ = reply.send(open_calls(&identities, &db, &calls));
                });
                return None;
            }
            _ => return Some(req),
        };
        let _ = req.reply.send(reply);
        None
    }

    fn unseal(&self, text: &str) -> serde_json::Value {
        if self.recipients.is_empty() {
            return json!({"ok": false, "error": "sealing is off here (storage.recipients is empty): there is nothing to unseal"});
        }
        let ids = match seal::parse_identities(text) {
            Ok(ids) => ids,
            Err(e) => return json!({"ok": false, "error": format!("identity: {e}")}),
        };
        let matching = ids
            .iter()
            .any(|i| self.recipients.contains(&i.to_public().to_string()));
        if !matching {
            return json!({"ok": false, "error": "the identity matches none of storage.recipients"});
        }
        match self.identities.lock() {
            Ok(mut slot) => {
                // A previous identity is dropped, and zeroized, here.
                *slot = Some(ids);
                tracing::info!("unsealed: identity held in memory");
                json!({"ok": true, "sealed": false})
            }
            Err(_) => json!({"ok": false, "error": "identity lock poisoned"}),
        }
    }
}

fn open_calls(
    identities: &Mutex<Option<Vec<x25519::Identity>>>,
    db: &std::path::Path,
    calls: &[i64],
) -> serde_json::Value {
    if calls.len() > MAX_OPEN_CALLS {
        return json!({"ok": false, "error": format!("at most {MAX_OPEN_CALLS} calls per request")});
    }
    let conn = match crate::store::open_existing(db) {
        Ok(Some(c)) => c,
        Ok(None) => return json!({"ok": true, "calls": {}}),
        Err(e) => return json!({"ok": false, "error": format!("database: {e}")}),
    };
    let blobs = match details::load_blobs(&conn, calls) {
        Ok(b) => b,
        Err(e) => return json!({"ok": false, "error": format!("database: {e}")}),
    };
    let Ok(guard) = identities.lock() else {
        return json!({"ok": false, "error": "identity lock poisoned"});
    };
    let Some(ids) = guard.as_ref() else {
        return json!({"ok": false, "sealed": true, "error": "sealed: run hotline unseal first, or pass --identity"});
    };
    let mut out = serde_json::Map::new();
    for (id, b) in blobs {
        match details::open_details(ids, &b) {
            Ok(d) => {
                out.insert(id.to_string(), serde_json::to_value(&d).unwrap_or_default());
            }
            Err(e) => return json!({"ok": false, "error": format!("call {id}: {e}")}),
        }
    }
    json!({"ok": true, "calls": out})
}
