//! Operator accounts: pseudonym, SIP username and digest HA1s, and the queries behind
//! `hotline operator add|list|remove|passwd`.
//!
//! Owns the `operators` table and reads `operator_events`. Plain passwords pass through
//! here only to derive the HA1s and to be shown once to the administrator; they are
//! never stored or logged. Every function takes a plain connection, so the CLI works
//! whether or not the server runs (WAL and the busy timeout of `store::open` make the
//! two share the file).

use crate::sip::digest::{ha1, Algorithm, Ha1Set};
use rand::rngs::OsRng;
use rand::Rng;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::time::SystemTime;

/// Longest operator name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Shortest password an administrator may choose.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Length of a generated password.
const GENERATED_PASSWORD_CHARS: usize = 20;
/// No 0/O/o, 1/l/I: a password read aloud or copied from a screen survives.
const PASSWORD_ALPHABET: &[u8] = b"23456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ";
/// Attempts at a free random SIP username before giving up.
const USERNAME_ATTEMPTS: usize = 100;

/// What the administrator is shown once after `operator add` or `operator passwd`.
#[derive(Debug, Clone, Serialize)]
pub struct NewOperator {
    pub name: String,
    pub sip_username: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OperatorRow {
    pub name: String,
    pub sip_username: String,
    pub created_at: String,
    /// The latest state recorded for this operator since the account was created.
    pub last_state: Option<String>,
    pub last_state_at: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("operator name must not be empty")]
    EmptyName,
    #[error("operator name is too long ({0} characters; at most 64)")]
    NameTooLong(usize),
    #[error("operator name must not contain control characters (tabs, newlines, ...)")]
    ControlCharacters,
    #[error("operator name must not start or end with a space")]
    SurroundingWhitespace,
    #[error("an operator named \"{0}\" already exists")]
    Duplicate(String),
    #[error("no operator named \"{0}\"")]
    NotFound(String),
    #[error("password is too short (at least 8 characters)")]
    PasswordTooShort,
    #[error("password must not contain control characters")]
    PasswordControlCharacters,
    #[error("no free SIP username found; try again")]
    NoFreeUsername,
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
}

fn check_name(name: &str) -> Result<(), OperatorError> {
    if name.trim().is_empty() {
        return Err(OperatorError::EmptyName);
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(OperatorError::NameTooLong(chars));
    }
    if name.chars().any(char::is_control) {
        return Err(OperatorError::ControlCharacters);
    }
    if name.trim() != name {
        return Err(OperatorError::SurroundingWhitespace);
    }
    Ok(())
}

/// A given password is checked; none means one is generated.
fn choose_password(password: Option<&str>) -> Result<String, OperatorError> {
    match password {
        Some(p) if p.chars().count() < MIN_PASSWORD_CHARS => Err(OperatorError::PasswordTooShort),
        Some(p) if p.chars().any(char::is_control) => Err(OperatorError::PasswordControlCharacters),
        Some(p) => Ok(p.to_string()),
        None => Ok(generate_password()),
    }
}

