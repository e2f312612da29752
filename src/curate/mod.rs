//! `roost curate`, the built-in component `curator`: runs `spec.detectors` on every new
//! recording once, in order, writing their findings into metadata.db (acoupi's `model_output`,
//! `detection` and `predicted_tag` tables), then decides with `spec.storage.keep` which
//! recordings are kept, and applies `maxAge` / `maxUsage`. Reports in `curator-report.json`.

pub mod age;
pub mod config;
/// The curator's queries: [`crate::storage::curation`], where every metadata.db query lives.
pub use crate::storage::curation as db;
pub mod judge;
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

/// What the curator would decide now among the recordings in metadata.db, changing nothing:
/// the same judgement ([`judge::judge`]) it applies, so that `roost plan` never lists as going
/// a recording the curator has kept for good or is still waiting to analyse.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Preview {
    /// Recordings whose file is there.
    pub recordings: usize,
    /// Those already decided and kept (for good).
    pub kept: usize,
    /// Those waiting for a detector before anything is decided.
    pub waiting: usize,
    /// Those the rules would delete (oldest first).
    pub would_delete: Vec<PathBuf>,
    /// Undecided recordings beyond the first [`PREVIEW_JUDGED`], not judged by the preview
    /// (the curator judges them in order; a year of recordings is not judged for one plan).
    pub not_judged: usize,
}

/// Undecided recordings the preview judges at most.
pub const PREVIEW_JUDGED: usize = 10_000;

/// Judges every recording present as the curator would, reading metadata.db only.
///
/// # Errors
/// metadata.db cannot be opened or read.
pub fn preview(config: &CurateConfig) -> rusqlite::Result<Preview> {
    let conn = crate::storage::read::open(&config.storage_path())?;
    let rules = keep::Rules::new(
        &config.storage.keep,
        &config.recorder,
        config.location.as_ref(),
    );
    // Detectors as the curator knows them; one it has not seen yet looks only at what comes.
    let seen = db::detectors_seen(&conn)?;
    let newest = crate::storage::read::newest_rowid(&conn)?;
    let detectors: Vec<(String, i64)> = (config.detectors.iter())
        .map(|d| {
            let name = d.name.to_string();
            let since = seen
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(newest, |s| s.1);
            (name, since)
        })
        .collect();
    let mut out = Preview {
        recordings: (db::tally(&conn).map(|(n, _)| n))
            .or_else(|_| crate::storage::read::count_present(&conn))? as usize,
        ..Preview::default()
    };
    // From the curator's cursor on: what it decided is kept for good and never read again.
    let mut after = db::decided_until(&conn)?;
    let mut judged = 0;
    while judged < PREVIEW_JUDGED {
        let batch = db::undecided(&conn, after, &[], 256)?;
        let Some(last) = batch.last() else { break };
        after = last.rowid;
        for rec in batch {
            judged += 1;
            match judge::judge(&conn, &rec, &rules, &detectors)? {
                judge::Verdict::Waiting => out.waiting += 1,
                judge::Verdict::Keep(_) => {}
                judge::Verdict::Delete => out.would_delete.push(rec.path),
            }
        }
    }
    // The rest is counted in one statement, not read.
    out.not_judged = db::undecided_after(&conn, after)? as usize;
    let undecided = judged + out.not_judged;
    out.kept = out.recordings.saturating_sub(undecided);
    Ok(out)
}
