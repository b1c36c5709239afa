//! Operator accounts: password policy and generation, SIP usernames, the digest
//! hashes (HA1, MD5 and SHA-256, RFC 8760) stored for each account, and the Argon2id
//! hash its console login is checked against.
//!
//! Owns what turns a password into what the store keeps; the store only keeps it and
//! `sip::digest` only checks against it. Randomness and time are arguments (the CLI
//! passes the operating system's generator and clock). Plain passwords pass through
//! here only to derive the hashes and to be shown once to the administrator; they are
//! never stored or logged.

use crate::sip::digest::{ha1, Algorithm, Ha1Set};
use crate::store::{self, NewOperator, OperatorError, PasswordHashes, Role};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::{Rng, RngCore};
use rusqlite::Connection;
use std::time::SystemTime;

/// Shortest password an administrator may choose.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Length of a generated password.
const GENERATED_PASSWORD_CHARS: usize = 20;
/// No 0/O/o, 1/l/I: a password read aloud or copied from a screen survives.
const PASSWORD_ALPHABET: &[u8] = b"23456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ";
/// Attempts at a free random SIP username before giving up.
const USERNAME_ATTEMPTS: usize = 100;

/// A given password is checked; none means one is generated.
fn choose_password(password: Option<&str>, rng: &mut dyn RngCore) -> Result<String, OperatorError> {
    match password {
        Some(p) if p.chars().count() < MIN_PASSWORD_CHARS => Err(OperatorError::PasswordTooShort),
        Some(p) if p.chars().any(char::is_control) => Err(OperatorError::PasswordControlCharacters),
        Some(p) => Ok(p.to_string()),
        None => Ok(generate_password(rng)),
    }
}

fn generate_password(rng: &mut dyn RngCore) -> String {
    (0..GENERATED_PASSWORD_CHARS)
        .map(|_| PASSWORD_ALPHABET[rng.gen_range(0..PASSWORD_ALPHABET.len())] as char)
        .collect()
}

/// The name itself, lowercased, when it makes a plain SIP username: `[a-z0-9][a-z0-9._-]{0,31}`.
fn username_from_name(name: &str) -> Option<String> {
    let lower = name.to_lowercase();
    let bytes = lower.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 32
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b));
    ok.then_some(lower)
}

/// Argon2id cost of a web password hash: OWASP's first recommended setting (19 MiB,
/// two passes, one lane), about 30 ms on one core. The console runs at most one check
/// at a time and locks out guessing before it costs much.
const WEB_HASH_MEMORY_KIB: u32 = 19_456;
const WEB_HASH_PASSES: u32 = 2;
const WEB_HASH_LANES: u32 = 1;

fn argon2id() -> argon2::Argon2<'static> {
    let params = argon2::Params::new(WEB_HASH_MEMORY_KIB, WEB_HASH_PASSES, WEB_HASH_LANES, None)
        .expect("constant Argon2 parameters are valid");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// The Argon2id hash (PHC string, random 16-byte salt) of a console password.
pub fn web_hash(password: &str, rng: &mut dyn RngCore) -> String {
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
    argon2id()
        .hash_password(password.as_bytes(), &salt)
        .expect("Argon2id hashes any password")
        .to_string()
}

/// Whether `password` matches a stored web hash. An empty or unreadable hash matches
/// nothing, and still costs one hash computation, so that a missing account or a
/// missing web password cannot be told from a wrong password by timing.
pub fn verify_web_password(stored: &str, password: &str) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let parsed = PasswordHash::new(stored).ok();
    let ok = parsed.is_some();
    let dummy;
    let hash = match parsed {
        Some(h) => h,
        None => {
            let d = DUMMY.get_or_init(|| {
                use rand::SeedableRng;
                web_hash("not a password", &mut rand::rngs::StdRng::seed_from_u64(7))
            });
            dummy = PasswordHash::new(d).expect("the dummy hash parses");
            dummy
        }
    };
    let matches = argon2id()
        .verify_password(password.as_bytes(), &hash)
        .is_ok();
    ok && matches
}

/// The digest hashes and the web hash of `password` for `user` in `realm`.
pub fn password_hashes(user: &str, realm: &str, password: &str, web: &str) -> PasswordHashes {
    PasswordHashes {
        ha1_md5: ha1(Algorithm::Md5, user, realm, password),
        ha1_sha256: ha1(Algorithm::Sha256, user, realm, password),
        web: web.to_string(),
    }
}

