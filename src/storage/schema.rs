//! metadata.db's layout (version 7): acoupi 0.8.0's tables as acoupi's own store makes them
//! (`deployment`, `recording`, `model_output`, `detection`, `predicted_tag`; ids as 16-byte
//! UUID blobs, times as acoupi's text, see [`super::db_datetime`]), three columns of roost's
//! on `recording` (`protected`, `deleted_on`, `deleted_by`: acoupi names its columns, so
//! they never disturb it), and roost's own tables (`roost_*`) with roost's version marker
//! (`roost_schema`), which acoupi never touches. `PRAGMA user_version` is acoupi's (it sets 1
//! whenever its store opens a database): roost writes 1 too and never reads it.
//!
//! A database is brought to version 7 in one transaction per step: an empty file or one that
//! acoupi made is given roost's columns and tables ([`adopt`]); one of an older roost (text
//! ids, roost's time text, a JSON `location`) goes through its old steps ([`LEGACY`]) and is
//! then converted ([`to_acoupi_layout`]) keeping every id (the same UUIDs as blobs: ids already
//! sent in messages still name the same rows), rowid, deletion, keep decision and analysis.

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

/// The layout this roost writes and reads (`roost_schema.version`).
pub const VERSION: usize = 7;

/// What `PRAGMA user_version` says in a database of this layout: acoupi's schema version.
const ACOUPI_USER_VERSION: i64 = 1;

/// Namespace of the ids made from what was not a UUID (see [`id_blob`]).
const ROOST_NAMESPACE: uuid::Uuid = uuid::uuid!("5b0c6f0e-2d3a-4c51-9f1e-7a8b6c4d2e10");

/// The steps of the layouts of roost before acoupi's (1 to 6), for a database an older roost
/// left; [`to_acoupi_layout`] takes it from 6 to 7.
const LEGACY: &[&str] = &[
    // 1: acoupi's tables and columns, so that queries written for acoupi's database work here.
    "CREATE TABLE deployment (
        id TEXT PRIMARY KEY NOT NULL,
        name TEXT NOT NULL,
        started_on TEXT NOT NULL,
        ended_on TEXT,
        latitude REAL,
        longitude REAL
    );
    CREATE TABLE recording (
        id TEXT PRIMARY KEY NOT NULL,
        path TEXT NOT NULL UNIQUE,
        datetime TEXT NOT NULL,
        duration_s REAL NOT NULL,
        samplerate_hz INTEGER NOT NULL,
        audio_channels INTEGER NOT NULL,
        deployment_id TEXT REFERENCES deployment(id)
    );
    CREATE INDEX recording_datetime ON recording(datetime);
    CREATE INDEX deployment_name ON deployment(name);",
    // 2: detectors' findings in acoupi's tables; a recording whose file is deleted keeps its
    // row with `path` NULL (acoupi: "None if the recording is not stored locally"), and roost
    // says when and why (`deleted_on`, `deleted_by`); `protected` recordings are never deleted;
    // `roost_analysis` holds which detector finished which recording (exactly once).
    "CREATE TABLE recording_v2 (
        id TEXT PRIMARY KEY NOT NULL,
        path TEXT UNIQUE,
        datetime TEXT NOT NULL,
        duration_s REAL NOT NULL,
        samplerate_hz INTEGER NOT NULL,
        audio_channels INTEGER NOT NULL,
        deployment_id TEXT REFERENCES deployment(id),
        protected INTEGER NOT NULL DEFAULT 0,
        deleted_on TEXT,
        deleted_by TEXT
    );
    INSERT INTO recording_v2 (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id)
        SELECT id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id FROM recording;
    DROP TABLE recording;
    ALTER TABLE recording_v2 RENAME TO recording;
    CREATE INDEX recording_datetime ON recording(datetime);
    CREATE TABLE model_output (
        id TEXT PRIMARY KEY NOT NULL,
        model_name TEXT NOT NULL,
        recording_id TEXT NOT NULL REFERENCES recording(id),
        created_on TEXT NOT NULL
    );
    CREATE INDEX model_output_recording ON model_output(recording_id);
    CREATE INDEX model_output_created ON model_output(created_on);
    CREATE TABLE detection (
        id TEXT PRIMARY KEY NOT NULL,
        location TEXT,
        detection_score REAL NOT NULL,
        model_output_id TEXT NOT NULL REFERENCES model_output(id)
    );
    CREATE INDEX detection_model_output ON detection(model_output_id);
    CREATE TABLE predicted_tag (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        confidence_score REAL NOT NULL,
        detection_id TEXT REFERENCES detection(id),
        model_output_id TEXT REFERENCES model_output(id)
    );
    CREATE INDEX predicted_tag_detection ON predicted_tag(detection_id);
    CREATE TABLE roost_analysis (
        recording_id TEXT NOT NULL REFERENCES recording(id),
        detector TEXT NOT NULL,
        outcome TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        error_code TEXT,
        error TEXT,
        finished_on TEXT,
        PRIMARY KEY (recording_id, detector)
    );
    CREATE TABLE roost_detector (
        name TEXT PRIMARY KEY NOT NULL,
        since TEXT NOT NULL
    );
    CREATE TABLE roost_keep (
        recording_id TEXT PRIMARY KEY NOT NULL REFERENCES recording(id),
        kept_by TEXT,
        decided_on TEXT NOT NULL
    );",
    // 3: clock-proof bookkeeping. A detector looks at recordings registered after a row
    // (`since_rowid`, insertion order: a wall clock stepped back cannot hide a recording from
    // it); `roost_age` holds when each recording was made on the device's own clock, which
    // counts real elapsed time (`roost_clock`, see `curate::age`), so that no clock step makes
    // a recording look old.
    "ALTER TABLE roost_detector ADD COLUMN since_rowid INTEGER;
    UPDATE roost_detector SET since_rowid = coalesce(
        (SELECT max(rowid) FROM recording WHERE datetime < roost_detector.since), 0);
    CREATE TABLE roost_age (
        recording_id TEXT PRIMARY KEY NOT NULL REFERENCES recording(id),
        made_device_s REAL NOT NULL
    );
    CREATE TABLE roost_clock (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        boot_id TEXT NOT NULL,
        boottime_s REAL NOT NULL,
        device_s REAL NOT NULL,
        wall TEXT NOT NULL,
        wall_synced INTEGER NOT NULL
    );",
    // 4: a recording's clip-level tags are looked up by their model output (the connector's
    // detection messages); without this index each lookup read the whole table, a cost that
    // grew with every recording ever analysed.
    "CREATE INDEX IF NOT EXISTS predicted_tag_model_output ON predicted_tag(model_output_id);",
    // 5: figures kept as the rows change, so that no recurring look costs more with every
    // recording ever made (see docs/PERFORMANCE.md, issue 22). `roost_age.bytes` is what a
    // recording's file occupies (stat once, when the curator first sees it; the rows of files
    // already gone: 0), `skew_s` its wall-clock start minus when it was made on the device
    // clock (a clock step since shows as a skew unlike today's; NULL once the file is gone);
    // `roost_tally` the recordings whose file is there and their bytes, `roost_deleted` the
    // files deleted per rule or cause, `roost_outcomes` each detector's analyses per outcome,
    // all kept by triggers whoever writes the rows ([`ROOST_TRIGGERS`], made with this step:
    // see [`legacy_step`]).
    "ALTER TABLE roost_age ADD COLUMN bytes INTEGER;
    ALTER TABLE roost_age ADD COLUMN skew_s REAL;
    UPDATE roost_age SET bytes = 0
        WHERE recording_id IN (SELECT id FROM recording WHERE path IS NULL);
    UPDATE roost_age SET skew_s = (julianday(r.datetime) - 2440587.5) * 86400.0 - made_device_s
        FROM recording r WHERE r.id = roost_age.recording_id AND r.path IS NOT NULL;
    CREATE INDEX roost_age_made ON roost_age(made_device_s);
    CREATE INDEX roost_age_skew ON roost_age(skew_s) WHERE skew_s IS NOT NULL;
    CREATE INDEX roost_age_unsized ON roost_age(recording_id) WHERE bytes IS NULL;
    CREATE TABLE roost_tally (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        recordings INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    );
    INSERT INTO roost_tally (id, recordings, bytes)
        VALUES (1, (SELECT count(*) FROM recording WHERE path IS NOT NULL), 0);
    CREATE TABLE roost_deleted (
        deleted_by TEXT PRIMARY KEY NOT NULL,
        recordings INTEGER NOT NULL
    );
    INSERT INTO roost_deleted (deleted_by, recordings)
        SELECT deleted_by, count(*) FROM recording WHERE deleted_by IS NOT NULL GROUP BY deleted_by;
    CREATE TABLE roost_outcomes (
        detector TEXT NOT NULL,
        outcome TEXT NOT NULL,
        recordings INTEGER NOT NULL,
        PRIMARY KEY (detector, outcome)
    );
    INSERT INTO roost_outcomes (detector, outcome, recordings)
        SELECT detector, outcome, count(*) FROM roost_analysis GROUP BY detector, outcome;",
    // 6: files whose deletion is decided but not done yet (`roost_unlink`), written in the same
    // FULL commit as the rows that say why: a curator killed between that commit and the
    // unlinks finishes them when it starts again (the row's `path` is already NULL).
    "CREATE TABLE roost_unlink (path TEXT PRIMARY KEY NOT NULL);",
];

