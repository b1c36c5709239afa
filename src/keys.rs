//! Offline keys for sealed storage: making a passphrase-protected age identity file,
//! reading one (or a plain one from `age-keygen`), and asking for passphrases.
//!
//! The identity file is an age identity (`AGE-SECRET-KEY-1…`, as `age-keygen` writes
//! it) encrypted with age's scrypt passphrase encryption and ASCII armour, exactly what
//! `age -p -a` produces: the `age` command decrypts with it directly (`age -d -i FILE`
//! asks for the passphrase). Must not write a decrypted identity anywhere.

use age::secrecy::{ExposeSecret, SecretString};
use age::x25519;
use std::io::{Read, Write};
use std::path::Path;
use zeroize::Zeroizing;

/// scrypt work factor (log2 N) of generated identity files.
const SCRYPT_WORK_FACTOR: u8 = 18;

/// Largest identity file read (one holds a few hundred bytes).
const MAX_IDENTITY_FILE: u64 = 64 * 1024;

/// Stops this process from writing core dumps, which would put a decrypted identity
/// or decrypted answers on disk. Called before any secret is read or received.
pub fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a valid rlimit on this process.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        tracing::warn!(
            "cannot disable core dumps: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Reads a passphrase: from the terminal when stdin is one (asking twice when
/// `confirm`), else one line from stdin, for scripts.
pub fn read_passphrase(prompt: &str, confirm: bool) -> Result<SecretString, String> {
    // SAFETY: isatty has no preconditions.
    let interactive = unsafe { libc::isatty(0) } == 1;
    let pass = if interactive {
        let first = Zeroizing::new(
            rpassword::prompt_password(prompt).map_err(|e| format!("passphrase: {e}"))?,
        );
        if confirm {
            let again = Zeroizing::new(
                rpassword::prompt_password("Repeat the passphrase: ")
                    .map_err(|e| format!("passphrase: {e}"))?,
            );
            if *again != *first {
                return Err("the passphrases differ".into());
            }
        }
        first
    } else {
        read_line(&mut std::io::stdin().take(4096))
            .map_err(|e| format!("passphrase from stdin: {e}"))?
    };
    if pass.is_empty() {
        return Err("empty passphrase".into());
    }
    Ok(SecretString::from(pass.to_string()))
}

/// One line without its end, read byte by byte so that nothing after it is consumed.
fn read_line(r: &mut impl Read) -> std::io::Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new(Vec::new());
    let mut b = [0u8; 1];
    loop {
        match r.read(&mut b) {
            Ok(0) => break,
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => bytes.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    let s = std::str::from_utf8(&bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))?;
    Ok(Zeroizing::new(s.to_string()))
}

/// Makes a new identity, writes it to `out` (which must not exist; mode 0600)
/// encrypted with `passphrase`, and returns its recipient.
pub fn generate(out: &Path, passphrase: SecretString) -> Result<x25519::Recipient, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let identity = x25519::Identity::generate();
    let recipient = identity.to_public();
    let created = crate::store::rfc3339(std::time::SystemTime::now());
    let text = Zeroizing::new(format!(
        "# created: {created}\n# public key: {recipient}\n{}\n",
        identity.to_string().expose_secret()
    ));
    let armored = {
        // age's own default (2^18, about a second): the crate would calibrate to the
        // speed of this build, which for an unoptimised one is far weaker.
        let mut scrypt = age::scrypt::Recipient::new(passphrase);
        scrypt.set_work_factor(SCRYPT_WORK_FACTOR);
        let enc = age::Encryptor::with_recipients(std::iter::once(&scrypt as &dyn age::Recipient))
            .map_err(|e| e.to_string())?;
        let armor =
            age::armor::ArmoredWriter::wrap_output(Vec::new(), age::armor::Format::AsciiArmor)
                .map_err(|e| e.to_string())?;
        let mut w = enc.wrap_output(armor).map_err(|e| e.to_string())?;
        w.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
        w.finish()
            .and_then(|a| a.finish())
            .map_err(|e| e.to_string())?
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    f.write_all(&armored)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(recipient)
}

/// Whether an identity file is passphrase-encrypted (age binary or armoured).
fn is_encrypted(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| &bytes[i..])
        .unwrap_or(&[]);
    start.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----")
        || start.starts_with(b"age-encryption.org/")
}

