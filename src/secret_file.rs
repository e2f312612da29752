//! Files that hold secrets (a broker password, HTTP headers with tokens, the page's password,
//! private keys), judged by who may read them, as OpenSSH and Mosquitto judge theirs: readable by
//! every user is a warning (DEP_E509), and a refusal for a private key; not readable by the user
//! the built-ins run as is an error the component would meet (DEP_E507).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::errors;
use crate::sandbox::Identity;

/// What a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A password or tokens: exposure is warned about.
    Secret,
    /// A private key: one readable by anyone but its owner is refused.
    PrivateKey,
}

/// The secret a password file holds: its first line, without the line end (what Mosquitto's
/// and roost's password files hold; an empty file is an empty password).
pub fn first_line(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// The DEP_E509 message (without the code) when every user may read `path` (`field` names it:
/// `passwordFile`); `None` when it cannot be looked at (another check says so) or is not
/// exposed.
pub fn exposed(field: &str, path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.mode();
    (mode & 0o004 != 0).then(|| {
        let p = path.display();
        format!(
            "{field} {p} is readable by every user of this device (mode {:04o}): `chown root:roost {p} && chmod 0640 {p}`",
            mode & 0o7777,
        )
    })
}

/// Whether a private key may be used: refused (with why) when its group or others may read it.
///
/// # Errors
/// The refusal, naming the file, its mode and what to do.
pub fn usable_key(path: &Path) -> Result<(), String> {
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} private key {} is readable by others (mode {:04o}); refused: `chmod 0600 {}`",
            errors::SECRET_EXPOSED.code,
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    Ok(())
}

/// Whether `who` may read `path`, judged from its owner, group and mode (root may read
/// anything). `None` when the file cannot be looked at.
pub fn readable_by(path: &Path, who: &Identity) -> Option<bool> {
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode();
    Some(if who.uid == 0 {
        true
    } else if meta.uid() == who.uid {
        mode & 0o400 != 0
    } else if meta.gid() == who.gid || who.groups.iter().any(|g| g.as_raw() == meta.gid()) {
        mode & 0o040 != 0
    } else {
        mode & 0o004 != 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn exposure_and_keys_follow_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "x").unwrap();
        let set = |m| std::fs::set_permissions(&f, std::fs::Permissions::from_mode(m)).unwrap();
        set(0o644);
        let w = exposed("passwordFile", &f).unwrap();
        assert!(w.starts_with("passwordFile "), "{w}");
        assert!(w.contains("mode 0644") && w.contains("chmod 0640"), "{w}");
        assert!(usable_key(&f).is_err());
        set(0o640);
        assert_eq!(exposed("passwordFile", &f), None);
        assert!(usable_key(&f).unwrap_err().contains("mode 0640"));
        set(0o600);
        assert!(usable_key(&f).is_ok());
        assert_eq!(exposed("x", &dir.path().join("missing")), None);
    }

    #[test]
    fn readability_is_judged_by_owner_group_and_others() {
        use nix::unistd::Gid;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "x").unwrap();
        let meta = std::fs::metadata(&f).unwrap();
        let (uid, gid) = (meta.uid(), meta.gid());
        let set = |m| std::fs::set_permissions(&f, std::fs::Permissions::from_mode(m)).unwrap();
        let owner = Identity {
            uid,
            gid: 4000,
            groups: vec![],
        };
        let member = Identity {
            uid: 4001,
            gid: 4000,
            groups: vec![Gid::from_raw(gid)],
        };
        let stranger = Identity {
            uid: 4002,
            gid: 4002,
            groups: vec![],
        };
        set(0o600);
        let can = |who: &Identity| readable_by(&f, who).unwrap();
        assert!(can(&owner) || uid == 0);
        assert!(!can(&member) && !can(&stranger));
        set(0o640);
        assert!(can(&member) && !can(&stranger));
        set(0o604);
        assert!(can(&stranger) && !can(&member));
    }
}