/// acoupi 0.8.0's tables (its store's `create_base_schema`, column for column), made only
/// where missing: a database acoupi made keeps its own.
const ACOUPI_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS deployment (
        id BLOB PRIMARY KEY,
        name TEXT NOT NULL,
        started_on TEXT NOT NULL UNIQUE,
        ended_on TEXT,
        latitude REAL,
        longitude REAL
    );
    CREATE TABLE IF NOT EXISTS recording (
        id BLOB PRIMARY KEY,
        path TEXT UNIQUE,
        datetime TEXT NOT NULL UNIQUE,
        duration_s REAL NOT NULL,
        samplerate_hz INTEGER NOT NULL,
        audio_channels INTEGER NOT NULL DEFAULT 1,
        deployment_id BLOB NOT NULL,
        FOREIGN KEY (deployment_id) REFERENCES deployment(id)
    );
    CREATE TABLE IF NOT EXISTS model_output (
        id BLOB PRIMARY KEY,
        model_name TEXT NOT NULL,
        recording_id BLOB NOT NULL,
        created_on TEXT NOT NULL,
        FOREIGN KEY (recording_id) REFERENCES recording(id)
    );
    CREATE TABLE IF NOT EXISTS detection (
        id BLOB PRIMARY KEY,
        prediction_type TEXT NOT NULL CHECK (prediction_type IN ('presence', 'sequence', 'event')),
        start_time_s REAL,
        end_time_s REAL,
        low_freq_hz REAL,
        high_freq_hz REAL,
        detection_score REAL NOT NULL,
        model_output_id BLOB NOT NULL,
        FOREIGN KEY (model_output_id) REFERENCES model_output(id)
    );
    CREATE TABLE IF NOT EXISTS predicted_tag (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        confidence_score REAL NOT NULL,
        detection_id BLOB NOT NULL,
        FOREIGN KEY (detection_id) REFERENCES detection(id)
    );";

/// acoupi 0.8.0's indexes, under its names (its store makes them when missing).
const ACOUPI_INDEXES: &str = "
    CREATE INDEX IF NOT EXISTS idx_recording_deployment_id ON recording(deployment_id);
    CREATE INDEX IF NOT EXISTS idx_model_output_recording_id ON model_output(recording_id);
    CREATE INDEX IF NOT EXISTS idx_model_output_created_on ON model_output(created_on);
    CREATE INDEX IF NOT EXISTS idx_detection_model_output_id ON detection(model_output_id);
    CREATE INDEX IF NOT EXISTS idx_predicted_tag_detection_id ON predicted_tag(detection_id);
    CREATE INDEX IF NOT EXISTS idx_predicted_tag_key_value ON predicted_tag(key, value);";

/// Roost's columns on acoupi's `recording`: `protected` (never deleted), and when and why its
/// file was deleted (`path` is then NULL, acoupi's "not stored locally").
const ROOST_RECORDING_COLUMNS: [(&str, &str); 3] = [
    ("protected", "INTEGER NOT NULL DEFAULT 0"),
    ("deleted_on", "TEXT"),
    ("deleted_by", "TEXT"),
];

