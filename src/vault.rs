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

    /// The identities as the console's readers see them: sealed or not, at once.
    pub fn keyring(&self) -> crate::store::keyring::Keyring {
        crate::store::keyring::Keyring::shared(self.identities.clone())
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
        crate::keys::no_core_dumps();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::SecretText;
    use age::secrecy::ExposeSecret;

    fn ask(
        vault: &Vault,
        command: ControlCommand,
    ) -> Option<tokio::sync::oneshot::Receiver<serde_json::Value>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        vault
            .handle(ControlRequest { command, reply })
            .is_none()
            .then_some(rx)
    }

    fn vault_for(recipients: Vec<String>, db: PathBuf) -> Vault {
        Vault {
            identities: Arc::default(),
            recipients,
            db,
        }
    }

    #[tokio::test]
    async fn unseal_checks_the_identity_and_seal_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let id = x25519::Identity::generate();
        let vault = vault_for(vec![id.to_public().to_string()], dir.path().join("h.db"));
        let secret = id.to_string().expose_secret().to_string();
        let status = |v: &Vault| ask(v, ControlCommand::SealStatus).unwrap();
        assert_eq!(status(&vault).await.unwrap()["sealed"], true);
        for (text, error) in [
            ("garbage\n".to_string(), "identity: line 1"),
            (String::new(), "no identity"),
            (
                x25519::Identity::generate()
                    .to_string()
                    .expose_secret()
                    .to_string(),
                "matches none of storage.recipients",
            ),
        ] {
            let r = ask(
                &vault,
                ControlCommand::Unseal {
                    identity: SecretText::new(text),
                },
            )
            .unwrap()
            .await
            .unwrap();
            assert_eq!(r["ok"], false);
            assert!(r["error"].as_str().unwrap().contains(error), "{r}");
        }
        assert!(!vault.is_unsealed());
        let r = ask(
            &vault,
            ControlCommand::Unseal {
                identity: SecretText::new(secret),
            },
        )
        .unwrap()
        .await
        .unwrap();
        assert_eq!(r["ok"], true, "{r}");
        assert!(vault.is_unsealed());
        assert_eq!(status(&vault).await.unwrap()["sealed"], false);
        let r = ask(&vault, ControlCommand::Seal).unwrap().await.unwrap();
        assert_eq!(r["sealed"], true);
        assert!(!vault.is_unsealed());
        // Other commands go back to the server loop.
        assert!(ask(&vault, ControlCommand::Queue).is_none());
    }

    #[tokio::test]
    async fn open_calls_needs_an_identity_and_has_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        let conn = crate::store::open(&db).unwrap();
        let id = x25519::Identity::generate();
        let sealer = seal::Sealer::new(vec![id.to_public()]).unwrap();
        conn.execute(
            "INSERT INTO calls (sip_call_id, direction, to_uri, transport, started_at) VALUES ('', 'inbound', 't', 'UDP', 'now')",
            [],
        )
        .unwrap();
        let blob = sealer
            .seal_bytes(
                br#"{"answers":[{"node":"unit","key":"unit","digits":"12345","at":"now"}]}"#,
            )
            .unwrap();
        conn.execute(
            "INSERT INTO call_sealed (call_id, seq, blob) VALUES (1, 1, ?1)",
            rusqlite::params![blob],
        )
        .unwrap();
        let vault = vault_for(vec![id.to_public().to_string()], db);
        let open = |calls: Vec<i64>| ask(&vault, ControlCommand::OpenCalls { calls }).unwrap();
        let r = open(vec![1]).await.unwrap();
        assert_eq!(r["ok"], false);
        assert!(r["error"].as_str().unwrap().starts_with("sealed"), "{r}");
        *vault.identities.lock().unwrap() = Some(vec![id]);
        let r = open(vec![1, 2]).await.unwrap();
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["calls"]["1"]["answers"][0]["digits"], "12345");
        assert!(r["calls"].get("2").is_none());
        let r = open((0..MAX_OPEN_CALLS as i64 + 1).collect())
            .await
            .unwrap();
        assert_eq!(r["ok"], false);
        assert!(r["error"].as_str().unwrap().contains("at most"), "{r}");
    }
}
