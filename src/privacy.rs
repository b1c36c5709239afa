//! Caller-ID policy: what may be stored or logged about who called.
//!
//! Owns the keyed hash (HMAC-SHA-256 with a secret kept in a file outside the
//! database: a plain or salted-in-database hash of a phone number is reversed by
//! trying every number), the key file's creation and its rotation. Must not store
//! anything itself.

use crate::config::CallerIdPolicy;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

/// Clones share the key, so a rotation reaches every user of the filter at once.
#[derive(Clone)]
pub struct CallerIdFilter {
    policy: CallerIdPolicy,
    key: Arc<RwLock<Zeroizing<Vec<u8>>>>,
    key_file: Option<PathBuf>,
}

impl CallerIdFilter {
    pub fn new(policy: CallerIdPolicy, key: Vec<u8>) -> Self {
        CallerIdFilter {
            policy,
            key: Arc::new(RwLock::new(Zeroizing::new(key))),
            key_file: None,
        }
    }

    /// Loads the key for `hash` (creating it, mode 0600, when missing); other
    /// policies need no key.
    /// `new_key` makes the key when the file does not exist yet.
    pub fn load(
        policy: CallerIdPolicy,
        key_file: &Path,
        new_key: &mut dyn rand::RngCore,
    ) -> Result<Self, String> {
        match policy {
            CallerIdPolicy::Keep => return Ok(CallerIdFilter::new(policy, Vec::new())),
            // Nothing is kept across restarts: a key in memory only labels Call-IDs
            // for correlation within this run.
            CallerIdPolicy::Drop => {
                let mut key = vec![0u8; 32];
                new_key.fill_bytes(&mut key);
                return Ok(CallerIdFilter::new(policy, key));
            }
            CallerIdPolicy::Hash => {}
        }
        let key = match std::fs::read(key_file) {
            Ok(k) if k.len() >= 16 => k,
            Ok(_) => {
                return Err(format!(
                    "{}: key file is shorter than 16 bytes",
                    key_file.display()
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(key_file, new_key)
                .map_err(|e| format!("{}: cannot create key file: {e}", key_file.display()))?,
            Err(e) => return Err(format!("{}: cannot read key file: {e}", key_file.display())),
        };
        let mut filter = CallerIdFilter::new(policy, key);
        filter.key_file = Some(key_file.to_path_buf());
        Ok(filter)
    }

    /// Replaces the key when the key file is older than `max_age` (by its modification
    /// time): the new key is written over the old one in place, so the old bytes do
    /// not stay behind in a freed block, and the old key is wiped from memory. After
    /// this, callers hash to new values and cannot be linked to earlier calls.
    /// Returns whether the key was replaced.
    /// `rng` makes the new key.
    pub fn rotate_if_due(
        &self,
        now: SystemTime,
        max_age: Duration,
        rng: &mut dyn rand::RngCore,
    ) -> Result<bool, String> {
        let Some(path) = self.key_file.as_deref() else {
            return Ok(false);
        };
        if self.policy != CallerIdPolicy::Hash || max_age.is_zero() {
            return Ok(false);
        }
        let err = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", path.display());
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| err("cannot read key file", e))?;
        if now.duration_since(modified).unwrap_or_default() < max_age {
            return Ok(false);
        }
        let mut new = Zeroizing::new(vec![0u8; 32]);
        rng.fill_bytes(&mut new);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| err("cannot open key file", e))?;
        f.write_all(&new)
            .and_then(|_| f.set_len(new.len() as u64))
            .and_then(|_| f.sync_all())
            .and_then(|_| f.set_modified(now))
            .map_err(|e| err("cannot write key file", e))?;
        let mut key = self
            .key
            .write()
            .map_err(|_| "caller-ID key lock poisoned")?;
        // The old key is zeroized when its Zeroizing wrapper drops here.
        *key = new;
        Ok(true)
    }

    pub fn policy(&self) -> CallerIdPolicy {
        self.policy
    }

    /// What may be kept or logged of a call's SIP Call-ID (phones often put their
    /// address in it): as received under `keep`, else a keyed hash that still lets
    /// the messages of one call be correlated.
    pub fn call_id_label(&self, call_id: &str) -> String {
        if self.policy == CallerIdPolicy::Keep {
            return call_id.to_string();
        }
        let Ok(key) = self.key.read() else {
            return "cid:-".into();
        };
        match Hmac::<Sha256>::new_from_slice(&key) {
            Ok(mut mac) => {
                mac.update(b"call-id\0");
                mac.update(call_id.as_bytes());
                format!("cid:{}", hex::encode(&mac.finalize().into_bytes()[..12]))
            }
            Err(_) => "cid:-".into(),
        }
    }

    /// What may be kept of `identity` (the caller's number or URI).
    pub fn apply(&self, identity: &str) -> Option<String> {
        match self.policy {
            CallerIdPolicy::Keep => Some(identity.to_string()),
            CallerIdPolicy::Drop => None,
            CallerIdPolicy::Hash => {
                let key = self.key.read().ok()?;
                let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
                mac.update(identity.as_bytes());
                let digest = mac.finalize().into_bytes();
                Some(format!("hmac:{}", hex::encode(&digest[..16])))
            }
        }
    }
}

fn create_key(path: &Path, rng: &mut dyn rand::RngCore) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(&key)?;
    f.sync_all()?;
    Ok(key.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        let keep = CallerIdFilter::new(CallerIdPolicy::Keep, vec![]);
        assert_eq!(keep.apply("+79161234567").as_deref(), Some("+79161234567"));
        let drop = CallerIdFilter::new(CallerIdPolicy::Drop, vec![3; 32]);
        assert_eq!(drop.apply("+79161234567"), None);
        assert_eq!(keep.call_id_label("abc@198.51.100.7"), "abc@198.51.100.7");
        let label = drop.call_id_label("abc@198.51.100.7");
        assert!(
            label.starts_with("cid:") && !label.contains("198.51"),
            "{label}"
        );
        assert_eq!(label, drop.call_id_label("abc@198.51.100.7"), "correlates");
        let a = CallerIdFilter::new(CallerIdPolicy::Hash, vec![1; 32]);
        let b = CallerIdFilter::new(CallerIdPolicy::Hash, vec![2; 32]);
        let ha = a.apply("+79161234567").unwrap();
        assert_eq!(ha, a.apply("+79161234567").unwrap(), "repeat callers match");
        assert_ne!(
            ha,
            b.apply("+79161234567").unwrap(),
            "depends on the secret key"
        );
        assert!(!ha.contains("7916"));
    }