/// Roost's own tables (see docs/RECORDER.md and docs/DETECTORS.md for what each holds).
const ROOST_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS roost_analysis (
        recording_id BLOB NOT NULL REFERENCES recording(id),
        detector TEXT NOT NULL,
        outcome TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        error_code TEXT,
        error TEXT,
        finished_on TEXT,
        PRIMARY KEY (recording_id, detector)
    );
    CREATE TABLE IF NOT EXISTS roost_detector (
        name TEXT PRIMARY KEY NOT NULL,
        since TEXT NOT NULL,
        since_rowid INTEGER
    );
    CREATE TABLE IF NOT EXISTS roost_keep (
        recording_id BLOB PRIMARY KEY NOT NULL REFERENCES recording(id),
        kept_by TEXT,
        decided_on TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS roost_age (
        recording_id BLOB PRIMARY KEY NOT NULL REFERENCES recording(id),
        made_device_s REAL NOT NULL,
        bytes INTEGER,
        skew_s REAL
    );
    CREATE TABLE IF NOT EXISTS roost_clock (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        boot_id TEXT NOT NULL,
        boottime_s REAL NOT NULL,
        device_s REAL NOT NULL,
        wall TEXT NOT NULL,
        wall_synced INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS roost_tally (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        recordings INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS roost_deleted (
        deleted_by TEXT PRIMARY KEY NOT NULL,
        recordings INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS roost_outcomes (
        detector TEXT NOT NULL,
        outcome TEXT NOT NULL,
        recordings INTEGER NOT NULL,
        PRIMARY KEY (detector, outcome)
    );
    CREATE TABLE IF NOT EXISTS roost_unlink (path TEXT PRIMARY KEY NOT NULL);
    INSERT OR IGNORE INTO roost_tally (id, recordings, bytes)
        VALUES (1, (SELECT count(*) FROM recording WHERE path IS NOT NULL), 0);";

/// `roost_tally.bytes` counted from the rows (an adopted database whose `roost_age` holds
/// sizes already; the triggers keep it from then on).
const TALLY_BYTES: &str = "UPDATE roost_tally SET bytes = (SELECT coalesce(sum(g.bytes), 0)
    FROM roost_age g JOIN recording r ON r.id = g.recording_id WHERE r.path IS NOT NULL)
    WHERE id = 1;";

/// Roost's indexes.
const ROOST_INDEXES: &str = "
    CREATE INDEX IF NOT EXISTS roost_deployment_name ON deployment(name);
    CREATE INDEX IF NOT EXISTS roost_age_made ON roost_age(made_device_s);
    CREATE INDEX IF NOT EXISTS roost_age_skew ON roost_age(skew_s) WHERE skew_s IS NOT NULL;
    CREATE INDEX IF NOT EXISTS roost_age_unsized ON roost_age(recording_id) WHERE bytes IS NULL;";

/// The triggers that keep roost's figures (`roost_tally`, `roost_deleted`, `roost_outcomes`)
/// whoever writes the rows (no `OR IGNORE` in them: an outer upsert's conflict handling would
/// override it). Made by step 5 of the older layouts too.
const ROOST_TRIGGERS: &str = "
    CREATE TRIGGER IF NOT EXISTS roost_tally_registered AFTER INSERT ON recording
        WHEN new.path IS NOT NULL
    BEGIN
        UPDATE roost_tally SET recordings = recordings + 1 WHERE id = 1;
    END;
    CREATE TRIGGER IF NOT EXISTS roost_tally_gone AFTER UPDATE OF path ON recording
        WHEN old.path IS NOT NULL AND new.path IS NULL
    BEGIN
        UPDATE roost_tally SET recordings = recordings - 1, bytes = bytes - coalesce(
            (SELECT bytes FROM roost_age WHERE recording_id = old.id), 0) WHERE id = 1;
        UPDATE roost_age SET skew_s = NULL WHERE recording_id = old.id;
    END;
    CREATE TRIGGER IF NOT EXISTS roost_tally_back AFTER UPDATE OF path ON recording
        WHEN old.path IS NULL AND new.path IS NOT NULL
    BEGIN
        UPDATE roost_tally SET recordings = recordings + 1, bytes = bytes + coalesce(
            (SELECT bytes FROM roost_age WHERE recording_id = new.id), 0) WHERE id = 1;
    END;
    CREATE TRIGGER IF NOT EXISTS roost_tally_removed AFTER DELETE ON recording
        WHEN old.path IS NOT NULL
    BEGIN
        UPDATE roost_tally SET recordings = recordings - 1, bytes = bytes - coalesce(
            (SELECT bytes FROM roost_age WHERE recording_id = old.id), 0) WHERE id = 1;
    END;
    CREATE TRIGGER IF NOT EXISTS roost_tally_stamped AFTER INSERT ON roost_age
        WHEN new.bytes IS NOT NULL
         AND EXISTS (SELECT 1 FROM recording WHERE id = new.recording_id AND path IS NOT NULL)
    BEGIN
        UPDATE roost_tally SET bytes = bytes + new.bytes WHERE id = 1;
    END;
    CREATE TRIGGER IF NOT EXISTS roost_tally_sized AFTER UPDATE OF bytes ON roost_age
        WHEN EXISTS (SELECT 1 FROM recording WHERE id = new.recording_id AND path IS NOT NULL)
    BEGIN
        UPDATE roost_tally SET bytes = bytes + coalesce(new.bytes, 0) - coalesce(old.bytes, 0)
            WHERE id = 1;
    END;
    CREATE TRIGGER IF NOT EXISTS roost_outcome_new AFTER INSERT ON roost_analysis
    BEGIN
        INSERT INTO roost_outcomes (detector, outcome, recordings)
            SELECT new.detector, new.outcome, 0 WHERE NOT EXISTS (SELECT 1 FROM roost_outcomes
                WHERE detector = new.detector AND outcome = new.outcome);
        UPDATE roost_outcomes SET recordings = recordings + 1
            WHERE detector = new.detector AND outcome = new.outcome;
    END;
    CREATE TRIGGER IF NOT EXISTS roost_outcome_changed AFTER UPDATE OF outcome ON roost_analysis
        WHEN old.outcome IS NOT new.outcome
    BEGIN
        UPDATE roost_outcomes SET recordings = recordings - 1
            WHERE detector = old.detector AND outcome = old.outcome;
        INSERT INTO roost_outcomes (detector, outcome, recordings)
            SELECT new.detector, new.outcome, 0 WHERE NOT EXISTS (SELECT 1 FROM roost_outcomes
                WHERE detector = new.detector AND outcome = new.outcome);
        UPDATE roost_outcomes SET recordings = recordings + 1
            WHERE detector = new.detector AND outcome = new.outcome;
    END;
    CREATE TRIGGER IF NOT EXISTS roost_count_deleted AFTER UPDATE OF deleted_by ON recording
        WHEN old.deleted_by IS NULL AND new.deleted_by IS NOT NULL
    BEGIN
        INSERT INTO roost_deleted (deleted_by, recordings) SELECT new.deleted_by, 0
            WHERE NOT EXISTS (SELECT 1 FROM roost_deleted WHERE deleted_by = new.deleted_by);
        UPDATE roost_deleted SET recordings = recordings + 1 WHERE deleted_by = new.deleted_by;
    END;";

/// Roost's version marker, a table acoupi never touches.
const SCHEMA_MARKER: &str = "CREATE TABLE IF NOT EXISTS roost_schema (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);";

/// What a database holds, judged before each step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// No table of acoupi's or roost's: a new file.
    Empty,
    /// acoupi's tables without roost's (acoupi's own store made it).
    Acoupi,
    /// Roost's layout of this version (1 to 6: an older roost's, text ids; 7: this one).
    Roost(usize),
}

/// Judges `conn`: `roost_schema` when roost marked it, else from the tables (a database of a
/// roost before the marker, or acoupi's, whatever its `user_version` says).
pub fn layout(conn: &Connection) -> rusqlite::Result<Layout> {
    let marked: Option<i64> = conn
        .query_row("SELECT version FROM roost_schema WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()
        .or_else(|e| match e {
            rusqlite::Error::SqliteFailure(..) => Ok(None),
            e => Err(e),
        })?;
    if let Some(v) = marked {
        return Ok(Layout::Roost(usize::try_from(v).unwrap_or(usize::MAX)));
    }
    let has = |kind: &str, name: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = ?1 AND name = ?2)",
            [kind, name],
            |r| r.get(0),
        )
    };
    if acoupi_detection(conn)? {
        return Ok(if has("table", "roost_unlink")? {
            Layout::Roost(VERSION)
        } else {
            Layout::Acoupi
        });
    }
    // Newest first: what each older step left behind.
    let marks = [
        (6, "table", "roost_unlink"),
        (5, "table", "roost_tally"),
        (4, "index", "predicted_tag_model_output"),
        (3, "table", "roost_age"),
        (2, "table", "roost_analysis"),
        (1, "table", "recording"),
    ];
    for (version, kind, name) in marks {
        if has(kind, name)? {
            return Ok(Layout::Roost(version));
        }
    }
    Ok(if has("table", "deployment")? {
        Layout::Acoupi
    } else {
        Layout::Empty
    })
}

/// Whether `detection` is acoupi's (a `prediction_type` column; roost's older one had none).
fn acoupi_detection(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('detection') WHERE name = 'prediction_type')",
        [],
        |r| r.get(0),
    )
}

/// Why a database could not be brought to [`VERSION`].
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A newer roost made it: it is left as it is.
    #[error(
        "its layout is version {found}, newer than this roost knows ({VERSION}); upgrade roost"
    )]
    Newer {
        /// `roost_schema.version`.
        found: usize,
    },
    /// A step failed; its transaction was rolled back, the file is as it was.
    #[error("cannot bring its layout from {from} to {VERSION} (nothing was changed)")]
    Failed {
        /// The layout it stays at.
        from: String,
        /// Whether the step passes over the archive (an older roost's layout converted): only
        /// such a step waits before it is tried again ([`Retry`]); making the tables of an
        /// empty database or adopting acoupi's costs nothing and is tried at the next turn (a
        /// storage removed and made again while the file was being made, issue 26's CI run).
        costly: bool,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
}

