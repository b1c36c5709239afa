//! Start-up of the provider trunks: passwords read (from `password_file` when given),
//! one registration set-up per trunk that has a username.

use crate::config::Config;
use crate::trunk::{RegistrationSetup, Timing, Trunks};
use rand::rngs::StdRng;
use std::net::IpAddr;

/// The trunks of `cfg`, or one `FILE: KEY: PROBLEM` line per unreadable password file.
pub fn from_config(cfg: &Config, seed: &mut StdRng) -> Result<Trunks, Vec<String>> {
    let mut setups = Vec::new();
    let mut unregistered = Vec::new();
    let mut errors = Vec::new();
    for (i, t) in cfg.trunks.iter().enumerate() {
        if !t.registers() {
            unregistered.push(t.name.clone());
            continue;
        }
        let password = match (&t.password, &t.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(path)) => match read_password(path) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(format!(
                        "{}: trunks[{i}].password_file: {}: {e}",
                        cfg.source,
                        path.display()
                    ));
                    continue;
                }
            },
            (None, None) => String::new(),
        };
        setups.push(RegistrationSetup {
            name: t.name.clone(),
            registrar: t.registrar.clone(),
            outbound_proxy: t.outbound_proxy.clone(),
            username: t.username.clone(),
            password,
            expires_s: t.expires_s,
            public_ip: cfg.sip.public_address.parse::<IpAddr>().ok(),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Trunks::new(setups, unregistered, Timing::default(), seed))
}

/// The first line of the file, without its line end.
fn read_password(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let line = text.lines().next().unwrap_or_default().to_string();
    if line.is_empty() {
        return Err("is empty".into());
    }
    Ok(line)
}
