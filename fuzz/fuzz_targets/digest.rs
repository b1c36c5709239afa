//! Authorization / Proxy-Authorization header values: parse, then verify against a
//! real nonce so the checks after parsing run too.
#![no_main]

use hotline::sip::digest::{parse_authorization, DigestAuth, DigestConfig, Ha1Set};
use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(creds) = parse_authorization(value) else {
        return;
    };
    let epoch = Instant::now();
    let mut auth = DigestAuth::new(
        DigestConfig::new("hotline"),
        [7; 32],
        epoch,
        Box::new(StdRng::seed_from_u64(1)),
    );
    let ha1s = Ha1Set::from_password("anna", "hotline", "secret-pass");
    let now = epoch + Duration::from_secs(1);
    let _ = auth.nonce_state(&creds.nonce, b"127.0.0.1", now);
    let _ = auth.verify(&creds, &ha1s, "REGISTER", b"127.0.0.1", now);
});
