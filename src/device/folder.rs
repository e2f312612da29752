//! The deployment files of a folder (`roost run --dir`): `*.yaml` and `*.yml`, not hidden, not
//! an editor's backup; each read again only when its (device, inode, size, mtime) changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::spec::{self, Deployment};
use crate::status::SpecError;

/// What one file of the folder holds.
#[derive(Clone, Debug)]
pub enum FileContent {
    /// A valid deployment.
    Valid(Box<Deployment>),
    /// A file roost refuses (it names no deployment roost can tell).
    Refused(SpecError),
}

/// What identifies one read of a file: device, inode, size, mtime (s, ns).
type Identity = (u64, u64, u64, i64, i64);

/// The folder's files as last read, with what identified each read.
#[derive(Debug, Default)]
pub struct Folder {
    seen: BTreeMap<PathBuf, (Identity, FileContent)>,
}

/// Whether `name` is a deployment file: `*.yaml` or `*.yml`, not hidden (`.x.yaml`, the
/// temp files of atomic writers), not a backup (`x.yaml~`, `.bak`).
pub fn is_deployment_file(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

fn identity(path: &Path) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    m.is_file()
        .then(|| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

impl Folder {
    /// Reads the folder: every deployment file, in name order, with what it holds. Returns
    /// the files whose content may have changed since the last scan too.
    pub fn scan(&mut self, dir: &Path) -> (Vec<(PathBuf, FileContent)>, Vec<PathBuf>) {
        let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .flatten()
                .filter(|e| is_deployment_file(&e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect(),
            // A folder that cannot be read (its card gone, EIO, permissions) is not a folder
            // emptied: nothing is removed for it; what was read last stands.
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the deployments' folder; keeping what was read last");
                return (self.current(), Vec::new());
            }
        };
        names.sort();
        let mut changed = Vec::new();
        let mut next = BTreeMap::new();
        for path in names {
            let Some(id) = identity(&path) else { continue };
            let content = match self.seen.remove(&path) {
                Some((old, content)) if old == id => content,
                _ => {
                    changed.push(path.clone());
                    match spec::load_file(&path) {
                        Ok((d, _)) => FileContent::Valid(Box::new(d)),
                        Err(e) => FileContent::Refused(SpecError::from(&e)),
                    }
                }
            };
            next.insert(path, (id, content));
        }
        changed.extend(self.seen.keys().cloned());
        self.seen = next;
        (self.current(), changed)
    }

    fn current(&self) -> Vec<(PathBuf, FileContent)> {
        (self.seen.iter())
            .map(|(p, (_, c))| (p.clone(), c.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_that_cannot_be_read_keeps_what_was_read_last() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(
            &file,
            "apiVersion: roost/v1\nkind: Deployment\nmetadata: {name: a}\nspec: {}\n",
        )
        .unwrap();
        let mut folder = Folder::default();
        let (files, changed) = folder.scan(dir.path());
        assert_eq!((files.len(), changed), (1, vec![file.clone()]));
        // Unchanged: nothing read again.
        assert_eq!(folder.scan(dir.path()).1, Vec::<PathBuf>::new());
        // The folder vanishes (a card unmounted): the last scan stands, nothing "changed".
        let moved = dir.path().with_extension("away");
        std::fs::rename(dir.path(), &moved).unwrap();
        let (files, changed) = folder.scan(dir.path());
        assert_eq!((files.len(), changed.len()), (1, 0));
        std::fs::rename(&moved, dir.path()).unwrap();
    }

    #[test]
    fn only_visible_yaml_files_are_deployments() {
        for yes in ["a.yaml", "recorder-site.yml", "x.y.yaml"] {
            assert!(is_deployment_file(yes), "{yes}");
        }
        for no in [
            ".a.yaml",
            "a.yaml~",
            "a.yaml.bak",
            "a.json",
            ".a.yaml.tmp",
            "README",
        ] {
            assert!(!is_deployment_file(no), "{no}");
        }
    }
}
