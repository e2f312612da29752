//! Which recordings the page may read: names relative to the storage's `recordings/` folder,
//! parsed into [`RecordingName`] before any file is touched, and resolved only when the real
//! path stays inside that folder (no `..`, no absolute path, no symbolic link out). Also the
//! newest recordings from metadata.db, opened read-only. Nothing here writes.

use std::path::{Component, Path, PathBuf};

/// A recording's path relative to `recordings/`, e.g. `2026/11/30/20261130T010000Z.wav`: plain
/// components only, ending in `.wav`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingName(String);

/// Why a requested recording name is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, absolute, with `..`, `.`, a backslash or a control character.
    #[error("not a recording name: {0:?}")]
    NotPlain(String),
    /// Not a `.wav` file.
    #[error("not a WAV recording: {0:?}")]
    NotWav(String),
}

impl TryFrom<&str> for RecordingName {
    type Error = NameError;

    fn try_from(text: &str) -> Result<Self, NameError> {
        let plain = !text.is_empty()
            && !text.contains('\\')
            && !text.chars().any(char::is_control)
            && Path::new(text)
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
            && text
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !plain {
            return Err(NameError::NotPlain(text.to_string()));
        }
        if !text.ends_with(".wav") {
            return Err(NameError::NotWav(text.to_string()));
        }
        Ok(Self(text.to_string()))
    }
}

impl RecordingName {
    /// The name as written in links.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file's real path when it exists and lies inside `recordings_dir` once symbolic
    /// links are resolved; `None` otherwise (the page answers 404 either way).
    pub fn resolve(&self, recordings_dir: &Path) -> Option<PathBuf> {
        let root = recordings_dir.canonicalize().ok()?;
        let file = root.join(&self.0).canonicalize().ok()?;
        (file.starts_with(&root) && file.is_file()).then_some(file)
    }

    /// Whether metadata.db of the storage at `storage` lists this recording (roost stores the
    /// absolute path, `<storage>/recordings/<name>`; a path relative to the storage is accepted
    /// too). A file under recordings/ that is not registered is not served: only what roost
    /// recorded and registered reaches the page. Opened read-only; `false` without metadata.db.
    pub fn listed(&self, storage: &Path) -> bool {
        let recordings_dir = storage.join(crate::storage::RECORDINGS_DIR);
        let absolute = recordings_dir.join(&self.0);
        let relative = Path::new(crate::storage::RECORDINGS_DIR).join(&self.0);
        let (Some(absolute), Some(relative)) = (absolute.to_str(), relative.to_str()) else {
            return false;
        };
        crate::storage::read::has_path(storage, [absolute, relative])
    }

    /// The name of `path` relative to `recordings_dir`, if it lies there.
    pub fn of(path: &Path, recordings_dir: &Path) -> Option<Self> {
        let rel = path.strip_prefix(recordings_dir).ok()?;
        Self::try_from(rel.to_str()?).ok()
    }
}

/// A registered recording, newest first in [`recent`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Recording {
    /// Its name under `recordings/` (what `/spectrogram.png?file=` takes).
    pub name: String,
    /// When its first sample was captured (metadata.db's `datetime`, UTC).
    pub datetime: String,
}

/// The newest `limit` recordings of the storage at `storage` (empty without metadata.db).
pub fn recent(storage: &Path, limit: usize) -> Vec<Recording> {
    let recordings_dir = storage.join(crate::storage::RECORDINGS_DIR);
    let rows = crate::storage::read::newest(storage, limit);
    rows.into_iter()
        .filter_map(|(path, datetime)| {
            let name = RecordingName::of(Path::new(&path), &recordings_dir)?;
            Some(Recording {
                name: name.0,
                datetime,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_wav_names_are_accepted() {
        for good in ["a.wav", "2026/11/30/20261130T010000Z.wav"] {
            assert_eq!(RecordingName::try_from(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "../../etc/passwd.wav",
            "2026/../../x.wav",
            "/etc/x.wav",
            "./a.wav",
            "a//b.wav",
            "a\\..\\b.wav",
            "a\n.wav",
        ] {
            assert!(
                matches!(RecordingName::try_from(bad), Err(NameError::NotPlain(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            RecordingName::try_from("etc/passwd"),
            Err(NameError::NotWav("etc/passwd".into()))
        );
    }

    #[test]
    fn symbolic_links_out_of_recordings_are_not_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let recordings = dir.path().join("recordings");
        std::fs::create_dir_all(recordings.join("2026")).unwrap();
        std::fs::write(recordings.join("2026/in.wav"), b"x").unwrap();
        std::fs::write(dir.path().join("secret.wav"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.wav"), recordings.join("out.wav"))
            .unwrap();
        std::os::unix::fs::symlink(dir.path(), recordings.join("up")).unwrap();
        let resolve = |n: &str| RecordingName::try_from(n).unwrap().resolve(&recordings);
        assert!(resolve("2026/in.wav").is_some());
        assert_eq!(resolve("out.wav"), None);
        assert_eq!(resolve("up/secret.wav"), None);
        assert_eq!(resolve("missing.wav"), None);
    }
}
