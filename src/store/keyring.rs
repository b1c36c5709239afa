//! The identities `hotline unseal` handed to the running server, shared between the
//! vault (which owns them and answers the sealing commands) and the readers that
//! open sealed details and recordings for the console. In memory only; the vault
//! zeroizes them (`age`'s identities wipe themselves when dropped).

use age::x25519;
use std::sync::{Arc, Mutex};

/// Where the identities live while the server is unsealed.
pub type IdentitySlot = Arc<Mutex<Option<Vec<x25519::Identity>>>>;

/// A handle on the server's unsealed identities; cheap to clone.
#[derive(Clone, Default)]
pub struct Keyring(IdentitySlot);

impl Keyring {
    /// A handle on the slot the vault fills and empties.
    pub fn shared(slot: IdentitySlot) -> Keyring {
        Keyring(slot)
    }

    /// A keyring holding `identities` (tests, or a reader given an identity file).
    pub fn holding(identities: Vec<x25519::Identity>) -> Keyring {
        Keyring(Arc::new(Mutex::new(Some(identities))))
    }

    pub fn is_unsealed(&self) -> bool {
        self.0.lock().map(|i| i.is_some()).unwrap_or(false)
    }

    /// Runs `f` with the identities while unsealed; `None` while sealed. The lock is
    /// held while `f` runs, so `hotline seal` waits for it and nothing opens after.
    pub fn with<T>(&self, f: impl FnOnce(&[x25519::Identity]) -> T) -> Option<T> {
        let guard = self.0.lock().ok()?;
        guard.as_deref().map(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_until_filled_and_after_emptied() {
        let slot = IdentitySlot::default();
        let keyring = Keyring::shared(slot.clone());
        assert!(!keyring.is_unsealed());
        assert_eq!(keyring.with(|ids| ids.len()), None);
        *slot.lock().unwrap() = Some(vec![x25519::Identity::generate()]);
        assert!(keyring.is_unsealed());
        assert_eq!(keyring.with(|ids| ids.len()), Some(1));
        slot.lock().unwrap().take();
        assert_eq!(keyring.clone().with(|ids| ids.len()), None);
    }
}
