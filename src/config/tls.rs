//! `[tls]`: the certificate the TLS listener presents and the authorities trunks'
//! certificates are verified against. The files are read by `sip::tls`.

use super::{ListenAddr, Protocol};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM: the server's certificate first, then its intermediates.
    pub certificate: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// PEM: authorities a trunk's certificate must chain to; empty = the system's.
    pub ca_file: PathBuf,
    /// Seconds a TLS client has to complete its handshake.
    pub handshake_timeout_s: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            certificate: PathBuf::new(),
            private_key: PathBuf::new(),
            ca_file: PathBuf::new(),
            handshake_timeout_s: 10,
        }
    }
}

impl TlsConfig {
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        (!self.ca_file.as_os_str().is_empty()).then_some(self.ca_file.as_path())
    }
}

/// A TLS listener needs a certificate and its key.
pub fn validate(tls: &TlsConfig, listen: &[ListenAddr]) -> Result<(), (String, String)> {
    let Some(first) = listen.iter().find(|l| l.protocol == Protocol::Tls) else {
        return Ok(());
    };
    for (key, path) in [
        ("tls.certificate", &tls.certificate),
        ("tls.private_key", &tls.private_key),
    ] {
        if path.as_os_str().is_empty() {
            return Err((key.into(), format!("is needed by sip.listen \"{first}\"")));
        }
    }
    if !(1..=120).contains(&tls.handshake_timeout_s) {
        return Err((
            "tls.handshake_timeout_s".into(),
            "must be between 1 and 120".into(),
        ));
    }
    Ok(())
}
