//! The page's optional password: HTTP Basic (RFC 7617), any user name, the password compared in
//! constant time with the first line of `--password-file`, read at every request so a password
//! changed on the device counts at once. A missing or unreadable file refuses everyone (fail
//! closed). Wrong passwords are answered one at a time, a second apart, so guessing from the
//! hotspot is slow whatever the number of connections.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use subtle::ConstantTimeEq;

/// How long a wrong password waits before its answer (one at a time).
pub const WRONG_PASSWORD_DELAY: Duration = Duration::from_secs(1);

/// The realm the browser shows.
pub const CHALLENGE: &str = "Basic realm=\"roost field page\", charset=\"UTF-8\"";

/// What a request's credentials amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Right password (or no password asked).
    Allowed,
    /// No credentials: ask for them (401 without delay).
    Ask,
    /// Wrong credentials (401 after [`WRONG_PASSWORD_DELAY`]).
    Wrong,
    /// The password file cannot be read: nobody gets in (503).
    Unavailable(String),
}

/// The password in `file`: its first line without the line end. Errors: unreadable, or empty.
pub fn read_password(file: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(format!("{}: the first line is empty", file.display()));
    }
    Ok(line.to_vec())
}

/// Judges an `Authorization` header value against the password in `file` (`None`: no
/// password asked).
pub fn judge(file: Option<&Path>, authorization: Option<&[u8]>) -> Verdict {
    let Some(file) = file else {
        return Verdict::Allowed;
    };
    let password = match read_password(file) {
        Ok(p) => p,
        Err(why) => return Verdict::Unavailable(why),
    };
    let Some(header) = authorization else {
        return Verdict::Ask;
    };
    match given_password(header) {
        Some(given) if same(&given, &password) => Verdict::Allowed,
        _ => Verdict::Wrong,
    }
}

/// Longest password compared (longer ones never match); both sides are padded to it so the
/// time taken says nothing about the password's length either.
const MAX_PASSWORD_BYTES: usize = 1024;

/// `given == password` in time independent of where they differ and of their lengths.
fn same(given: &[u8], password: &[u8]) -> bool {
    let pad = |b: &[u8]| {
        let mut out = [0u8; MAX_PASSWORD_BYTES];
        let n = b.len().min(MAX_PASSWORD_BYTES);
        out[..n].copy_from_slice(&b[..n]);
        out
    };
    let lengths = (given.len() as u64).ct_eq(&(password.len() as u64));
    let fits = u8::from(given.len() <= MAX_PASSWORD_BYTES).ct_eq(&1);
    bool::from(pad(given).ct_eq(&pad(password)) & lengths & fits)
}

/// The password of a `Basic base64(user:password)` header value.
fn given_password(header: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_password: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        )
        .into_bytes()
    }

    #[test]
    fn the_password_file_decides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "c0rrect horse\nignored second line\n").unwrap();
        let f = Some(file.as_path());
        assert_eq!(judge(None, None), Verdict::Allowed);
        assert_eq!(judge(f, None), Verdict::Ask);
        assert_eq!(
            judge(f, Some(&basic("any:c0rrect horse"))),
            Verdict::Allowed
        );
        assert_eq!(judge(f, Some(&basic(":c0rrect horse"))), Verdict::Allowed);
        let long = format!("any:c0rrect horse{}", "x".repeat(2000));
        for wrong in [
            "any:c0rrect",
            "any:c0rrect horse ",
            "c0rrect horse",
            "any:",
            &long,
        ] {
            assert_eq!(judge(f, Some(&basic(wrong))), Verdict::Wrong, "{wrong}");
        }
        for odd in [&b"Bearer abc"[..], b"Basic", b"Basic !!!", b"\xff\xfe", b""] {
            assert_eq!(judge(f, Some(odd)), Verdict::Wrong);
        }
        std::fs::write(&file, "crlf\r\n").unwrap();
        assert_eq!(judge(f, Some(&basic("u:crlf"))), Verdict::Allowed);
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            judge(f, Some(&basic("u:"))),
            Verdict::Unavailable(_)
        ));
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(
            judge(f, Some(&basic("u:crlf"))),
            Verdict::Unavailable(_)
        ));
    }
}
