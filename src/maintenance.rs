//! Periodic upkeep of the running server: the retention purge and the caller-ID hash
//! key's rotation, on a thread of their own (`retention.purge_interval_s`, hourly by
//! default), off the event loop and the store writer.
//!
//! Logs counts only: nothing about a call.

use crate::config::Config;
use crate::privacy::CallerIdFilter;
use crate::store::retention::{self, Policy};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Checks the key's age now (before any call is hashed), then starts the thread.
pub fn spawn(cfg: &Config, filter: CallerIdFilter) {
    let rotate_after = retention::days(cfg.privacy.hash_key_rotate_days).unwrap_or_default();
    let policy = Policy::from_config(cfg);
    let data_dir = cfg.storage.data_dir.clone();
    let db = cfg.database_path();
    let interval = Duration::from_secs(cfg.retention.purge_interval_s);
    rotate(&filter, rotate_after);
    if rotate_after.is_zero() && !policy.is_active() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("maintenance".into())
        .spawn(move || loop {
            purge(&db, &data_dir, &policy);
            std::thread::sleep(interval);
            rotate(&filter, rotate_after);
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the retention thread: {e}");
    }
}

fn rotate(filter: &CallerIdFilter, after: Duration) {
    match filter.rotate_if_due(SystemTime::now(), after, &mut rand::rngs::OsRng) {
        Ok(true) => tracing::info!("caller-ID hash key replaced; the old one is destroyed"),
        Ok(false) => {}
        Err(e) => tracing::error!("caller-ID hash key rotation failed: {e}"),
    }
}

fn purge(db: &Path, data_dir: &Path, policy: &Policy) {
    if !policy.is_active() {
        return;
    }
    let mut conn = match crate::store::open_existing(db) {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(e) => {
            tracing::error!("retention: {}: {e}", db.display());
            return;
        }
    };
    match retention::purge(&mut conn, data_dir, policy, SystemTime::now(), false) {
        Ok((_, done)) => {
            if done != retention::Purged::default() {
                tracing::info!(
                    recordings = done.recordings,
                    calls = done.calls,
                    files = done.files,
                    orphan_files = done.orphan_files,
                    failed_files = done.failed_files,
                    "retention purge"
                );
            }
        }
        Err(e) => tracing::error!("retention purge failed: {e}"),
    }
}