fn generate_password() -> String {
    let mut rng = OsRng;
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

fn random_username() -> String {
    format!("op{:06}", OsRng.gen_range(0..1_000_000u32))
}

fn name_taken(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM operators WHERE name = ?1",
        params![name],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}

fn username_taken(conn: &Connection, user: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM operators WHERE sip_username = ?1",
        params![user],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}

/// Which UNIQUE column an insert collided on, if that is why it failed.
fn unique_violation(e: &rusqlite::Error) -> Option<&'static str> {
    match e {
        rusqlite::Error::SqliteFailure(f, Some(msg))
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            if msg.contains("operators.name") {
                Some("name")
            } else if msg.contains("operators.sip_username") {
                Some("sip_username")
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Creates an operator account. The password, given or generated, is returned once and
/// only its HA1s (MD5 and SHA-256, RFC 8760) are stored.
pub fn add_operator(
    conn: &Connection,
    name: &str,
    realm: &str,
    password: Option<&str>,
) -> Result<NewOperator, OperatorError> {
    check_name(name)?;
    let password = choose_password(password)?;
    if name_taken(conn, name)? {
        return Err(OperatorError::Duplicate(name.to_string()));
    }
    let mut preferred = username_from_name(name);
    let now = super::rfc3339(SystemTime::now());
    for _ in 0..USERNAME_ATTEMPTS {
        let user = match preferred.take() {
            Some(u) => u,
            None => random_username(),
        };
        if username_taken(conn, &user)? {
            continue;
        }
        let inserted = conn.execute(
            "INSERT INTO operators (name, sip_username, realm, ha1_md5, ha1_sha256, created_at, password_changed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![
                name,
                user,
                realm,
                ha1(Algorithm::Md5, &user, realm, &password),
                ha1(Algorithm::Sha256, &user, realm, &password),
                now
            ],
        );
        match inserted {
            Ok(_) => {
                return Ok(NewOperator {
                    name: name.to_string(),
                    sip_username: user,
                    password,
                })
            }
            // Another `operator add` got there between our check and the insert.
            Err(e) => match unique_violation(&e) {
                Some("name") => return Err(OperatorError::Duplicate(name.to_string())),
                Some(_) => continue,
                None => return Err(e.into()),
            },
        }
    }
    Err(OperatorError::NoFreeUsername)
}

/// All operators by name, with the latest state recorded for each.
pub fn list_operators(conn: &Connection) -> rusqlite::Result<Vec<OperatorRow>> {
    // Events are kept when an account is removed; a later account with the same name
    // must not inherit them, hence the comparison with created_at.
    let mut stmt = conn.prepare(
        "SELECT o.name, o.sip_username, o.created_at, e.state, e.at
         FROM operators o
         LEFT JOIN operator_events e ON e.id = (
             SELECT id FROM operator_events
             WHERE operator = o.name AND julianday(at) >= julianday(o.created_at)
             ORDER BY id DESC LIMIT 1)
         ORDER BY o.name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(OperatorRow {
            name: r.get(0)?,
            sip_username: r.get(1)?,
            created_at: r.get(2)?,
            last_state: r.get(3)?,
            last_state_at: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// Deletes the account; its recorded state changes stay for the history.
pub fn remove_operator(conn: &Connection, name: &str) -> Result<(), OperatorError> {
    let n = conn.execute("DELETE FROM operators WHERE name = ?1", params![name])?;
    if n == 0 {
        return Err(OperatorError::NotFound(name.to_string()));
    }
    Ok(())
}

/// Replaces the password (given or generated); also re-derives the HA1s for `realm`,
/// which is how an administrator moves accounts to a new realm.
pub fn set_operator_password(
    conn: &Connection,
    name: &str,
    realm: &str,
    password: Option<&str>,
) -> Result<NewOperator, OperatorError> {
    let password = choose_password(password)?;
    let user: String = conn
        .query_row(
            "SELECT sip_username FROM operators WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| OperatorError::NotFound(name.to_string()))?;
    let n = conn.execute(
        "UPDATE operators SET realm = ?1, ha1_md5 = ?2, ha1_sha256 = ?3, password_changed_at = ?4
         WHERE name = ?5 AND sip_username = ?6",
        params![
            realm,
            ha1(Algorithm::Md5, &user, realm, &password),
            ha1(Algorithm::Sha256, &user, realm, &password),
            super::rfc3339(SystemTime::now()),
            name,
            user
        ],
    )?;
    if n == 0 {
        // Removed (or re-created) between the two statements.
        return Err(OperatorError::NotFound(name.to_string()));
    }
    Ok(NewOperator {
        name: name.to_string(),
        sip_username: user,
        password,
    })
}

/// The operator's name and stored HA1s for a digest check, or None when there is no
/// such SIP username or its HA1s were derived for another realm.
pub fn operator_credentials(
    conn: &Connection,
    sip_username: &str,
    realm: &str,
) -> rusqlite::Result<Option<(String, Ha1Set)>> {
    let row = conn
        .query_row(
            "SELECT name, realm, ha1_md5, ha1_sha256 FROM operators WHERE sip_username = ?1",
            params![sip_username],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )
        .optional()?;
    Ok(row.and_then(|(name, stored_realm, md5, sha256)| {
        (stored_realm == realm).then_some((
            name,
            Ha1Set {
                md5: Some(md5),
                sha256: Some(sha256),
            },
        ))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open;

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
    fn generated_passwords() {
        let a = generate_password();
        let b = generate_password();
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
        let op = add_operator(&conn, "Anna", "hotline", None).unwrap();
        assert_eq!(op.name, "Anna");
        assert_eq!(op.sip_username, "anna");
        assert_eq!(op.password.len(), 20);
        let (name, set) = operator_credentials(&conn, "anna", "hotline")
            .unwrap()
            .unwrap();
        assert_eq!(name, "Anna");
        assert_eq!(set, Ha1Set::from_password("anna", "hotline", &op.password));
        assert_eq!(
            set.md5.as_deref(),
            Some(&*ha1(Algorithm::Md5, "anna", "hotline", &op.password))
        );
        assert_eq!(
            set.sha256.as_deref(),
            Some(&*ha1(Algorithm::Sha256, "anna", "hotline", &op.password))
        );
        // Another realm: the HA1s would not verify, so none are handed out.
        assert!(operator_credentials(&conn, "anna", "other")
            .unwrap()
            .is_none());
        assert!(operator_credentials(&conn, "nobody", "hotline")
            .unwrap()
            .is_none());
        // The password is nowhere in the database files (main file, WAL, shm).
        let given = add_operator(&conn, "Борис", "hotline", Some("correct horse")).unwrap();
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
        add_operator(&conn, "anna", "hotline", None).unwrap();
        let err =
            |name: &str, pw: Option<&str>| add_operator(&conn, name, "hotline", pw).unwrap_err();
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
        assert!(add_operator(&conn, &"я".repeat(64), "hotline", None).is_ok());
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
        let other = add_operator(&conn, "ANNA", "hotline", None).unwrap();
        assert!(other.sip_username.starts_with("op"));
        assert_eq!(list_operators(&conn).unwrap().len(), 3);
    }

    #[test]
    fn list_remove_passwd() {
        let (_dir, conn) = db();
        add_operator(&conn, "boris", "hotline", Some("password1")).unwrap();
        add_operator(&conn, "anna", "hotline", Some("password2")).unwrap();
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

        let changed = set_operator_password(&conn, "anna", "hotline", None).unwrap();
        assert_eq!(changed.sip_username, "anna");
        assert_eq!(changed.password.len(), 20);
        let (_, set) = operator_credentials(&conn, "anna", "hotline")
            .unwrap()
            .unwrap();
        assert_eq!(
            set,
            Ha1Set::from_password("anna", "hotline", &changed.password)
        );
        // passwd moves the account to the realm it is given.
        set_operator_password(&conn, "anna", "new-realm", Some("password3")).unwrap();
        assert!(operator_credentials(&conn, "anna", "hotline")
            .unwrap()
            .is_none());
        let (_, set) = operator_credentials(&conn, "anna", "new-realm")
            .unwrap()
            .unwrap();
        assert_eq!(set, Ha1Set::from_password("anna", "new-realm", "password3"));
        assert!(matches!(
            set_operator_password(&conn, "anna", "hotline", Some("short")),
            Err(OperatorError::PasswordTooShort)
        ));
        assert!(matches!(
            set_operator_password(&conn, "carl", "hotline", None),
            Err(OperatorError::NotFound(_))
        ));

        remove_operator(&conn, "anna").unwrap();
        let err = remove_operator(&conn, "anna").unwrap_err();
        assert_eq!(err.to_string(), "no operator named \"anna\"");
        assert!(operator_credentials(&conn, "anna", "new-realm")
            .unwrap()
            .is_none());
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
        add_operator(&conn, "anna", "hotline", None).unwrap();
        let list = list_operators(&conn).unwrap();
        assert_eq!(list[0].name, "anna");
        assert_eq!(list[0].last_state, None);
    }
}
