//! The desired state's source: reads the file, skips content already seen, keeps a copy of the
//! last valid content in the state folder, and offers that copy when roost starts on a bad or
//! missing file. It never starts or stops anything and never counts generations (the loop
//! does, in the history); it only says what the file asks for now.

use std::path::PathBuf;

use crate::spec::{self, Deployment};
use crate::status::SpecError;

/// What a look at the file found.
#[derive(Debug)]
pub enum Loaded {
    /// The same valid content as last time, while a desired state is in force.
    Unchanged,
    /// A valid desired state; `hash` identifies its bytes (`plan::spec_hash`).
    Valid {
        /// The deployment the file describes.
        deployment: Box<Deployment>,
        /// Hash of the file's bytes.
        hash: String,
    },
    /// The file was refused (file, line, column or field and why).
    Refused(SpecError),
}

/// A check of a valid file against the rest of the device (`roost run --dir`: another
/// deployment has the recorder, a cycle of dependsOn): `Some((field, why))` refuses it.
pub type Veto = std::sync::Arc<dyn Fn(&std::path::Path, &Deployment) -> Option<(String, String)>>;

/// The desired-state file and the copy of its last valid content.
pub struct DesiredSource {
    file: PathBuf,
    last_good: PathBuf,
    /// Hash of the last valid content looked at, so that unchanged content is skipped.
    last_content_hash: Option<String>,
    veto: Option<Veto>,
}

impl std::fmt::Debug for DesiredSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredSource")
            .field("file", &self.file)
            .field("last_good", &self.last_good)
            .finish_non_exhaustive()
    }
}

impl DesiredSource {
    /// Reads `file`, keeping the last valid content at `last_good`.
    pub fn new(file: PathBuf, last_good: PathBuf) -> Self {
        Self {
            file,
            last_good,
            last_content_hash: None,
            veto: None,
        }
    }

    /// Refuses valid files that `veto` refuses (the device's other deployments).
    pub fn with_veto(mut self, veto: Veto) -> Self {
        self.veto = Some(veto);
        self
    }

    /// Reads another file from now on (the deployment's file was renamed in its folder).
    pub fn retarget(&mut self, file: PathBuf) {
        if file != self.file {
            self.file = file;
            self.last_content_hash = None;
        }
    }

    /// The file read.
    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// Looks at the file. `in_force` says whether a desired state already runs: only then is
    /// unchanged content [`Loaded::Unchanged`].
    pub fn read(&mut self, in_force: bool) -> Loaded {
        match spec::load_file(&self.file) {
            Ok((deployment, bytes)) => {
                if let Some((field, why)) =
                    self.veto.as_ref().and_then(|v| v(&self.file, &deployment))
                {
                    self.last_content_hash = None;
                    tracing::warn!(file = %self.file.display(), %why, "desired state refused by the device's other deployments");
                    return Loaded::Refused(SpecError {
                        code: crate::errors::INVALID_SPEC.code.to_string(),
                        message: format!("{}: {field}: {why}", self.file.display()),
                        file: self.file.display().to_string(),
                        line: None,
                        column: None,
                        field: Some(field),
                    });
                }
                let hash = crate::plan::spec_hash(&bytes);
                if in_force && self.last_content_hash.as_ref() == Some(&hash) {
                    return Loaded::Unchanged;
                }
                self.last_content_hash = Some(hash.clone());
                // A copy of the desired state holds every env: value: root's alone (0600).
                if let Err(e) = crate::fsutil::write_private(&self.last_good, &bytes) {
                    tracing::warn!(error = %e, "cannot keep a copy of the desired state");
                }
                Loaded::Valid {
                    deployment: Box::new(deployment),
                    hash,
                }
            }
            Err(e) => {
                self.last_content_hash = None;
                tracing::warn!(error = %e, "desired state rejected; the last valid one stays in force");
                Loaded::Refused(SpecError::from(&e))
            }
        }
    }

    /// Forgets what was seen, so that the next read takes the file as new (SIGHUP).
    pub fn forget(&mut self) {
        self.last_content_hash = None;
    }

    /// The last valid content roost kept, with its hash, if it can still be read.
    pub fn last_good(&self) -> Option<(Deployment, String)> {
        let (deployment, bytes) = spec::load_file(&self.last_good).ok()?;
        if let Some((_, why)) = self
            .veto
            .as_ref()
            .and_then(|v| v(&self.last_good, &deployment))
        {
            // The device's other deployments refuse it now (they took the recorder meanwhile):
            // nothing of it runs rather than two of one thing.
            tracing::warn!(%why, "the last valid desired state clashes with the device's other deployments");
            return None;
        }
        Some((deployment, crate::plan::spec_hash(&bytes)))
    }
}