/// Creates an operator account with the role `operator`.
pub fn add(
    conn: &Connection,
    name: &str,
    realm: &str,
    password: Option<&str>,
    rng: &mut dyn RngCore,
    now: SystemTime,
) -> Result<NewOperator, OperatorError> {
    add_with_role(conn, name, realm, Role::Operator, password, rng, now)
}

/// Creates an account. The password, given or generated, is returned once and only
/// its hashes are stored.
pub fn add_with_role(
    conn: &Connection,
    name: &str,
    realm: &str,
    role: Role,
    password: Option<&str>,
    rng: &mut dyn RngCore,
    now: SystemTime,
) -> Result<NewOperator, OperatorError> {
    store::check_name(name)?;
    let password = choose_password(password, rng)?;
    let web = web_hash(&password, rng);
    let preferred = username_from_name(name);
    let mut randoms: Vec<String> = (0..USERNAME_ATTEMPTS)
        .map(|_| format!("op{:06}", rng.gen_range(0..1_000_000u32)))
        .collect();
    let mut candidates = preferred.into_iter().chain(randoms.drain(..));
    let user = store::insert_operator(
        conn,
        name,
        realm,
        role,
        &mut candidates,
        &|user| password_hashes(user, realm, &password, &web),
        now,
    )?;
    Ok(NewOperator {
        name: name.to_string(),
        sip_username: user,
        password,
    })
}

/// Replaces the password (given or generated); also re-derives the hashes for `realm`,
/// which is how an administrator moves accounts to a new realm.
pub fn passwd(
    conn: &Connection,
    name: &str,
    realm: &str,
    password: Option<&str>,
    rng: &mut dyn RngCore,
    now: SystemTime,
) -> Result<NewOperator, OperatorError> {
    let password = choose_password(password, rng)?;
    let user = store::operator_username(conn, name)?;
    let hashes = password_hashes(&user, realm, &password, &web_hash(&password, rng));
    store::update_operator_hashes(conn, name, &user, realm, &hashes, now)?;
    Ok(NewOperator {
        name: name.to_string(),
        sip_username: user,
        password,
    })
}

/// Stored hashes as the digest check wants them.
pub fn ha1_set(hashes: PasswordHashes) -> Ha1Set {
    Ha1Set {
        md5: Some(hashes.ha1_md5),
        sha256: Some(hashes.ha1_sha256),
    }
}

/// The operator's name and HA1s, or None when there is no such SIP username or its
/// hashes were derived for another realm.
pub fn credentials(
    conn: &Connection,
    sip_username: &str,
    realm: &str,
) -> rusqlite::Result<Option<(String, Ha1Set)>> {
    Ok(store::operator_hashes(conn, sip_username, realm)?.map(|(n, h)| (n, ha1_set(h))))
}

