//! `roost curate`, the built-in component `curator`: runs `spec.detectors` on every new
//! recording once, in order, writing their findings into metadata.db (acoupi's `model_output`,
//! `detection` and `predicted_tag` tables), then decides with `spec.storage.keep` which
//! recordings are kept, and applies `maxAge` / `maxUsage`. Reports in `curator-report.json`.

pub mod config;
pub mod db;
pub mod keep;
pub mod report;
pub mod run;

pub use config::CurateConfig;
pub use run::run;

pub use crate::spec::curate::CURATOR_COMPONENT;

use std::path::PathBuf;

use crate::spec::Deployment;
use crate::spec::curate::KeepRule;

/// Warnings about keep rules that are valid but would delete every recording (DEP_E614):
/// only detection rules, and no detector that could satisfy them.
pub fn keep_warnings(d: &Deployment) -> Vec<String> {
    let Some(storage) = &d.spec.storage else {
        return Vec::new();
    };
    let keep = &storage.keep;
    if keep.is_empty() {
        return Vec::new();
    }
    let can_keep = |r: &KeepRule| match &r.detection {
        None => true,
        Some(rule) => match &rule.detector {
            Some(name) => d.spec.detectors.iter().any(|x| &x.name == name),
            None => !d.spec.detectors.is_empty(),
        },
    };
    if keep.iter().any(can_keep) {
        return Vec::new();
    }
    vec![format!(
        "{} spec.storage.keep: no rule can keep a recording (detection rules without a detector that could satisfy them): every recording would be deleted once analysed",
        crate::errors::KEEP_DELETES_EVERYTHING.code
    )]
}

/// What the keep rules would delete now among the recordings in metadata.db, changing nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Preview {
    /// Recordings whose file is there.
    pub recordings: usize,
    /// Those the rules would delete (oldest first).
    pub would_delete: Vec<PathBuf>,
}

/// Applies the keep rules of `config` to every recording present, reading metadata.db only.
///
/// # Errors
/// metadata.db cannot be opened or read.
pub fn preview(config: &CurateConfig) -> rusqlite::Result<Preview> {
    let db = config.storage_path().join(crate::storage::DB_FILE);
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let rules = keep::Rules::new(
        &config.storage.keep,
        &config.recorder,
        config.location.as_ref(),
    );
    let mut out = Preview::default();
    for rec in db::present(&conn)? {
        out.recordings += 1;
        let facts = keep::Facts {
            start: rec.start,
            duration_s: rec.duration_s,
            previous_end: db::previous_end(&conn, &rec)?,
            found: db::found_in(&conn, &rec.id).unwrap_or_default(),
        };
        if !run::protected(&rec) && rules.kept_by(&facts).is_none() {
            out.would_delete.push(rec.path);
        }
    }
    Ok(out)
}