/// Brings `conn` to [`VERSION`], one IMMEDIATE transaction per step, judging again inside
/// each (the recorder and the curator may open a new database at once: one migrates, the
/// other sees it done). A step interrupted (kill -9, power cut) left nothing: it runs again.
pub fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let failed = |layout: Layout| {
        move |source| MigrateError::Failed {
            from: describe(layout),
            costly: matches!(layout, Layout::Roost(v) if v < VERSION),
            source,
        }
    };
    loop {
        let now = layout(conn).map_err(failed(Layout::Empty))?;
        match now {
            Layout::Roost(v) if v > VERSION => return Err(MigrateError::Newer { found: v }),
            Layout::Roost(VERSION) => {
                // Judged by its tables: the marker was lost (a tool that copied the tables).
                if !marked(conn).map_err(failed(now))? {
                    step(conn, now, |tx| mark(tx, VERSION)).map_err(failed(now))?;
                }
                return Ok(());
            }
            Layout::Roost(6) => to_acoupi_layout(conn, now).map_err(failed(now))?,
            Layout::Roost(v) => step(conn, now, |tx| legacy_step(tx, v)).map_err(failed(now))?,
            Layout::Empty | Layout::Acoupi => step(conn, now, adopt).map_err(failed(now))?,
        }
    }
}

/// Makes the layout of roost before acoupi's (version 6, marked) in an empty database: what
/// an older roost left, for the tests and the benchmark of the conversion
/// ([`crate::archive::as_roost_v6`]).
///
/// # Errors
/// SQLite's, when a step fails.
pub fn create_roost_v6(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for v in 0..LEGACY.len() {
        legacy_step(&tx, v)?;
    }
    tx.commit()
}

/// When to try a failed conversion again. A conversion that failed (a full card: it needs
/// room for the converted rows beside the old ones until it commits) costs a pass over the
/// whole archive each time: the recorder and the curator try it again after 1 minute, then
/// twice as long each time up to an hour, not at every turn.
#[derive(Clone, Debug)]
pub struct Retry {
    next: Option<std::time::Instant>,
    wait: std::time::Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            next: None,
            wait: Self::FIRST,
        }
    }
}

impl Retry {
    const FIRST: std::time::Duration = std::time::Duration::from_secs(60);
    const MOST: std::time::Duration = std::time::Duration::from_secs(3600);

    /// Whether opening may convert again at `now`.
    pub fn due(&self, now: std::time::Instant) -> bool {
        self.next.is_none_or(|next| now >= next)
    }

    /// Notes the outcome of an opening at `now`: a failed conversion waits, anything else
    /// (success, a lock, another error) starts over.
    pub fn outcome(&mut self, failed_conversion: bool, now: std::time::Instant) {
        if failed_conversion {
            self.next = Some(now + self.wait);
            self.wait = (self.wait * 2).min(Self::MOST);
        } else {
            *self = Self::default();
        }
    }
}

fn marked(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'roost_schema')",
        [],
        |r| r.get(0),
    )
}

/// Step `v + 1` of the older layouts ([`LEGACY`]; the fifth makes [`ROOST_TRIGGERS`] too), and
/// its mark.
fn legacy_step(tx: &Transaction<'_>, v: usize) -> rusqlite::Result<()> {
    tx.execute_batch(LEGACY[v])?;
    if v == 4 {
        tx.execute_batch(ROOST_TRIGGERS)?;
    }
    mark(tx, v + 1)
}

fn describe(layout: Layout) -> String {
    match layout {
        Layout::Empty => "an empty database".into(),
        Layout::Acoupi => "acoupi's".into(),
        Layout::Roost(v) => format!("roost's version {v}"),
    }
}

/// Runs `work` in one IMMEDIATE transaction if the layout is still `judged` (another process,
/// the recorder or the curator, may have taken the step meanwhile: then nothing is done here).
fn step(
    conn: &mut Connection,
    judged: Layout,
    work: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if layout(&tx)? != judged {
        return Ok(());
    }
    work(&tx)?;
    tx.commit()
}

fn mark(tx: &Transaction<'_>, version: usize) -> rusqlite::Result<()> {
    tx.execute_batch(SCHEMA_MARKER)?;
    tx.execute(
        "INSERT INTO roost_schema (id, version) VALUES (1, ?1)
         ON CONFLICT(id) DO UPDATE SET version = ?1",
        [version as i64],
    )?;
    let user_version = if version >= VERSION {
        ACOUPI_USER_VERSION
    } else {
        version as i64
    };
    tx.pragma_update(None, "user_version", user_version)
}

/// An empty database, or one acoupi made, gets acoupi's tables where missing, roost's columns
/// and roost's tables: version 7.
/// Whatever of roost's is there already (a database where some of roost's tables were made
/// and others dropped) is completed, not made again: columns added where missing, figures
/// counted from the rows when their table is new.
fn adopt(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(ACOUPI_TABLES)?;
    add_recording_columns(tx)?;
    tx.execute_batch(ROOST_TABLES)?;
    add_columns(tx, "roost_age", &[("bytes", "INTEGER"), ("skew_s", "REAL")])?;
    add_columns(tx, "roost_detector", &[("since_rowid", "INTEGER")])?;
    tx.execute_batch(
        "INSERT INTO roost_deleted (deleted_by, recordings)
             SELECT deleted_by, count(*) FROM recording
             WHERE deleted_by IS NOT NULL AND NOT EXISTS (SELECT 1 FROM roost_deleted)
             GROUP BY deleted_by;
         INSERT INTO roost_outcomes (detector, outcome, recordings)
             SELECT detector, outcome, count(*) FROM roost_analysis
             WHERE NOT EXISTS (SELECT 1 FROM roost_outcomes)
             GROUP BY detector, outcome;",
    )?;
    tx.execute_batch(TALLY_BYTES)?;
    tx.execute_batch(ACOUPI_INDEXES)?;
    tx.execute_batch(ROOST_INDEXES)?;
    tx.execute_batch(ROOST_TRIGGERS)?;
    mark(tx, VERSION)
}

fn add_recording_columns(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    add_columns(tx, "recording", &ROOST_RECORDING_COLUMNS)
}

/// Adds each `(name, declaration)` column `table` lacks.
fn add_columns(
    tx: &Transaction<'_>,
    table: &str,
    columns: &[(&str, &str)],
) -> rusqlite::Result<()> {
    for (name, decl) in columns {
        let present: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            [table, name],
            |r| r.get(0),
        )?;
        if !present {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {decl}"))?;
        }
    }
    Ok(())
}

/// The tables an older roost made with text ids, renamed aside while they are copied.
const CONVERTED: [&str; 8] = [
    "deployment",
    "recording",
    "model_output",
    "detection",
    "predicted_tag",
    "roost_analysis",
    "roost_keep",
    "roost_age",
];

