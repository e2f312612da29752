//! One judgement of a recording, used by the curator when it decides and by `roost plan` when
//! it previews: whether the keep rules may look at it yet, and if so whether it stays. Reads
//! metadata.db; never writes, never deletes.

use rusqlite::Connection;

use super::db::{self, Recording};
use super::keep::{Facts, Rules};

/// `kept_by` of a recording whose row's numbers cannot describe it (see
/// [`Recording::implausible`]): set aside, never computed with, never deleted by a rule.
pub const UNDESCRIBABLE: &str = "undescribable";
/// `kept_by` of a recording a detector gave up on: its findings are unknown.
pub const ANALYSIS_FAILED: &str = "analysisFailed";
/// `kept_by` of a protected recording.
pub const PROTECTED: &str = "protected";
/// `kept_by` of a recording whose file roost did not name (another program's, e.g. acoupi's
/// own recordings in a metadata.db both use): never deleted by roost's rules.
pub const NOT_ROOSTS: &str = "notRoosts";

/// What the rules make of a recording now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A detector that looks at it has not finished it: nothing is decided yet.
    Waiting,
    /// It stays, and why (`keep[i]:kind`, `protected`, `analysisFailed`, `notAnalysed`,
    /// `undescribable`, `none`).
    Keep(String),
    /// No rule keeps it: its file goes.
    Delete,
}

/// Judges `rec` with `rules`, `detectors` being the deployment's (name, since rowid).
///
/// # Errors
/// metadata.db cannot be read.
pub fn judge(
    conn: &Connection,
    rec: &Recording,
    rules: &Rules,
    detectors: &[(String, i64)],
) -> rusqlite::Result<Verdict> {
    // Another program's recording is never analysed (see `db::ROOSTS_FILE`): it must not
    // wait for roost's detectors, nor hold the recordings after it.
    if !roosts_file(rec) {
        return Ok(Verdict::Keep(NOT_ROOSTS.into()));
    }
    if !db::analysed_by_all(conn, rec, detectors)? {
        return Ok(Verdict::Waiting);
    }
    if marked_protected(rec) {
        return Ok(Verdict::Keep(PROTECTED.into()));
    }
    if rec.implausible().is_some() {
        return Ok(Verdict::Keep(UNDESCRIBABLE.into()));
    }
    if db::failed_any(conn, &rec.id)? {
        return Ok(Verdict::Keep(ANALYSIS_FAILED.into()));
    }
    let names: Vec<String> = detectors.iter().map(|(n, _)| n.clone()).collect();
    let facts = Facts {
        start: rec.start,
        duration_s: rec.duration_s,
        previous_end: db::previous_end(conn, rec)?,
        found: db::found_in(conn, &rec.id)?,
        judged_by: db::analysed_by(conn, &rec.id, &names)?,
        detectors: names,
    };
    Ok(rules.kept_by(&facts).map_or(Verdict::Delete, Verdict::Keep))
}

/// Whether a recording may never be deleted: its row says `protected`, a marker file
/// `<file>.keep` ([`crate::storage::keep_marker`]) sits beside it, or its file is not roost's.
pub fn protected(rec: &Recording) -> bool {
    marked_protected(rec) || !roosts_file(rec)
}

/// Whether the row says `protected` or a `.keep` marker sits beside the file.
fn marked_protected(rec: &Recording) -> bool {
    rec.protected || crate::storage::keep_marker(&rec.path).exists()
}

pub use super::db::roosts_file;
