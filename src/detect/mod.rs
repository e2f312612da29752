//! Detectors: what looks at each new recording and what it found.

pub mod band_energy;
pub mod command;
pub mod findings;