/// Version 6 to 7, in one transaction with foreign keys off (SQLite ignores the pragma inside
/// one): the old tables are renamed aside, acoupi's made, every row copied with its rowid (the
/// curator's cursors are rowids; each old table is dropped once copied and its indexes before,
/// so that their pages hold the next table's rows and the file grows as little as it can), ids as the same UUIDs' 16 bytes, times as acoupi's text;
/// each JSON `location` becomes an `event` detection's four box columns (see
/// [`box_columns`]), and the file-level tags (acoupi has no place for them) become one
/// `presence` detection each, without a box, scored by the tag's confidence.
fn to_acoupi_layout(conn: &mut Connection, judged: Layout) -> rusqlite::Result<()> {
    room_for_conversion(conn)?;
    register_functions(conn)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let result = step(conn, judged, |tx| {
        let started = std::time::Instant::now();
        tx.execute_batch(&drop_roost_triggers())?;
        for table in CONVERTED {
            tx.execute_batch(&format!("ALTER TABLE {table} RENAME TO {}", aside(table)))?;
        }
        drop_old_indexes(tx)?;
        tx.execute_batch(ACOUPI_TABLES)?;
        add_recording_columns(tx)?;
        tx.execute_batch(ROOST_TABLES)?;
        copy_rows(tx)?;
        tx.execute_batch(ACOUPI_INDEXES)?;
        tx.execute_batch(ROOST_INDEXES)?;
        tx.execute_batch(ROOST_TRIGGERS)?;
        let dangling: i64 =
            tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })?;
        if dangling > 0 {
            tracing::warn!(
                rows = dangling,
                "metadata.db: rows whose parent row is missing were kept as they were"
            );
        }
        mark(tx, VERSION)?;
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "metadata.db converted to acoupi 0.8.0's layout (version 7)"
        );
        Ok(())
    });
    if let Err(e) = conn.pragma_update(None, "foreign_keys", "ON") {
        tracing::warn!(error = %e, "metadata.db: cannot turn foreign keys on again");
    }
    if result.is_ok() {
        // The log holds every converted page until a checkpoint: give the card its room back.
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
    result
}

/// The conversion writes the converted rows to the log (-wal) before it commits, while the
/// old ones are still in the file: it needs about the database's size free on its disk, and
/// 16 MiB beside. Without that room it is not begun (a pass over the whole archive that would
/// end in SQLITE_FULL, again at every try): SQLITE_FULL at once, with the figures.
fn room_for_conversion(conn: &Connection) -> rusqlite::Result<()> {
    let size: i64 = conn.query_row(
        "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
        [],
        |r| r.get(0),
    )?;
    let Some(dir) = conn
        .path()
        .map(std::path::Path::new)
        .and_then(std::path::Path::parent)
    else {
        return Ok(());
    };
    let Ok(free) = super::free_bytes(dir) else {
        return Ok(());
    };
    let needed = u64::try_from(size).unwrap_or(0) + 16 * 1024 * 1024;
    if free >= needed {
        return Ok(());
    }
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
        Some(format!(
            "the conversion needs {} MB free on the storage's disk and {} MB are: free space (delete recordings by hand) and it goes on by itself",
            needed / 1_000_000,
            free / 1_000_000
        )),
    ))
}

/// Where a table of [`CONVERTED`] waits while it is copied: `roost_v6_<name without roost_>`.
fn aside(table: &str) -> String {
    format!("roost_v6_{}", table.trim_start_matches("roost_"))
}

fn drop_roost_triggers() -> String {
    [
        "roost_tally_registered",
        "roost_tally_gone",
        "roost_tally_back",
        "roost_tally_removed",
        "roost_tally_stamped",
        "roost_tally_sized",
        "roost_outcome_new",
        "roost_outcome_changed",
        "roost_count_deleted",
    ]
    .map(|t| format!("DROP TRIGGER IF EXISTS {t};"))
    .concat()
}

/// Drops the indexes (not the UNIQUE constraints' own) of the tables renamed aside.
fn drop_old_indexes(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let names: Vec<String> = tx
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL
             AND tbl_name LIKE 'roost_v6_%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for name in names {
        tx.execute_batch(&format!("DROP INDEX \"{}\"", name.replace('"', "\"\"")))?;
    }
    Ok(())
}

fn copy_rows(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    copy_unique(
        tx,
        "SELECT rowid, roost_id(id), name, roost_time(started_on), roost_time(ended_on),
                latitude, longitude FROM roost_v6_deployment",
        "INSERT INTO deployment (rowid, id, name, started_on, ended_on, latitude, longitude)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        "deployment",
        3,
    )?;
    let orphans = recovered_deployment(tx)?;
    tx.execute(
        "CREATE TEMP TABLE roost_v6_orphan_deployment AS SELECT ?1 AS id",
        [orphans],
    )?;
    copy_unique(
        tx,
        "SELECT r.rowid, roost_id(r.id), r.path, roost_time(r.datetime), r.duration_s,
                r.samplerate_hz, r.audio_channels,
                coalesce((SELECT d.id FROM deployment d WHERE d.id = roost_id(r.deployment_id)),
                         (SELECT id FROM roost_v6_orphan_deployment)),
                r.protected, roost_time(r.deleted_on), r.deleted_by
         FROM roost_v6_recording r",
        "INSERT INTO recording (rowid, id, path, datetime, duration_s, samplerate_hz,
             audio_channels, deployment_id, protected, deleted_on, deleted_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        "recording",
        3,
    )?;
    tx.execute_batch(
        "DROP TABLE temp.roost_v6_orphan_deployment;
        DROP TABLE roost_v6_recording;
        DROP TABLE roost_v6_deployment;
        INSERT INTO model_output (rowid, id, model_name, recording_id, created_on)
            SELECT rowid, roost_id(id), model_name, roost_id(recording_id), roost_time(created_on)
            FROM roost_v6_model_output;
        DROP TABLE roost_v6_model_output;
        INSERT INTO detection (rowid, id, prediction_type, start_time_s, low_freq_hz, end_time_s,
                high_freq_hz, detection_score, model_output_id)
            SELECT rowid, roost_id(id), 'event', roost_box(location, 0), roost_box(location, 1),
                roost_box(location, 2), roost_box(location, 3), detection_score,
                roost_id(model_output_id)
            FROM roost_v6_detection;
        DROP TABLE roost_v6_detection;
        INSERT INTO detection (id, prediction_type, detection_score, model_output_id)
            SELECT roost_id('roost-clip-tag:' || id), 'presence',
                min(max(coalesce(confidence_score, 0.0), 0.0), 1.0), roost_id(model_output_id)
            FROM roost_v6_predicted_tag
            WHERE detection_id IS NULL AND model_output_id IS NOT NULL ORDER BY id;
        INSERT INTO predicted_tag (id, key, value, confidence_score, detection_id)
            SELECT id, key, value, confidence_score, roost_id(coalesce(detection_id,
                'roost-clip-tag:' || id))
            FROM roost_v6_predicted_tag
            WHERE detection_id IS NOT NULL OR model_output_id IS NOT NULL ORDER BY id;
        INSERT INTO sqlite_sequence (name, seq)
            SELECT 'predicted_tag', 0 WHERE NOT EXISTS
                (SELECT 1 FROM sqlite_sequence WHERE name = 'predicted_tag');
        UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT max(seq) FROM sqlite_sequence
            WHERE name = 'roost_v6_predicted_tag'), 0)) WHERE name = 'predicted_tag';
        DROP TABLE roost_v6_predicted_tag;
        INSERT INTO roost_analysis (rowid, recording_id, detector, outcome, attempts, error_code,
                error, finished_on)
            SELECT rowid, roost_id(recording_id), detector, outcome, attempts, error_code, error,
                roost_time(finished_on)
            FROM roost_v6_analysis;
        DROP TABLE roost_v6_analysis;
        INSERT INTO roost_keep (rowid, recording_id, kept_by, decided_on)
            SELECT rowid, roost_id(recording_id), kept_by, roost_time(decided_on)
            FROM roost_v6_keep;
        DROP TABLE roost_v6_keep;
        INSERT INTO roost_age (rowid, recording_id, made_device_s, bytes, skew_s)
            SELECT rowid, roost_id(recording_id), made_device_s, bytes, skew_s FROM roost_v6_age;
        DROP TABLE roost_v6_age;
        UPDATE roost_detector SET since = roost_time(since);
        UPDATE roost_clock SET wall = roost_time(wall);",
    )
}