/// Every account of `realm`: SIP username -> (name, HA1s).
pub fn all_credentials(
    conn: &Connection,
    realm: &str,
) -> rusqlite::Result<std::collections::HashMap<String, (String, Ha1Set)>> {
    Ok(store::all_operator_hashes(conn, realm)?
        .into_iter()
        .map(|(user, name, h)| (user, (name, ha1_set(h))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::digest::{ha1, Algorithm, Ha1Set};
    use crate::store::{list_operators, open, remove_operator, OperatorError};
    use rand::SeedableRng;
    use rusqlite::params;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::from_entropy()
    }

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("hotline.db")).unwrap();
        (dir, conn)
    }

    #[test]
    fn usernames_from_names() {
        assert_eq!(username_from_name("Anna").as_deref(), Some("anna"));
        assert_eq!(username_from_name("op.7_b-c").as_deref(), Some("op.7_b-c"));
        assert_eq!(username_from_name("9lives").as_deref(), Some("9lives"));
        assert_eq!(
            username_from_name(&"a".repeat(32)).as_deref(),
            Some(&*"a".repeat(32))
        );
        assert_eq!(username_from_name(&"a".repeat(33)), None);
        assert_eq!(username_from_name("-anna"), None);
        assert_eq!(username_from_name(".anna"), None);
        assert_eq!(username_from_name("Анна"), None);
        assert_eq!(username_from_name("anna smith"), None);
        assert_eq!(username_from_name("anna@x"), None);
        // Lowercasing that changes the byte length must not slip through.
        assert_eq!(username_from_name("İ"), None);
    }

    #[test]
    fn web_hashes_are_argon2id_and_verify() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let h = web_hash("correct horse", &mut rng);
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_web_password(&h, "correct horse"));
        assert!(!verify_web_password(&h, "correct horsE"));
        assert!(!verify_web_password(&h, ""));
        // A new salt every time.
        assert_ne!(h, web_hash("correct horse", &mut rng));
        // No web password, or garbage: nothing matches.
        assert!(!verify_web_password("", "correct horse"));
        assert!(!verify_web_password("$argon2id$broken", "correct horse"));
        assert!(!verify_web_password("not a password", "not a password"));
    }

    #[test]
    fn generated_passwords() {
        let a = generate_password(&mut rand::rngs::StdRng::seed_from_u64(1));
        let b = generate_password(&mut rand::rngs::StdRng::seed_from_u64(2));
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| PASSWORD_ALPHABET.contains(&c)));
        for c in b"0O1lI" {
            assert!(!PASSWORD_ALPHABET.contains(c));
        }
    }

    #[test]
    fn add_stores_only_ha1s() {
        let (dir, conn) = db();
        let op = add(
            &conn,
            "Anna",
            "hotline",
            None,
            &mut rng(),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(op.name, "Anna");
        assert_eq!(op.sip_username, "anna");
        assert_eq!(op.password.len(), 20);
        let (name, set) = credentials(&conn, "anna", "hotline").unwrap().unwrap();
        assert_eq!(name, "Anna");
        assert_eq!(set, Ha1Set::from_password("anna", "hotline", &op.password));
        let web = crate::store::web_account(&conn, "Anna").unwrap().unwrap();
        assert_eq!(web.role, Role::Operator);
        assert!(verify_web_password(&web.web_hash, &op.password));
        assert_eq!(
            set.md5.as_deref(),
            Some(&*ha1(Algorithm::Md5, "anna", "hotline", &op.password))
        );
        assert_eq!(
            set.sha256.as_deref(),
            Some(&*ha1(Algorithm::Sha256, "anna", "hotline", &op.password))
        );
        // Another realm: the HA1s would not verify, so none are handed out.
        assert!(credentials(&conn, "anna", "other").unwrap().is_none());
        assert!(credentials(&conn, "nobody", "hotline").unwrap().is_none());
        // The password is nowhere in the database files (main file, WAL, shm).
        let given = add(
            &conn,
            "Борис",
            "hotline",
            Some("correct horse"),
            &mut rng(),
            SystemTime::now(),
        )
        .unwrap();
        assert!(given.sip_username.starts_with("op"));
        assert_eq!(given.sip_username.len(), 8);
        assert!(given.sip_username[2..].bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(given.password, "correct horse");
        drop(conn);
        let mut seen = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            seen += bytes.len();
            for secret in [op.password.as_bytes(), b"correct horse"] {
                assert!(!bytes.windows(secret.len()).any(|w| w == secret));
            }
        }
        assert!(seen > 0);
    }

    #[test]
    fn add_refuses_bad_input() {
        let (_dir, conn) = db();
        add(
            &conn,
            "anna",
            "hotline",
            None,
            &mut rng(),
            SystemTime::now(),
        )
        .unwrap();
        let err = |name: &str, pw: Option<&str>| {
            add(&conn, name, "hotline", pw, &mut rng(), SystemTime::now()).unwrap_err()
        };
        assert!(matches!(err("", None), OperatorError::EmptyName));
        assert!(matches!(err("   ", None), OperatorError::EmptyName));
        assert!(matches!(
            err(" anna", None),
            OperatorError::SurroundingWhitespace
        ));
        assert!(matches!(
            err("an\nna", None),
            OperatorError::ControlCharacters
        ));
        assert!(matches!(
            err("an\u{7f}na", None),
            OperatorError::ControlCharacters
        ));
        assert!(matches!(
            err(&"я".repeat(65), None),
            OperatorError::NameTooLong(65)
        ));
        assert!(add(
            &conn,
            &"я".repeat(64),
            "hotline",
            None,
            &mut rng(),
            SystemTime::now()
        )
        .is_ok());
        assert!(matches!(
            err("bob", Some("short")),
            OperatorError::PasswordTooShort
        ));
        assert!(matches!(
            err("bob", Some("longer\tpassword")),
            OperatorError::PasswordControlCharacters
        ));
        let dup = err("anna", None);
        assert!(matches!(dup, OperatorError::Duplicate(_)));
        assert_eq!(dup.to_string(), "an operator named \"anna\" already exists");
        // Same username after lowercasing: the second account gets a random one.
        let other = add(
            &conn,
            "ANNA",
            "hotline",
            None,
            &mut rng(),
            SystemTime::now(),
        )
        .unwrap();
        assert!(other.sip_username.starts_with("op"));
        assert_eq!(list_operators(&conn).unwrap().len(), 3);
    }

    #[test]
    fn list_remove_passwd() {
        let (_dir, conn) = db();
        add(
            &conn,
            "boris",
            "hotline",
            Some("password1"),
            &mut rng(),
            SystemTime::now(),
        )
        .unwrap();
        add(
            &conn,
            "anna",
            "hotline",
            Some("password2"),
            &mut rng(),
            SystemTime::now(),
        )
        .unwrap();
        conn.execute(
            "INSERT INTO operator_events (operator, state, source, at) VALUES
             ('anna', 'available', 'registrar', ?1), ('anna', 'on_call', 'queue', ?1)",
            params![crate::store::rfc3339(SystemTime::now())],
        )
        .unwrap();
        let list = list_operators(&conn).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "anna");
        assert_eq!(list[0].last_state.as_deref(), Some("on_call"));
        assert!(list[0].last_state_at.is_some());
        assert_eq!(list[1].name, "boris");
        assert_eq!(list[1].last_state, None);

        let changed = passwd(
            &conn,
            "anna",
            "hotline",
            None,
            &mut rng(),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(changed.sip_username, "anna");
        assert_eq!(changed.password.len(), 20);
        let web = crate::store::web_account(&conn, "anna").unwrap().unwrap();
        assert!(verify_web_password(&web.web_hash, &changed.password));
        assert!(!verify_web_password(&web.web_hash, "password2"));
        let (_, set) = credentials(&conn, "anna", "hotline").unwrap().unwrap();
        assert_eq!(
            set,
            Ha1Set::from_password("anna", "hotline", &changed.password)
        );
        // passwd moves the account to the realm it is given.
        passwd(
            &conn,
            "anna",
            "new-realm",
            Some("password3"),
            &mut rng(),
            SystemTime::now(),
        )
        .unwrap();
        assert!(credentials(&conn, "anna", "hotline").unwrap().is_none());
        let (_, set) = credentials(&conn, "anna", "new-realm").unwrap().unwrap();
        assert_eq!(set, Ha1Set::from_password("anna", "new-realm", "password3"));
        assert!(matches!(
            passwd(
                &conn,
                "anna",
                "hotline",
                Some("short"),
                &mut rng(),
                SystemTime::now()
            ),
            Err(OperatorError::PasswordTooShort)
        ));
        assert!(matches!(
            passwd(
                &conn,
                "carl",
                "hotline",
                None,
                &mut rng(),
                SystemTime::now()
            ),
            Err(OperatorError::NotFound(_))
        ));

        remove_operator(&conn, "anna").unwrap();
        let err = remove_operator(&conn, "anna").unwrap_err();
        assert_eq!(err.to_string(), "no operator named \"anna\"");
        assert!(credentials(&conn, "anna", "new-realm").unwrap().is_none());
        let events: i64 = conn
            .query_row("SELECT count(*) FROM operator_events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 2, "history is kept");
        // A new account under the old name does not inherit the old states.
        conn.execute(
            "UPDATE operator_events SET at = '2000-01-01T00:00:00.5Z'",
            [],
        )
        .unwrap();
        add(
            &conn,
            "anna",
            "hotline",
            None,
            &mut rng(),
            SystemTime::now(),
        )
        .unwrap();
        let list = list_operators(&conn).unwrap();
        assert_eq!(list[0].name, "anna");
        assert_eq!(list[0].last_state, None);
    }
}