    #[test]
    fn key_file_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/caller-id.key");
        let f = CallerIdFilter::load(CallerIdPolicy::Hash, &path, &mut rand::rngs::OsRng).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again =
            CallerIdFilter::load(CallerIdPolicy::Hash, &path, &mut rand::rngs::OsRng).unwrap();
        assert_eq!(f.apply("x"), again.apply("x"));
    }

    #[test]
    fn the_key_is_rotated_on_schedule_and_the_old_one_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("caller-id.key");
        let day = Duration::from_secs(86_400);
        let f = CallerIdFilter::load(CallerIdPolicy::Hash, &path, &mut rand::rngs::OsRng).unwrap();
        let shared = f.clone();
        let old_key = std::fs::read(&path).unwrap();
        let before = f.apply("+79161234567").unwrap();
        let created = std::fs::metadata(&path).unwrap().modified().unwrap();
        // Six days later: not yet due.
        assert!(!f
            .rotate_if_due(created + 6 * day, 7 * day, &mut rand::rngs::OsRng)
            .unwrap());
        assert_eq!(f.apply("+79161234567").unwrap(), before);
        // Eight days later: replaced, in the file and in every clone.
        let now = created + 8 * day;
        assert!(f
            .rotate_if_due(now, 7 * day, &mut rand::rngs::OsRng)
            .unwrap());
        let after = shared.apply("+79161234567").unwrap();
        assert_ne!(
            after, before,
            "repeat callers no longer link across the rotation"
        );
        let new_key = std::fs::read(&path).unwrap();
        assert_eq!(new_key.len(), 32);
        assert_ne!(new_key, old_key);
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), now);
        // A restart reads the new key.
        let reloaded =
            CallerIdFilter::load(CallerIdPolicy::Hash, &path, &mut rand::rngs::OsRng).unwrap();
        assert_eq!(reloaded.apply("+79161234567").unwrap(), after);
        // Not due again until another full period has passed.
        assert!(!f
            .rotate_if_due(now + 6 * day, 7 * day, &mut rand::rngs::OsRng)
            .unwrap());
        // 0 = never; other policies have no key.
        assert!(!f
            .rotate_if_due(now + 100 * day, Duration::ZERO, &mut rand::rngs::OsRng)
            .unwrap());
        let drop =
            CallerIdFilter::load(CallerIdPolicy::Drop, &path, &mut rand::rngs::OsRng).unwrap();
        assert!(!drop
            .rotate_if_due(now + 100 * day, day, &mut rand::rngs::OsRng)
            .unwrap());
    }
}