/// acoupi's `recording.deployment_id` is NOT NULL: recordings an older roost left without a
/// deployment row (or with one that is gone) are given one, `recovered`, spanning them.
fn recovered_deployment(tx: &Transaction<'_>) -> rusqlite::Result<Option<Vec<u8>>> {
    let span: (i64, Option<String>, Option<String>) = tx.query_row(
        "SELECT count(*),
                min(CASE typeof(datetime) WHEN 'text' THEN roost_time(datetime) END),
                max(CASE typeof(datetime) WHEN 'text' THEN roost_time(datetime) END)
         FROM roost_v6_recording r
         WHERE NOT EXISTS (SELECT 1 FROM deployment d WHERE d.id = roost_id(r.deployment_id))",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let (n, first, last) = span;
    if n == 0 {
        return Ok(None);
    }
    let first = first.unwrap_or_else(|| "1970-01-01T00:00:00+00:00".into());
    let id = super::new_uuid();
    let started_on = free_time(tx, "deployment", "started_on", &first)?;
    tx.execute(
        "INSERT INTO deployment (id, name, started_on, ended_on) VALUES (?1, 'recovered', ?2, ?3)",
        params![id, started_on, last],
    )?;
    tracing::warn!(
        recordings = n,
        "metadata.db: recordings without a deployment row were given one named `recovered`"
    );
    Ok(Some(id.as_bytes().to_vec()))
}

/// Copies the rows `select` gives through `insert`. A row whose time (the selected column at
/// index `time_at`) another row has already (acoupi's UNIQUE `started_on` and `datetime`: an
/// older roost had two recordings start in the same microsecond after a clock step) is stored
/// a microsecond later; its file name and GUANO keep the time it was made.
fn copy_unique(
    tx: &Transaction<'_>,
    select: &str,
    insert: &str,
    table: &str,
    time_at: usize,
) -> rusqlite::Result<()> {
    let column = if table == "deployment" {
        "started_on"
    } else {
        "datetime"
    };
    let mut read = tx.prepare(select)?;
    let mut write = tx.prepare(insert)?;
    let mut rows = read.query([])?;
    while let Some(row) = rows.next()? {
        let mut values: Vec<Value> = (0..row.as_ref().column_count())
            .map(|i| row.get::<_, Value>(i))
            .collect::<rusqlite::Result<_>>()?;
        // A time another program wrote as a number or bytes is kept as text (acoupi's
        // column is text, and UNIQUE).
        let text = match &values[time_at] {
            Value::Text(t) => Some(t.clone()),
            Value::Integer(n) => Some(n.to_string()),
            Value::Real(x) => Some(x.to_string()),
            Value::Blob(b) => Some(b.iter().map(|x| format!("{x:02x}")).collect()),
            Value::Null => None,
        };
        if let Some(t) = text {
            values[time_at] = Value::Text(free_time(tx, table, column, &t)?);
        }
        write.execute(rusqlite::params_from_iter(values.iter()))?;
    }
    Ok(())
}

/// `time` (acoupi's text), or the first microsecond after it that no row of `table` has in
/// `column` (UNIQUE there); text that is no time gets a ` #n` suffix instead.
pub fn free_time(
    conn: &Connection,
    table: &str,
    column: &str,
    time: &str,
) -> rusqlite::Result<String> {
    let taken = |t: &str| -> rusqlite::Result<bool> {
        conn.prepare_cached(&format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE {column} = ?1)"
        ))?
        .query_row([t], |r| r.get(0))
    };
    let parsed = super::parse_db_datetime(time);
    let mut candidate = time.to_string();
    // A microsecond later each time, for at most a second's worth; then (or for what is no
    // time, or the end of time) a numbered suffix, which no time has.
    for n in 1i64.. {
        if !taken(&candidate)? {
            return Ok(candidate);
        }
        let later = parsed
            .filter(|_| n <= 1_000_000)
            .and_then(|t| t.checked_add(jiff::SignedDuration::from_micros(n)).ok());
        candidate = match later {
            Some(t) => super::db_datetime(t),
            None => format!("{time} #{n}"),
        };
    }
    Ok(candidate)
}

/// The SQL functions the conversion uses: `roost_id(x)` (a UUID's 16 bytes, see [`id_blob`]),
/// `roost_time(x)` (acoupi's time text, see [`time_text`]) and `roost_box(location, i)` (see
/// [`box_columns`]).
fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("roost_id", 1, flags, |ctx| Ok(id_blob(ctx.get_raw(0))))?;
    conn.create_scalar_function("roost_time", 1, flags, |ctx| Ok(time_text(ctx.get_raw(0))))?;
    conn.create_scalar_function("roost_box", 2, flags, |ctx: &Context<'_>| {
        let i: i64 = ctx.get(1)?;
        let [start, low, end, high] = box_columns(ctx.get_raw(0));
        Ok(match i {
            0 => start,
            1 => low,
            2 => end,
            _ => high,
        })
    })
}

/// An id as acoupi keeps it: a UUID's 16 bytes (RFC 4122 order, Python's `UUID.bytes`). A
/// UUID in the text form roost wrote (lowercase, hyphenated: an older roost's ids) becomes its
/// own bytes, so ids already sent in messages name the same rows; anything else (another
/// program's text, a UUID in another spelling, which must not collide with roost's), the
/// same made-up UUID each time it is met (version 5 in roost's namespace), so references to
/// it stay joined.
pub fn id_blob(v: ValueRef<'_>) -> Value {
    let made_up = |bytes: &[u8]| {
        Value::Blob(
            uuid::Uuid::new_v5(&ROOST_NAMESPACE, bytes)
                .as_bytes()
                .to_vec(),
        )
    };
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Blob(b) if b.len() == 16 => Value::Blob(b.to_vec()),
        ValueRef::Blob(b) => made_up(b),
        ValueRef::Text(t) => match std::str::from_utf8(t).ok().and_then(canonical_uuid) {
            Some(u) => Value::Blob(u.as_bytes().to_vec()),
            None => made_up(t),
        },
        ValueRef::Integer(n) => made_up(n.to_string().as_bytes()),
        ValueRef::Real(x) => made_up(x.to_string().as_bytes()),
    }
}

/// `text` as a UUID when it is exactly the form roost writes (`uuid`'s hyphenated lowercase).
fn canonical_uuid(text: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::parse_str(text)
        .ok()
        .filter(|u| u.hyphenated().to_string() == text)
}

/// A time column as acoupi's text ([`super::db_datetime`]); what is no time stays as it is.
pub fn time_text(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Text(t) => {
            let text = String::from_utf8_lossy(t);
            match super::parse_db_datetime(&text) {
                Some(ts) => Value::Text(super::db_datetime(ts)),
                None => Value::Text(text.into_owned()),
            }
        }
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Integer(n),
        ValueRef::Real(x) => Value::Real(x),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// A detection's box `[start_s, low_hz, end_s, high_hz]` as acoupi's columns in that order
/// (`start_time_s`, `low_freq_hz`, `end_time_s`, `high_freq_hz`): all four when acoupi's
/// `BoundingBox` takes them (end after start, high above low). A span of no length (a click,
/// a pure tone: roost's detectors may report end = start or high = low) keeps its start and
/// leaves its end NULL: acoupi then reads no box (it refuses such a box, and would fail the
/// whole query), and roost reads the end as the start ([`box_from_columns`]). A value that is
/// not a finite number is NULL.
pub fn box_values(location: [f64; 4]) -> [Option<f64>; 4] {
    let [start, low, end, high] = location.map(|x| x.is_finite().then_some(x));
    let after = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > a => Some(b),
        _ => None,
    };
    [start, low, after(start, end), after(low, high)]
}

