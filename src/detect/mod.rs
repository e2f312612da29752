//! Detectors: what looks at each new recording and what it found.

pub mod band_energy;
pub mod command;
/// What a detector hands over (acoupi's model-output shape, as metadata.db stores it):
/// [`crate::storage::findings`].
pub use crate::storage::findings;
