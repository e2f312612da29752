//! `curator-config.json`: what `roost run` hands the curator (the deployment's detectors,
//! storage with its keep rules and limits, the recorder's time zone and the location).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::curate::DetectorSpec;
use crate::spec::recorder::{RecorderSpec, StorageSpec};
use crate::spec::{Deployment, Location};

/// The file's name in the state folder.
pub const CONFIG_FILE: &str = "curator-config.json";

/// The curator's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CurateConfig {
    /// The deployment's name.
    pub deployment: String,
    /// `spec.detectors`, in order.
    #[serde(default)]
    pub detectors: Vec<DetectorSpec>,
    /// The storage, `path` resolved, with `keep`, `maxAge`, `maxUsage`.
    pub storage: StorageSpec,
    /// The recorder (its time zone and windows syntax for the keep rules).
    pub recorder: RecorderSpec,
    /// Where the device stands (sunrise and sunset rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// The deployment sends messages (`spec.connect`): retention waits for the messages about a
    /// recording to leave (the connector says which: [`crate::connect::owed_messages`]).
    #[serde(default)]
    pub sends_messages: bool,
    /// `spec.power`: the energy policy pauses the detectors while power is short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<crate::spec::power::PowerSpec>,
}

impl crate::component::ConfigFile for CurateConfig {
    const FILE: &'static str = CONFIG_FILE;
}

impl CurateConfig {
    /// The curator's configuration of a deployment; `None` when nothing is to curate.
    pub fn from_deployment(d: &Deployment, state_dir: &Path) -> Option<Self> {
        if !d.spec.curates() || d.spec.state != crate::spec::RunState::Running {
            return None;
        }
        Some(Self {
            deployment: d.name().to_string(),
            detectors: d.spec.detectors.clone(),
            storage: d
                .spec
                .storage
                .clone()
                .unwrap_or_default()
                .resolved(state_dir),
            recorder: d.spec.recorder.clone()?,
            location: d.spec.location,
            sends_messages: d.spec.connect.is_some(),
            power: d.spec.power.clone(),
        })
    }

    /// The storage folder.
    pub fn storage_path(&self) -> PathBuf {
        self.storage
            .path
            .as_ref()
            .map(|p| p.as_path().to_path_buf())
            .unwrap_or_default()
    }
}