/// A box from acoupi's four columns (see [`box_values`]); `None` without a start or a low
/// frequency (a `presence` detection).
pub fn box_from_columns(cols: [Option<f64>; 4]) -> Option<[f64; 4]> {
    let [start, low, end, high] = cols;
    let (start, low) = (start?, low?);
    Some([start, low, end.unwrap_or(start), high.unwrap_or(low)])
}

/// An older roost's JSON `location` (`{"type": "BoundingBox", "coordinates": [..4]}` or the
/// bare array) as acoupi's four columns; NULLs when it is no box.
fn box_columns(v: ValueRef<'_>) -> [Value; 4] {
    let parsed = match v {
        ValueRef::Text(t) => serde_json::from_slice::<serde_json::Value>(t).ok(),
        _ => None,
    };
    let coords = parsed.as_ref().and_then(|j| match j {
        serde_json::Value::Array(a) => Some(a),
        j => j.get("coordinates").and_then(serde_json::Value::as_array),
    });
    let four: Option<[f64; 4]> = coords.and_then(|c| {
        let xs: Option<Vec<f64>> = c.iter().map(serde_json::Value::as_f64).collect();
        <[f64; 4]>::try_from(xs?).ok()
    });
    match four {
        Some(b) => box_values(b).map(|x| x.map_or(Value::Null, Value::Real)),
        None => [Value::Null, Value::Null, Value::Null, Value::Null],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{ArchiveShape, as_roost_v6, build};
    use crate::storage::Storage;

    /// Every row of every table that matters, as text (ids in hex), in a stable order; the
    /// file-level tags' detections by their model output (their ids are made anew).
    fn snapshot(conn: &Connection) -> Vec<String> {
        let queries = [
            "SELECT rowid, hex(id), name, started_on, ended_on, latitude, longitude FROM deployment ORDER BY rowid",
            "SELECT rowid, hex(id), path, datetime, duration_s, samplerate_hz, audio_channels, hex(deployment_id), protected, deleted_on, deleted_by FROM recording ORDER BY rowid",
            "SELECT rowid, hex(id), model_name, hex(recording_id), created_on FROM model_output ORDER BY rowid",
            "SELECT CASE prediction_type WHEN 'event' THEN hex(id) ELSE 'clip' END, prediction_type, start_time_s, low_freq_hz, end_time_s, high_freq_hz, detection_score, hex(model_output_id) FROM detection ORDER BY hex(model_output_id), prediction_type, hex(id)",
            "SELECT t.id, t.key, t.value, t.confidence_score, CASE d.prediction_type WHEN 'event' THEN hex(d.id) ELSE 'clip of ' || hex(d.model_output_id) END FROM predicted_tag t JOIN detection d ON d.id = t.detection_id ORDER BY t.id",
            "SELECT rowid, hex(recording_id), detector, outcome, attempts, error_code, error, finished_on FROM roost_analysis ORDER BY rowid",
            "SELECT rowid, hex(recording_id), kept_by, decided_on FROM roost_keep ORDER BY rowid",
            "SELECT rowid, hex(recording_id), made_device_s, bytes, skew_s FROM roost_age ORDER BY rowid",
            "SELECT name, since, since_rowid FROM roost_detector ORDER BY name",
            "SELECT boot_id, boottime_s, device_s, wall, wall_synced FROM roost_clock",
            "SELECT recordings, bytes FROM roost_tally",
            "SELECT deleted_by, recordings FROM roost_deleted ORDER BY deleted_by",
            "SELECT detector, outcome, recordings FROM roost_outcomes ORDER BY detector, outcome",
            "SELECT path FROM roost_unlink ORDER BY path",
        ];
        let mut out = Vec::new();
        for sql in queries {
            let rows = crate::archive::rows_as_text(conn, sql).unwrap();
            out.extend(rows.iter().map(|r| format!("{}: {r}", &sql[7..30])));
        }
        out
    }

    fn archive(dir: &std::path::Path) -> (std::path::PathBuf, Vec<String>) {
        let root = dir.join("storage");
        let shape = ArchiveShape {
            recordings: 120,
            ..ArchiveShape::default()
        };
        let files = build(
            &root,
            &shape,
            "2026-12-01T12:00:00.123456Z".parse().unwrap(),
        )
        .unwrap();
        let s = Storage::open(&root, &Default::default()).unwrap();
        for (i, f) in files.iter().take(7).enumerate() {
            let id: uuid::Uuid = s
                .connection()
                .query_row(
                    "SELECT id FROM recording WHERE path = ?1",
                    [f.to_string_lossy()],
                    |r| r.get(0),
                )
                .unwrap();
            let by = if i < 4 { "maxAge" } else { "keep" };
            s.mark_deleted(&id, by, "2026-12-01T12:30:00Z".parse().unwrap())
                .unwrap();
        }
        s.connection()
            .execute(
                "INSERT INTO roost_unlink (path) VALUES (?1)",
                [files[6].to_string_lossy()],
            )
            .unwrap();
        let before = snapshot(s.connection());
        (root, before)
    }

    /// An older roost's database (version 6) comes back row for row, rowid for rowid, with
    /// the same ids, times, deletions, decisions, analyses and figures, whether roost marked
    /// it or not, and after acoupi's store opened it (its `user_version` and indexes).
    #[test]
    fn an_older_roosts_database_is_converted_keeping_everything() {
        for variant in ["marked", "unmarked", "opened by acoupi"] {
            let dir = tempfile::tempdir().unwrap();
            let (root, before) = archive(dir.path());
            as_roost_v6(&root).unwrap();
            let db = root.join(crate::storage::DB_FILE);
            let conn = Connection::open(&db).unwrap();
            assert_eq!(layout(&conn).unwrap(), Layout::Roost(6));
            let text_id: String = conn
                .query_row("SELECT id FROM recording ORDER BY rowid LIMIT 1", [], |r| {
                    r.get(0)
                })
                .unwrap();
            match variant {
                "unmarked" => conn.execute_batch("DROP TABLE roost_schema").unwrap(),
                "opened by acoupi" => conn
                    .execute_batch(&format!(
                        "DROP TABLE roost_schema; {ACOUPI_TABLES} {ACOUPI_INDEXES} PRAGMA user_version = 1;"
                    ))
                    .unwrap(),
                _ => {}
            }
            assert_eq!(layout(&conn).unwrap(), Layout::Roost(6), "{variant}");
            drop(conn);
            let s = Storage::open(&root, &Default::default()).unwrap();
            assert_eq!(layout(s.connection()).unwrap(), Layout::Roost(VERSION));
            let after = snapshot(s.connection());
            assert_eq!(after.len(), before.len(), "{variant}");
            for (a, b) in before.iter().zip(&after) {
                assert_eq!(a, b, "{variant}");
            }
            let same: uuid::Uuid = s
                .connection()
                .query_row("SELECT id FROM recording ORDER BY rowid LIMIT 1", [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(
                same.to_string(),
                text_id,
                "ids already sent name the same rows"
            );
            let fk: i64 = s
                .connection()
                .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(fk, 0);
            assert_eq!(s.integrity_check().unwrap(), "ok");
        }
    }

    /// A conversion that cannot finish (the card full, here SQLite's page limit) leaves the
    /// file as it was, says so with its layout, and is done at the next open.
    #[test]
    fn a_failed_conversion_leaves_the_database_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (root, before) = archive(dir.path());
        as_roost_v6(&root).unwrap();
        let db = root.join(crate::storage::DB_FILE);
        let mut conn = Connection::open(&db).unwrap();
        let v6 = snapshot_v6(&conn);
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "max_page_count", pages + 2)
            .unwrap();
        let e = migrate(&mut conn).unwrap_err();
        assert!(
            matches!(e, MigrateError::Failed { costly: true, .. }),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("from roost's version 6 to 7 (nothing was changed)"),
            "{e}"
        );
        assert_eq!(layout(&conn).unwrap(), Layout::Roost(6));
        assert_eq!(snapshot_v6(&conn), v6);
        let fk: bool = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert!(fk, "foreign keys on again");
        drop(conn);
        let s = Storage::open(&root, &Default::default()).unwrap();
        assert_eq!(snapshot(s.connection()), before);
    }

    fn snapshot_v6(conn: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        for table in CONVERTED {
            let sql = format!("SELECT * FROM {table} ORDER BY rowid");
            out.extend(crate::archive::rows_as_text(conn, &sql).unwrap());
        }
        out
    }

    /// Making the tables of a new database (or adopting acoupi's) costs nothing: a failure
    /// there (a storage removed while the file was being made, a full card) is tried again at
    /// the next turn, not after the conversion's minutes of back-off.
    #[test]
    fn a_failed_step_on_a_new_database_is_not_held_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::storage::DB_FILE);
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "max_page_count", 1).unwrap();
        let e = migrate(&mut conn).unwrap_err();
        assert!(
            matches!(e, MigrateError::Failed { costly: false, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("from an empty database"), "{e}");
        let storage_error = crate::storage::StorageError::Layout { path, source: e };
        assert!(!storage_error.is_failed_conversion());
    }

    /// A failed conversion is tried again after 1, 2, 4 ... minutes, at most an hour apart;
    /// a success starts over.
    #[test]
    fn a_failed_conversion_waits_longer_each_time() {
        let t0 = std::time::Instant::now();
        let min = |m: u64| std::time::Duration::from_secs(60 * m);
        let mut r = Retry::default();
        assert!(r.due(t0));
        r.outcome(true, t0);
        assert!(!r.due(t0 + min(1) - std::time::Duration::from_millis(1)));
        assert!(r.due(t0 + min(1)));
        let mut at = t0;
        let mut waits = Vec::new();
        for _ in 0..9 {
            r.outcome(true, at);
            let next = r.next.unwrap();
            waits.push((next - at).as_secs() / 60);
            at = next;
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60, 60]);
        r.outcome(false, at);
        assert!(r.due(at));
        r.outcome(true, at);
        assert_eq!(r.next.unwrap() - at, min(1));
    }

    /// What an older roost or another program left that acoupi's layout cannot hold as it
    /// was: ids that are not roost's UUID text, recordings without a deployment or in the same
    /// microsecond, a JSON location of no box or of a click; every row arrives.
    #[test]
    fn odd_rows_of_an_older_roost_all_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("metadata.db");
        let mut conn = Connection::open(&db).unwrap();
        create_roost_v6(&mut conn).unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF;
             INSERT INTO deployment VALUES ('d1', 'a', '2026-01-01 00:00:00.000000', NULL, NULL, NULL);
             INSERT INTO deployment VALUES ('D1', 'b', '2026-01-01 00:00:00.000000', NULL, NULL, NULL);
             INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id) VALUES
                ('0a1b2c3d-0000-4000-8000-000000000001', '/r/1.wav', '2026-01-01 00:01:00.000000', 60, 8000, 1, 'd1'),
                ('0A1B2C3D-0000-4000-8000-000000000001', '/r/2.wav', '2026-01-01 00:01:00.000000', 60, 8000, 1, 'D1'),
                ('r3', '/r/3.wav', '2026-01-01 00:01:00.000000', 60, 8000, 1, NULL),
                ('r4', '/r/4.wav', 'not a time', 60, 8000, 1, 'gone'),
                ('r5', NULL, 'not a time', 60, 8000, 1, 'd1');
             INSERT INTO model_output VALUES ('m1', 'x', 'r3', '2026-01-01 00:02:00.5');
             INSERT INTO detection VALUES ('e1', '[0.5, 1000, 0.5, 3000]', 0.9, 'm1');
             INSERT INTO detection VALUES ('e2', 'not json', 0.8, 'm1');
             INSERT INTO detection VALUES ('e3', '{\"coordinates\": [1, 2000, 3, 2000]}', 0.7, 'm1');
             INSERT INTO predicted_tag (key, value, confidence_score, detection_id, model_output_id) VALUES
                ('species', 'x', 0.9, 'e1', NULL), ('weather', 'rain', 1.5, NULL, 'm1'), ('lost', 'y', 0.1, NULL, NULL);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let all = |sql: &str| crate::archive::rows_as_text(&conn, sql).unwrap();
        assert_eq!(
            all("SELECT name, started_on FROM deployment ORDER BY rowid"),
            [
                "Text(\"a\")|Text(\"2026-01-01T00:00:00+00:00\")",
                "Text(\"b\")|Text(\"2026-01-01T00:00:00.000001+00:00\")",
                "Text(\"recovered\")|Text(\"2026-01-01T00:01:00+00:00\")",
            ]
        );
        assert_eq!(
            all(
                "SELECT r.path, r.datetime, d.name FROM recording r JOIN deployment d ON d.id = r.deployment_id ORDER BY r.rowid"
            ),
            [
                "Text(\"/r/1.wav\")|Text(\"2026-01-01T00:01:00+00:00\")|Text(\"a\")",
                "Text(\"/r/2.wav\")|Text(\"2026-01-01T00:01:00.000001+00:00\")|Text(\"b\")",
                "Text(\"/r/3.wav\")|Text(\"2026-01-01T00:01:00.000002+00:00\")|Text(\"recovered\")",
                "Text(\"/r/4.wav\")|Text(\"not a time\")|Text(\"recovered\")",
                "Null|Text(\"not a time #1\")|Text(\"a\")",
            ]
        );
        let first: uuid::Uuid = conn
            .query_row(
                "SELECT id FROM recording WHERE path = '/r/1.wav'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(first.to_string(), "0a1b2c3d-0000-4000-8000-000000000001");
        assert_eq!(
            all(
                "SELECT prediction_type, start_time_s, low_freq_hz, end_time_s, high_freq_hz, detection_score FROM detection ORDER BY rowid"
            ),
            [
                "Text(\"event\")|Real(0.5)|Real(1000.0)|Null|Real(3000.0)|Real(0.9)",
                "Text(\"event\")|Null|Null|Null|Null|Real(0.8)",
                "Text(\"event\")|Real(1.0)|Real(2000.0)|Real(3.0)|Null|Real(0.7)",
                "Text(\"presence\")|Null|Null|Null|Null|Real(1.0)",
            ]
        );
        assert_eq!(
            all(
                "SELECT t.key, d.prediction_type FROM predicted_tag t JOIN detection d ON d.id = t.detection_id ORDER BY t.id"
            ),
            [
                "Text(\"species\")|Text(\"event\")",
                "Text(\"weather\")|Text(\"presence\")"
            ]
        );
        assert_eq!(
            all("SELECT created_on FROM model_output"),
            ["Text(\"2026-01-01T00:02:00.500000+00:00\")"]
        );
    }
}
