//! `roost curate`, the built-in component `curator`: runs `spec.detectors` on every new
//! recording once, in order, writing their findings into metadata.db (acoupi's `model_output`,
//! `detection` and `predicted_tag` tables), then decides with `spec.storage.keep` which
//! recordings are kept, and applies `maxAge` / `maxUsage`. Reports in `curator-report.json`.

/// The component name of the curator.
pub const CURATOR_COMPONENT: &str = "curator";
