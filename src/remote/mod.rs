//! Desired state over the broker (spec.connect.desired, docs/FLEET.md): signed deployment files
//! a fleet's owners publish retained on each device's topic, applied like a local edit, kept
//! only through a health gate.
//!
//! - [`signed`]: the message and its minisign signature (pure).
//! - [`gate`]: is the device worse than before the version (pure, elapsed time passed in).
//! - [`ledger`]: what survives a restart (the highest version, the open gate, the files
//!   before the version) and the writing of the deployment file or folder.
//! - [`device`]: the task of `roost run` that ties them to the broker and the status.

pub mod device;
pub mod gate;
pub mod ledger;
pub mod signed;

/// `<prefix>/<device>/desired`: where a device's signed desired state is published, retained.
pub fn desired_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/{device}/desired")
}

/// `<prefix>/<device>/desired/report`: where a device says, retained, which version it took.
pub fn report_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/{device}/desired/report")
}
