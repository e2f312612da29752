//! `recorder-config.json`: what `roost record` is given, written by roost before it starts
//! the recorder; and why the recorder process cannot run.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::component::{ConfigError, ConfigFile};
use crate::errors::{self, ErrorCode};
use crate::spec::recorder::{RecorderSpec, StorageSpec};
use crate::spec::{Deployment, Location};

/// File name of the recorder's configuration in the state folder.
pub const CONFIG_FILE: &str = "recorder-config.json";

/// What `roost record` is given: everything it needs, with the storage path resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordConfig {
    /// The deployment's name.
    pub deployment: String,
    /// Where the device records (GUANO and metadata.db).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// With `path` set.
    pub storage: StorageSpec,
    /// The recorder's spec as written in the file.
    pub recorder: RecorderSpec,
    /// `spec.power` (where the board's power is read, its limits and the energy policy);
    /// absent: `/sys` with the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<crate::spec::power::PowerSpec>,
    /// Frames per capture period; default [`super::default_period_frames`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_frames: Option<u32>,
}

impl ConfigFile for RecordConfig {
    const FILE: &'static str = CONFIG_FILE;
}

impl RecordConfig {
    /// The recorder configuration of a deployment, `None` when it has no recorder.
    pub fn from_deployment(deployment: &Deployment, state_dir: &Path) -> Option<Self> {
        let recorder = deployment.spec.recorder.clone()?;
        let mut storage = deployment
            .spec
            .storage
            .clone()
            .unwrap_or_default()
            .resolved(state_dir);
        // The curator's rules, not the recorder's: a changed keep rule or retention limit must
        // not restart the recorder (its configuration's hash is its spec), which would cut the
        // file being written.
        storage.keep.clear();
        (storage.max_age, storage.max_usage) = (None, None);
        Some(Self {
            deployment: deployment.name().to_string(),
            location: deployment.spec.location,
            storage,
            recorder,
            power: deployment.spec.power.clone(),
            period_frames: None,
        })
    }

    /// The storage folder, relative paths resolved against `state_dir`.
    pub fn storage_path(&self, state_dir: &Path) -> PathBuf {
        self.storage.resolved_path(state_dir)
    }
}

/// Why the recorder process cannot run (device and storage faults are reported, not returned).
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// The configuration cannot be taken.
    #[error("the recorder cannot start")]
    Config(#[from] ConfigError),
    /// SIGTERM and SIGINT cannot be taken over.
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
    /// The report cannot be written.
    #[error("cannot write the recorder report {path}")]
    Report {
        /// The report's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl RecorderError {
    /// The catalogue code for the report.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Config(_) | Self::Signals(_) | Self::Report { .. } => errors::INTERNAL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The curator's rules (keep, maxAge, maxUsage) are not the recorder's: changing them
    /// leaves the recorder's configuration, and so its spec hash, as it was.
    #[test]
    fn keep_rules_and_retention_are_not_in_the_recorder_configuration() {
        let yaml = |storage: &str| {
            format!(
                "apiVersion: roost/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec:\n  storage: {{path: /srv/rec{storage}}}\n  recorder: {{device: default}}\n  components: []\n"
            )
        };
        let config = |storage: &str| {
            let d = crate::spec::parse_str(Path::new("d.yaml"), &yaml(storage)).unwrap();
            RecordConfig::from_deployment(&d, Path::new("/var/lib/roost")).unwrap()
        };
        let plain = config("");
        let curated = config(", keep: [{every: 10m}], maxAge: 30d, maxUsage: 80%");
        assert_eq!(plain, curated);
        assert_ne!(
            plain,
            config(", minFreeSpace: 2GiB"),
            "the recorder's own fields count"
        );
    }
}
