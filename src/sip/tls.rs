//! TLS for SIP with rustls (ring provider, no OpenSSL): the listener's server
//! configuration, the client configuration trunks use to verify a provider, and the
//! checks `hotline check` runs on the certificate files.
//!
//! Reads files only; time is passed in. The accept loop is in `transport`.

use crate::config::tls::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The TLS listener's settings when `sip.listen` has a `tls:` entry. A certificate
/// that expired or expires soon is logged, not refused: UDP callers must still get
/// through, and `hotline check` refuses an expired one.
pub fn listener(
    cfg: &crate::config::Config,
    now: SystemTime,
) -> Result<Option<super::transport::TlsListener>, String> {
    let wanted = cfg
        .sip
        .listen
        .iter()
        .any(|l| l.protocol == crate::config::Protocol::Tls);
    if !wanted {
        return Ok(None);
    }
    let config = server_config(&cfg.tls)?;
    match check(&cfg.tls, now) {
        Ok(warnings) => warnings.iter().for_each(|w| tracing::warn!("{w}")),
        Err(errors) => errors
            .iter()
            .for_each(|e| tracing::error!("{e}: phones will refuse TLS connections")),
    }
    Ok(Some(super::transport::TlsListener {
        config,
        handshake_timeout: Duration::from_secs(cfg.tls.handshake_timeout_s),
    }))
}

/// A certificate this close to its end gets a warning from `hotline check`.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable private key: {e}", path.display()))
}

/// The listener's configuration. Fails when a file is unreadable or the key is not
/// the certificate's.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = read_chain(&tls.certificate)?;
    let key = read_key(&tls.private_key)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "{} and {}: {e}",
                tls.certificate.display(),
                tls.private_key.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// The configuration trunks connect with: the provider's certificate must chain to
/// `tls.ca_file`, or to the system's authorities when it is empty.
pub fn client_config(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match tls.ca_file() {
        Some(path) => {
            for cert in read_chain(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A broken system certificate is skipped, as every TLS client does.
                let _ = roots.add(cert);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `hotline check`: errors (unreadable files, a key that is not the certificate's,
/// an expired or not yet valid certificate) and warnings (expiry within 30 days).
pub fn check(tls: &TlsConfig, now: SystemTime) -> Result<Vec<String>, Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if !tls.certificate.as_os_str().is_empty() || !tls.private_key.as_os_str().is_empty() {
        if let Err(e) = server_config(tls) {
            errors.push(format!("tls: {e}"));
        }
        if let Ok(chain) = read_chain(&tls.certificate) {
            match validity(&chain[0]) {
                Ok((not_before, not_after)) => {
                    let name = tls.certificate.display();
                    if now < not_before {
                        errors.push(format!("tls.certificate {name}: not valid yet"));
                    } else if now >= not_after {
                        errors.push(format!("tls.certificate {name}: expired"));
                    } else if let Ok(left) = not_after.duration_since(now) {
                        if left < EXPIRY_WARNING {
                            warnings.push(format!(
                                "tls.certificate {name}: expires in {} days",
                                left.as_secs() / 86_400
                            ));
                        }
                    }
                }
                Err(e) => errors.push(format!(
                    "tls.certificate {}: {e}",
                    tls.certificate.display()
                )),
            }
        }
    }
    if tls.ca_file().is_some() {
        if let Err(e) = client_config(tls) {
            errors.push(format!("tls.ca_file: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(errors)
    }
}

/// The certificate's validity period.
fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let v = parsed.validity();
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok((at(v.not_before), at(v.not_after)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A self-signed certificate for 127.0.0.1 valid until `until`, written to `dir`.
    fn make_cert(dir: &Path, tag: &str, until: (i32, u8, u8)) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{tag}.crt")),
            dir.join(format!("{tag}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn at(y: i32, m: u8, d: u8) -> SystemTime {
        let t = rcgen::date_time_ymd(y, m, d).unix_timestamp();
        SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64)
    }

    fn config(certificate: PathBuf, private_key: PathBuf) -> TlsConfig {
        TlsConfig {
            certificate,
            private_key,
            ..TlsConfig::default()
        }
    }

    #[test]
    fn a_matching_pair_passes_and_warns_within_30_days_of_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = make_cert(dir.path(), "a", (2030, 1, 1));
        let tls = config(c, k);
        assert!(server_config(&tls).is_ok());
        assert_eq!(check(&tls, at(2029, 6, 1)), Ok(vec![]));
        let warnings = check(&tls, at(2029, 12, 12)).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("expires in 20 days"), "{warnings:?}");
    }

    #[test]
    fn expired_mismatched_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = make_cert(dir.path(), "one", (2030, 1, 1));
        let (_, k2) = make_cert(dir.path(), "two", (2030, 1, 1));
        let expired = check(&config(c1.clone(), k1.clone()), at(2030, 2, 1)).unwrap_err();
        assert!(expired[0].contains("expired"), "{expired:?}");
        let mismatched = check(&config(c1.clone(), k2), at(2029, 1, 1)).unwrap_err();
        assert!(
            mismatched
                .iter()
                .any(|e| e.contains("one.crt") && e.contains("two.key")),
            "{mismatched:?}"
        );
        let missing = check(
            &config(dir.path().join("none.crt"), k1.clone()),
            at(2029, 1, 1),
        )
        .unwrap_err();
        assert!(missing[0].contains("none.crt"), "{missing:?}");
        // A key file given as the certificate: no certificate in it.
        let swapped = check(&config(k1.clone(), k1), at(2029, 1, 1)).unwrap_err();
        assert!(swapped[0].contains("certificate"), "{swapped:?}");
    }
}
