//! What the device remembers of remote versions across restarts (`<state>/remote/ledger.json`,
//! 0600): the highest version accepted (replays are refused against it), the version in force,
//! the open health gate with its baseline, the last revert and refusal. The files before the
//! version in force are kept in `<state>/remote/previous/` for a revert. Also the reading and
//! writing of the deployment file or folder a version replaces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::gate::Health;
use crate::status::{RemoteRefused, RemoteReverted};

/// Deployment files by name, with their text.
pub type Files = BTreeMap<String, String>;

/// The persisted state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    /// The highest version accepted (applied, waiting, reverted or asked to revert).
    pub highest: u64,
    /// The newest version accepted.
    pub desired: Option<u64>,
    /// The version whose files were written last (absent: none, or reverted to local files).
    pub applied: Option<u64>,
    /// Hash of the files as the last remote write left them ([`hash`]); a different hash now
    /// means a local edit since.
    pub written_hash: Option<u64>,
    /// The version of the files kept in `previous/` (absent: local files).
    pub previous: Option<u64>,
    /// The open health gate.
    pub gate: Option<GateRecord>,
    /// The last revert.
    pub reverted: Option<RemoteReverted>,
    /// The last refusal.
    pub refused: Option<RemoteRefused>,
    /// The rollout of the newest version.
    pub rollout: Option<String>,
    /// Whether the newest message was refused (cleared by the next one accepted).
    pub refused_last: bool,
    /// A version whose files are being written, and their hash: set just before the write,
    /// cleared after it (a crash in between is settled at the next start).
    #[serde(default)]
    pub applying: Option<(u64, u64)>,
    /// A revert whose files are being written, and their hash: set just before the write,
    /// cleared after it, so a crash in between is finished (or the gate judges again) at the
    /// next start instead of being taken for a local edit.
    #[serde(default)]
    pub reverting: Option<(u64, RemoteReverted)>,
}

/// An open health gate, as it survives a restart of roost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateRecord {
    /// The version under watch.
    pub version: u64,
    /// /proc/sys/kernel/random/boot_id when the gate opened: another boot restarts it whole.
    pub boot_id: String,
    /// CLOCK_BOOTTIME (ms) when it opened.
    pub opened_ms: u64,
    /// Its length (ms).
    pub length_ms: u64,
    /// The health before the version.
    pub baseline: Health,
    /// The link's settings before the version (see `device::fingerprint`).
    #[serde(default)]
    pub link_before: Option<u64>,
}

/// The ledger's folder.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("remote")
}

impl Ledger {
    /// Reads the ledger; a missing or unreadable one is a new ledger (logged: a device that
    /// forgot its highest version accepts a replay of an older one only until a newer one).
    pub fn load(state_dir: &Path) -> Self {
        let path = dir(state_dir).join("ledger.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "remote ledger unreadable; starting a new one");
                Self::default()
            }),
            Err(_) => Self::default(),
        }
    }

    /// Writes the ledger whole (temp file, fsync, rename), readable by roost only.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        private_dir(&dir(state_dir))?;
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::fsutil::write_private(&dir(state_dir).join("ledger.json"), &bytes)
    }
}

