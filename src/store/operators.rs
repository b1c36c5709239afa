//! Operator accounts as stored: pseudonym, SIP username and the password hashes the
//! accounts layer derived, and the queries behind `hotline operator add|list|remove|
//! passwd`.
//!
//! Owns the `operators` table and reads `operator_events`. It never sees a password
//! and does not interpret the hashes it keeps (deriving them is SIP's business, see
//! `crate::accounts`). Every function takes a plain connection, so the CLI works
//! whether or not the server runs (WAL and the busy timeout of `store::open` make the
//! two share the file).

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::time::SystemTime;

/// Longest operator name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// What is stored of an account's password: hashes derived outside the store.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHashes {
    pub ha1_md5: String,
    pub ha1_sha256: String,
    /// Argon2id (PHC string) for console logins; empty for an account created before
    /// the console existed, which cannot log in there until its next `passwd`.
    pub web: String,
}

/// What an account may do in the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Operator,
    Supervisor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Supervisor => "supervisor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "operator" => Some(Role::Operator),
            "supervisor" => Some(Role::Supervisor),
            _ => None,
        }
    }
}

/// An account as a console login sees it.
#[derive(Clone)]
pub struct WebAccount {
    pub name: String,
    pub sip_username: String,
    pub role: Role,
    /// Empty: no web password set yet.
    pub web_hash: String,
    /// None: the configured default.
    pub language: Option<String>,
    /// Changes with every new password: sessions opened before are void.
    pub password_changed_at: String,
}

impl std::fmt::Debug for WebAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebAccount")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PasswordHashes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHashes(..)")
    }
}

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
    pub role: Role,
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

pub fn check_name(name: &str) -> Result<(), OperatorError> {
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

/// Stores a new account under the first free SIP username of `usernames`, with the
/// hashes `hash(username)` gives.
pub fn insert_operator(
    conn: &Connection,
    name: &str,
    realm: &str,
    role: Role,
    usernames: &mut dyn Iterator<Item = String>,
    hash: &dyn Fn(&str) -> PasswordHashes,
    now: SystemTime,
) -> Result<String, OperatorError> {
    check_name(name)?;
    if name_taken(conn, name)? {
        return Err(OperatorError::Duplicate(name.to_string()));
    }
    let now = super::rfc3339(now);
    for user in usernames {
        if username_taken(conn, &user)? {
            continue;
        }
        let hashes = hash(&user);
        let inserted = conn.execute(
            "INSERT INTO operators (name, sip_username, realm, ha1_md5, ha1_sha256, created_at, password_changed_at, web_hash, role)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
            params![name, user, realm, hashes.ha1_md5, hashes.ha1_sha256, now, hashes.web, role.as_str()],
        );
        match inserted {
            Ok(_) => return Ok(user),
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
        "SELECT o.name, o.sip_username, o.created_at, e.state, e.at, o.role
         FROM operators o
         LEFT JOIN operator_events e ON e.id = (
             SELECT id FROM operator_events
             WHERE operator = o.name AND julianday(at) >= julianday(o.created_at)
             ORDER BY id DESC LIMIT 1)
         ORDER BY o.name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(OperatorRow {
            role: Role::parse(&r.get::<_, String>(5)?).unwrap_or(Role::Operator),
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

/// The SIP username of the account called `name`.
pub fn operator_username(conn: &Connection, name: &str) -> Result<String, OperatorError> {
    conn.query_row(
        "SELECT sip_username FROM operators WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| OperatorError::NotFound(name.to_string()))
}

/// Replaces the stored hashes of `name` (whose SIP username is `user`), and its realm:
/// how an administrator moves accounts to a new realm.
pub fn update_operator_hashes(
    conn: &Connection,
    name: &str,
    user: &str,
    realm: &str,
    hashes: &PasswordHashes,
    now: SystemTime,
) -> Result<(), OperatorError> {
    let n = conn.execute(
        "UPDATE operators SET realm = ?1, ha1_md5 = ?2, ha1_sha256 = ?3, password_changed_at = ?4,
             web_hash = ?7
         WHERE name = ?5 AND sip_username = ?6",
        params![
            realm,
            hashes.ha1_md5,
            hashes.ha1_sha256,
            super::rfc3339(now),
            name,
            user,
            hashes.web
        ],
    )?;
    if n == 0 {
        // Removed (or re-created) meanwhile.
        return Err(OperatorError::NotFound(name.to_string()));
    }
    Ok(())
}

/// The operator's name and stored hashes for a digest check, or None when there is no
/// such SIP username or its hashes were derived for another realm.
pub fn operator_hashes(
    conn: &Connection,
    sip_username: &str,
    realm: &str,
) -> rusqlite::Result<Option<(String, PasswordHashes)>> {
    let row = conn
        .query_row(
            "SELECT name, realm, ha1_md5, ha1_sha256, COALESCE(web_hash, '')
             FROM operators WHERE sip_username = ?1",
            params![sip_username],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    PasswordHashes {
                        ha1_md5: r.get(2)?,
                        ha1_sha256: r.get(3)?,
                        web: r.get(4)?,
                    },
                ))
            },
        )
        .optional()?;
    Ok(row
        .and_then(|(name, stored_realm, hashes)| (stored_realm == realm).then_some((name, hashes))))
}

/// Every account's SIP username and stored hashes for `realm` (the registrar holds
/// them in memory, so no query runs on the SIP path).
pub fn all_operator_hashes(
    conn: &Connection,
    realm: &str,
) -> rusqlite::Result<Vec<(String, String, PasswordHashes)>> {
    let mut stmt = conn.prepare(
        "SELECT sip_username, name, ha1_md5, ha1_sha256, COALESCE(web_hash, '')
         FROM operators WHERE realm = ?1",
    )?;
    let rows = stmt.query_map(params![realm], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            PasswordHashes {
                ha1_md5: r.get(2)?,
                ha1_sha256: r.get(3)?,
                web: r.get(4)?,
            },
        ))
    })?;
    rows.collect()
}

/// The account called `name` as a console login needs it.
pub fn web_account(conn: &Connection, name: &str) -> rusqlite::Result<Option<WebAccount>> {
    conn.query_row(
        "SELECT name, sip_username, role, COALESCE(web_hash, ''), language, password_changed_at
         FROM operators WHERE name = ?1",
        params![name],
        |r| {
            Ok(WebAccount {
                name: r.get(0)?,
                sip_username: r.get(1)?,
                role: Role::parse(&r.get::<_, String>(2)?).unwrap_or(Role::Operator),
                web_hash: r.get(3)?,
                language: r.get(4)?,
                password_changed_at: r.get(5)?,
            })
        },
    )
    .optional()
}

pub fn set_role(conn: &Connection, name: &str, role: Role) -> Result<(), OperatorError> {
    let n = conn.execute(
        "UPDATE operators SET role = ?1 WHERE name = ?2",
        params![role.as_str(), name],
    )?;
    if n == 0 {
        return Err(OperatorError::NotFound(name.to_string()));
    }
    Ok(())
}

pub fn set_language(conn: &Connection, name: &str, language: &str) -> Result<(), OperatorError> {
    let n = conn.execute(
        "UPDATE operators SET language = ?1 WHERE name = ?2",
        params![language, name],
    )?;
    if n == 0 {
        return Err(OperatorError::NotFound(name.to_string()));
    }
    Ok(())
}