/// The text of an identity file, decrypted with a passphrase from `passphrase` when
/// the file is encrypted (it is asked only then).
pub fn read_identity_text(
    path: &Path,
    passphrase: impl FnOnce() -> Result<SecretString, String>,
) -> Result<Zeroizing<String>, String> {
    no_core_dumps();
    let name = path.display();
    let mut bytes = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_IDENTITY_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("{name}: {e}"))?;
    if bytes.len() as u64 > MAX_IDENTITY_FILE {
        return Err(format!("{name}: too large for an identity file"));
    }
    if !is_encrypted(&bytes) {
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| format!("{name}: neither an age identity file nor an encrypted one"))?;
        return Ok(Zeroizing::new(text.to_string()));
    }
    let decryptor = age::Decryptor::new(age::armor::ArmoredReader::new(&bytes[..]))
        .map_err(|e| format!("{name}: {e}"))?;
    if !decryptor.is_scrypt() {
        return Err(format!(
            "{name}: encrypted to a key, not with a passphrase: not an identity file"
        ));
    }
    let pass = passphrase()?;
    let mut identity = age::scrypt::Identity::new(pass);
    // The default bound follows this machine's speed; a key made on a faster one
    // must still open (2^22 is about 4 GiB of memory at most).
    identity.set_max_work_factor(22);
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                format!("{name}: wrong passphrase")
            }
            other => format!("{name}: {other}"),
        })?;
    let mut plain = Zeroizing::new(Vec::new());
    reader
        .read_to_end(&mut plain)
        .map_err(|e| format!("{name}: {e}"))?;
    let text = std::str::from_utf8(&plain).map_err(|_| format!("{name}: not UTF-8 inside"))?;
    Ok(Zeroizing::new(text.to_string()))
}

/// The identities of an identity file (see [`read_identity_text`]).
pub fn load_identities(
    path: &Path,
    passphrase: impl FnOnce() -> Result<SecretString, String>,
) -> Result<Vec<x25519::Identity>, String> {
    let text = read_identity_text(path, passphrase)?;
    crate::store::seal::parse_identities(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Asks for the passphrase of `path` (terminal or stdin).
pub fn ask_passphrase_for(path: &Path) -> impl FnOnce() -> Result<SecretString, String> + '_ {
    move || read_passphrase(&format!("Passphrase for {}: ", path.display()), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Result<SecretString, String> {
        Ok(SecretString::from(s.to_string()))
    }

    #[test]
    fn generated_files_open_with_their_passphrase_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hotline.key");
        let recipient = generate(&path, SecretString::from("correct horse".to_string())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"),
            "{text}"
        );
        assert!(!text.contains("AGE-SECRET-KEY"));
        let ids = load_identities(&path, || pass("correct horse")).unwrap();
        assert_eq!(ids[0].to_public().to_string(), recipient.to_string());
        let err = load_identities(&path, || pass("wrong"))
            .err()
            .expect("a wrong passphrase fails");
        assert!(err.ends_with("wrong passphrase"), "{err}");
        // Never replaces an existing file.
        assert!(generate(&path, SecretString::from("x".to_string())).is_err());
    }

    #[test]
    fn plain_identity_files_need_no_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.txt");
        let id = x25519::Identity::generate();
        std::fs::write(
            &path,
            format!("# a comment\n{}\n", id.to_string().expose_secret()),
        )
        .unwrap();
        let ids = load_identities(&path, || Err("not asked".into())).unwrap();
        assert_eq!(ids.len(), 1);
        let mut core = libc::rlimit {
            rlim_cur: 1,
            rlim_max: 1,
        };
        // SAFETY: getrlimit into a valid rlimit.
        unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut core) };
        assert_eq!(
            (core.rlim_cur, core.rlim_max),
            (0, 0),
            "no core dumps once a key is read"
        );
        std::fs::write(&path, b"\xff\xfe garbage").unwrap();
        assert!(load_identities(&path, || Err("not asked".into())).is_err());
        // An age file encrypted to a key is not an identity file.
        let sealed = age::encrypt(&id.to_public(), b"hello").unwrap();
        std::fs::write(&path, sealed).unwrap();
        let err = load_identities(&path, || Err("not asked".into()))
            .err()
            .expect("not an identity file");
        assert!(err.contains("not an identity file"), "{err}");
    }
}
