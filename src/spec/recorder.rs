//! Placeholder: the recorder and storage sections (filled in by the recorder work).
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{FieldIssue, Location};

pub const RECORDER_COMPONENT: &str = "recorder";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageSpec {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecorderSpec {}

impl RecorderSpec {
    pub fn validate(&self, _location: Option<&Location>, _storage: Option<&StorageSpec>) -> Vec<FieldIssue> {
        Vec::new()
    }
}
