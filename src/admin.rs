//! The subcommands that look after stored data: `keys`, `unseal`, `seal`, `export`,
//! `backup`, `purge`, and the opening of sealed details for `calls` and `voicemails`.
//!
//! Each returns the process exit status. Nothing decrypted is written anywhere but to
//! standard output and `export`'s output directory.

use crate::config::Config;
use crate::control::{self, ControlCommand, ControlError, SecretText};
use crate::store::{self, details, seal};
use age::x25519;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("hotline: {msg}");
    ExitCode::FAILURE
}

/// `hotline keys generate --out FILE`
pub fn keys_generate(out: &Path) -> ExitCode {
    if out.exists() {
        return fail(format!("{}: exists; choose a new file", out.display()));
    }
    let pass = match crate::keys::read_passphrase("Passphrase for the new identity: ", true) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    eprintln!("hotline: encrypting the identity (scrypt, about a second)...");
    match crate::keys::generate(out, pass) {
        Ok(recipient) => {
            println!("{recipient}");
            eprintln!(
                "hotline: identity written to {} (passphrase-protected). Put the line above in \
                 storage.recipients, and keep the file and its passphrase off this server.",
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn request(cfg: &Config, command: &ControlCommand) -> Result<serde_json::Value, String> {
    match control::request(&control::socket_path(cfg), command) {
        Ok(r) if r["ok"] == true => Ok(r),
        Ok(r) => Err(r["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("unexpected reply: {r}"))),
        Err(ControlError::NotRunning) => Err("hotline is not running".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// `hotline keys status`
pub fn keys_status(cfg: &Config, json: bool) -> ExitCode {
    match request(cfg, &ControlCommand::SealStatus) {
        Ok(r) if json => {
            println!("{r}");
            ExitCode::SUCCESS
        }
        Ok(r) => {
            if r["sealing"] != true {
                println!(
                    "sealing off (storage.recipients is empty): everything is stored in clear"
                );
            } else if r["sealed"] == true {
                println!("sealed");
            } else {
                println!("unsealed (an identity is held in memory; `hotline seal` forgets it)");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `hotline unseal --identity FILE`: decrypts the identity here and hands it to the
/// running server, which keeps it in memory only.
pub fn unseal(cfg: &Config, identity: &Path) -> ExitCode {
    let text = match crate::keys::read_identity_text(
        identity,
        crate::keys::ask_passphrase_for(identity),
    ) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    if let Err(e) = seal::parse_identities(&text) {
        return fail(format!("{}: {e}", identity.display()));
    }
    let command = ControlCommand::Unseal {
        identity: SecretText::new(text.to_string()),
    };
    drop(text);
    match request(cfg, &command) {
        Ok(_) => {
            println!("unsealed");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `hotline seal`
pub fn seal_now(cfg: &Config) -> ExitCode {
    match request(cfg, &ControlCommand::Seal) {
        Ok(_) => {
            println!("sealed");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Opens the sealed details of `ids`: with the identity file when given, else through
/// the running server if it is unsealed. Err names why they stay locked.
pub fn open_details(
    cfg: &Config,
    conn: &rusqlite::Connection,
    ids: &[i64],
    identity: Option<&[x25519::Identity]>,
) -> Result<HashMap<i64, details::CallDetails>, String> {
    let mut out = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    if let Some(ids_) = identity {
        let blobs = details::load_blobs(conn, ids).map_err(|e| e.to_string())?;
        for (id, b) in blobs {
            let d = details::open_details(ids_, &b).map_err(|e| format!("call {id}: {e}"))?;
            out.insert(id, d);
        }
        return Ok(out);
    }
    for chunk in ids.chunks(crate::vault::MAX_OPEN_CALLS) {
        let r = request(
            cfg,
            &ControlCommand::OpenCalls {
                calls: chunk.to_vec(),
            },
        )?;
        for (id, v) in r["calls"].as_object().into_iter().flatten() {
            let d: details::CallDetails =
                serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
            if let Ok(id) = id.parse() {
                out.insert(id, d);
            }
        }
    }
    Ok(out)
}

/// Reads `--identity FILE` when given.
pub fn identity_arg(path: Option<&Path>) -> Result<Option<Vec<x25519::Identity>>, String> {
    path.map(|p| crate::keys::load_identities(p, crate::keys::ask_passphrase_for(p)))
        .transpose()
}

/// Fills the sealed details of `rows` when it can; says on stderr when it cannot.
pub fn open_rows(
    cfg: &Config,
    conn: &rusqlite::Connection,
    rows: &mut [store::CallRow],
    identity: Option<&[x25519::Identity]>,
) -> Result<(), String> {
    let sealed = details::mark_sealed(conn, rows).map_err(|e| e.to_string())?;
    match open_details(cfg, conn, &sealed, identity) {
        Ok(opened) => {
            for r in rows.iter_mut() {
                if let Some(d) = opened.get(&r.id) {
                    d.apply_to(r);
                }
            }
            Ok(())
        }
        // Locked details are not an error: the rows say "sealed": "locked".
        Err(e) if identity.is_none() => {
            eprintln!("hotline: answers, digits and IVR paths stay sealed ({e}); pass --identity FILE or run hotline unseal");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `hotline export --identity FILE --out DIR [--call ID ...]`: decrypted copies of
/// calls and their recordings, for a case file.
pub fn export(cfg: &Config, identity: &Path, out: &Path, only: &[i64]) -> ExitCode {
    match export_inner(cfg, identity, out, only) {
        Ok((calls, recordings)) => {
            println!(
                "exported {calls} calls and {recordings} recordings to {}",
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn export_inner(
    cfg: &Config,
    identity: &Path,
    out: &Path,
    only: &[i64],
) -> Result<(usize, usize), String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let data_dir = std::fs::canonicalize(&cfg.storage.data_dir)
        .map_err(|e| format!("{}: {e}", cfg.storage.data_dir.display()))?;
    // A relative DIR has the working directory as its parent: check that too.
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let parent = std::fs::canonicalize(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    if parent.starts_with(&data_dir) {
        return Err(format!(
            "{}: inside the data directory; decrypted copies must go elsewhere",
            out.display()
        ));
    }
    if std::fs::read_dir(out)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
    {
        return Err(format!("{}: not empty", out.display()));
    }
    let ids = crate::keys::load_identities(identity, crate::keys::ask_passphrase_for(identity))?;
    let db = cfg.database_path();
    let conn = store::open_existing(&db)
        .map_err(|e| format!("{}: {e}", db.display()))?
        .ok_or_else(|| format!("{}: no database", db.display()))?;
    let mut rows = store::list_calls(&conn, 1 << 40).map_err(|e| e.to_string())?;
    if !only.is_empty() {
        rows.retain(|r| only.contains(&r.id));
        if let Some(missing) = only.iter().find(|id| !rows.iter().any(|r| r.id == **id)) {
            return Err(format!("no call {missing}"));
        }
    }
    details::open_rows(&conn, &ids, &mut rows)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out.join("recordings"))
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let mut n_rec = 0;
    for r in rows.iter_mut() {
        for (i, rec) in r.recordings.iter_mut().enumerate() {
            let src = resolve(&data_dir, &rec.path);
            let name = format!("recordings/call{}-{}-{}.wav", r.id, i + 1, rec.kind);
            let dst = out.join(&name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dst)
                .map_err(|e| format!("{}: {e}", dst.display()))?;
            let (_, sha) = hash(&src)?;
            if sha != rec.sha256 {
                return Err(format!(
                    "{}: differs from the SHA-256 its row recorded (damaged or replaced)",
                    src.display()
                ));
            }
            if rec.path.ends_with(seal::SEALED_SUFFIX) {
                seal::open_file(&ids, &src, &mut f)?;
            } else {
                std::io::copy(
                    &mut std::fs::File::open(&src)
                        .map_err(|e| format!("{}: {e}", src.display()))?,
                    &mut f,
                )
                .map_err(|e| format!("{}: {e}", dst.display()))?;
            }
            f.sync_all()
                .map_err(|e| format!("{}: {e}", dst.display()))?;
            rec.path = name;
            n_rec += 1;
        }
    }
    // Notes are the caller's details too: with the call, decrypted.
    let mut calls = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut notes = store::console::notes(&conn, r.id).map_err(|e| e.to_string())?;
        store::sealed_view::open_notes_with(&ids, &mut notes)
            .map_err(|e| format!("call {}: {e}", r.id))?;
        let mut call = serde_json::to_value(r).map_err(|e| e.to_string())?;
        call["notes"] = serde_json::to_value(&notes).map_err(|e| e.to_string())?;
        calls.push(call);
    }
    let json = serde_json::to_vec_pretty(&calls).map_err(|e| e.to_string())?;
    let path = out.join("calls.json");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    use std::io::Write;
    f.write_all(&json)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((rows.len(), n_rec))
}

fn resolve(data_dir: &Path, stored: &str) -> PathBuf {
    let p = Path::new(stored);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        data_dir.join(p)
    }
}

fn hash(path: &Path) -> Result<(u64, String), String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((n, hex::encode(h.finalize())))
}

/// `hotline backup DEST` and `hotline backup --verify DEST`
pub fn backup(cfg: &Config, dest: &Path, verify: bool) -> ExitCode {
    if verify {
        return match store::backup::verify(dest) {
            Ok(r) => {
                println!(
                    "{}: ok ({} files, {} calls, {} recordings)",
                    dest.display(),
                    r.files,
                    r.calls,
                    r.recordings
                );
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in &problems {
                    eprintln!("hotline: {}: {p}", dest.display());
                }
                eprintln!(
                    "hotline: {}: {} problems: the backup is not good",
                    dest.display(),
                    problems.len()
                );
                ExitCode::FAILURE
            }
        };
    }
    match store::backup::backup(
        &cfg.database_path(),
        &cfg.storage.data_dir,
        dest,
        std::time::SystemTime::now(),
    ) {
        Ok(r) => {
            println!(
                "backup in {}: {} calls, {} recordings, {} files, {} bytes",
                dest.display(),
                r.calls,
                r.recordings,
                r.files,
                r.bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.lines() {
                eprintln!("hotline: backup: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `hotline purge [--dry-run] [--json]`
pub fn purge(cfg: &Config, dry_run: bool, json: bool) -> ExitCode {
    use store::retention::{self, Policy};
    let policy = Policy::from_config(cfg);
    if !policy.is_active() {
        println!("retention is off (retention.recordings_days and retention.calls_days are 0): nothing to purge");
        return ExitCode::SUCCESS;
    }
    let db = cfg.database_path();
    let mut conn = match store::open_existing(&db) {
        Ok(Some(c)) => c,
        Ok(None) => {
            println!("no database yet");
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(format!("{}: {e}", db.display())),
    };
    let (plan, done) = match retention::purge(
        &mut conn,
        &cfg.storage.data_dir,
        &policy,
        std::time::SystemTime::now(),
        dry_run,
    ) {
        Ok(r) => r,
        Err(e) => return fail(format!("{}: {e}", db.display())),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"dry_run": dry_run, "plan": plan, "purged": done})
        );
        return ExitCode::SUCCESS;
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    for r in &plan.recordings {
        println!(
            "{verb} recording of call {} from {}: {}",
            r.call_id, r.created_at, r.path
        );
    }
    for c in &plan.calls {
        println!("{verb} call {} from {}", c.id, c.started_at);
    }
    for f in &plan.orphan_files {
        println!("{verb} file no call names: {f}");
    }
    println!(
        "{}: {} recordings, {} calls, {} files no call names",
        if dry_run { "dry run" } else { "purged" },
        plan.recordings.len(),
        plan.calls.len(),
        plan.orphan_files.len()
    );
    if done.failed_files > 0 {
        return fail(format!("{} files could not be deleted", done.failed_files));
    }
    ExitCode::SUCCESS
}
