//! Caller-ID policy: what may be stored or logged about who called.
//!
//! Owns the keyed hash (HMAC-SHA-256 with a secret kept in a file outside the
//! database: a plain or salted-in-database hash of a phone number is reversed by
//! trying every number) and the key file's creation. Must not store anything itself.

use crate::config::CallerIdPolicy;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Write;
use std::path::Path;

#[derive(Clone)]
pub struct CallerIdFilter {
    policy: CallerIdPolicy,
    key: Vec<u8>,
}

impl CallerIdFilter {
    pub fn new(policy: CallerIdPolicy, key: Vec<u8>) -> Self {
        CallerIdFilter { policy, key }
    }

    /// Loads the key for `hash` (creating it, mode 0600, when missing); other
    /// policies need no key.
    /// `new_key` makes the key when the file does not exist yet.
    pub fn load(
        policy: CallerIdPolicy,
        key_file: &Path,
        new_key: &mut dyn rand::RngCore,
    ) -> Result<Self, String> {
        if policy != CallerIdPolicy::Hash {
            return Ok(CallerIdFilter::new(policy, Vec::new()));
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
        Ok(CallerIdFilter::new(policy, key))
    }

    pub fn policy(&self) -> CallerIdPolicy {
        self.policy
    }

    /// What may be kept of `identity` (the caller's number or URI).
    pub fn apply(&self, identity: &str) -> Option<String> {
        match self.policy {
            CallerIdPolicy::Keep => Some(identity.to_string()),
            CallerIdPolicy::Drop => None,
            CallerIdPolicy::Hash => {
                let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
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
        let drop = CallerIdFilter::new(CallerIdPolicy::Drop, vec![]);
        assert_eq!(drop.apply("+79161234567"), None);
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
}