fn private_dir(d: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// FNV-1a over each name and text: stable across roost versions (unlike `DefaultHasher`).
pub fn hash(files: &Files) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, text) in files {
        for b in name.bytes().chain([0]).chain(text.bytes()).chain([0]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Where the deployment comes from: one file (`--file`) or a folder (`--dir`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `roost run --file`.
    File(PathBuf),
    /// `roost run --dir`.
    Dir(PathBuf),
}

impl Target {
    /// The deployment files in force now, by name (a `--file` file under its own name).
    pub fn read(&self) -> Files {
        match self {
            Target::File(f) => under_own_name(f, std::fs::read_to_string(f).ok()),
            Target::Dir(d) => deployment_names(d)
                .into_iter()
                .filter_map(|n| Some((n.clone(), std::fs::read_to_string(d.join(&n)).ok()?)))
                .collect(),
        }
    }

    /// `files` as [`Target::read`] would read them once written (a `--file` file under its
    /// own name, whatever the message called it).
    pub fn as_written(&self, files: &Files) -> Files {
        match self {
            Target::File(f) => under_own_name(f, files.values().next().cloned()),
            Target::Dir(_) => files.clone(),
        }
    }

    /// Puts `files` in force, each written whole (temp file, fsync, rename) with the mode the
    /// file it replaces had (0640 for a new one); with a folder, its deployment files that
    /// `files` does not name are removed after the others are written.
    pub fn write(&self, files: &Files) -> std::io::Result<()> {
        match self {
            Target::File(f) => match files.values().next() {
                Some(text) => write_keeping_mode(f, text),
                None => Ok(()),
            },
            Target::Dir(d) => {
                if let Some(bad) = files.keys().find(|n| !writable_name(n)) {
                    let why = format!("{bad:?} is not a deployment file name");
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
                }
                for (name, text) in files {
                    write_keeping_mode(&d.join(name), text)?;
                }
                for gone in deployment_names(d)
                    .iter()
                    .filter(|n| !files.contains_key(*n))
                {
                    std::fs::remove_file(d.join(gone))?;
                }
                Ok(())
            }
        }
    }
}

/// Whether a name a message gives may be written as a deployment file: a deployment file name
/// (`*.yaml`/`*.yml`, not hidden) of one path component, so nothing lands outside the folder.
pub fn writable_name(name: &str) -> bool {
    crate::device::folder::is_deployment_file(name)
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255
}

/// A `--file` file's set: `text` under the file's own name (empty without text).
fn under_own_name(f: &Path, text: Option<String>) -> Files {
    let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
    name.zip(text).into_iter().collect()
}

fn deployment_names(d: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(d) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| crate::device::folder::is_deployment_file(n))
        .collect();
    names.sort();
    names
}

fn write_keeping_mode(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_or(0o640, |m| m.permissions().mode() & 0o7777);
    crate::fsutil::write_private(path, text.as_bytes())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Keeps `files` as the files before the version about to be applied (`previous/`, replaced
/// whole: written beside it, then swapped).
pub fn save_previous(state_dir: &Path, files: &Files) -> std::io::Result<()> {
    let base = dir(state_dir);
    private_dir(&base)?;
    let next = base.join("previous.new");
    let _ = std::fs::remove_dir_all(&next);
    let written = private_dir(&next).and_then(|()| {
        (files.iter()).try_for_each(|(name, text)| {
            crate::fsutil::write_private(&next.join(name), text.as_bytes())
        })
    });
    if let Err(e) = written {
        // A full card: leave no half set behind.
        let _ = std::fs::remove_dir_all(&next);
        return Err(e);
    }
    let old = base.join("previous.old");
    let _ = std::fs::remove_dir_all(&old);
    let current = base.join("previous");
    if current.exists() {
        std::fs::rename(&current, &old)?;
    }
    std::fs::rename(&next, &current)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The files kept by [`save_previous`]; `None` when there are none (never saved).
pub fn load_previous(state_dir: &Path) -> Option<Files> {
    let base = dir(state_dir);
    // A swap cut by a power cut leaves `previous.old` alone: it is the last whole set.
    let d = [base.join("previous"), base.join("previous.old")]
        .into_iter()
        .find(|d| d.is_dir())?;
    let mut files = Files::new();
    for e in std::fs::read_dir(&d).ok()? {
        let e = e.ok()?;
        let name = e.file_name().into_string().ok()?;
        files.insert(name, std::fs::read_to_string(e.path()).ok()?);
    }
    Some(files)
}

/// CLOCK_BOOTTIME in ms: monotonic, counts suspend, never stepped by NTP.
pub fn boot_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| (t.tv_sec() as u64) * 1000 + (t.tv_nsec() as u64) / 1_000_000)
        .unwrap_or(0)
}

/// This boot's id (/proc/sys/kernel/random/boot_id).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_through_a_folder_and_the_previous_set() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("deployments");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("old.yaml"), "a").unwrap();
        std::fs::write(d.join("notes.txt"), "kept").unwrap();
        let target = Target::Dir(d.clone());
        let before = target.read();
        assert_eq!(before, Files::from([("old.yaml".into(), "a".into())]));
        let new = Files::from([("new.yaml".into(), "b".into())]);
        save_previous(tmp.path(), &before).unwrap();
        target.write(&new).unwrap();
        assert_eq!(target.read(), new);
        assert!(
            d.join("notes.txt").exists(),
            "only deployment files are the folder's state"
        );
        assert_eq!(load_previous(tmp.path()).unwrap(), before);
        target.write(&load_previous(tmp.path()).unwrap()).unwrap();
        assert_eq!(target.read(), before);
        assert_ne!(hash(&before), hash(&new));
    }

    #[test]
    fn only_plain_deployment_file_names_are_written() {
        for ok in ["site.yaml", "a.yml", "x-1_2.yaml"] {
            assert!(writable_name(ok), "{ok}");
        }
        for bad in [
            "../etc/cron.d/x.yaml",
            "a/b.yaml",
            "/etc/x.yaml",
            ".hidden.yaml",
            "x.txt",
            "a\\b.yaml",
            "a\0.yaml",
            "",
        ] {
            assert!(!writable_name(bad), "{bad:?}");
        }
        assert!(!writable_name(&format!("{}.yaml", "a".repeat(300))));
    }

    #[test]
    fn a_file_keeps_its_mode_and_the_ledger_its_versions() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("deployment.yaml");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        Target::File(f.clone())
            .write(&Files::from([("any.yaml".into(), "y".into())]))
            .unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "y");
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let ledger = Ledger {
            highest: 7,
            applied: Some(7),
            ..Ledger::default()
        };
        ledger.save(tmp.path()).unwrap();
        assert_eq!(Ledger::load(tmp.path()), ledger);
        let m = std::fs::metadata(dir(tmp.path()).join("ledger.json")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        std::fs::write(dir(tmp.path()).join("ledger.json"), "{").unwrap();
        assert_eq!(Ledger::load(tmp.path()), Ledger::default());
    }
}
