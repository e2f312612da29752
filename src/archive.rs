//! A synthetic archive: a storage as months alone leave it (one short WAV a minute with its
//! row in metadata.db, analysed by one detector, decided, some with detections), built fast,
//! for the benchmarks and tests of costs that must not grow with the archive
//! (`benches/archive.rs`, the curator's tests). Never used by roost's own commands.

use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use rusqlite::params;

use crate::curate::config::CurateConfig;
use crate::spec::StorageSpec;
use crate::storage::{Storage, StorageError, db_datetime, new_uuid, recording_path};

/// What [`build`] makes.
#[derive(Clone, Debug)]
pub struct ArchiveShape {
    /// Recordings, one a minute, the newest ending now.
    pub recordings: u64,
    /// The deployment they belong to (its row stays open).
    pub deployment: String,
    /// The detector that analysed every one of them.
    pub detector: String,
    /// One recording in this many has a detection (two tags); 0: none.
    pub detection_every: u64,
    /// Frames of 8000 Hz mono 16-bit audio in each file (400: 0.05 s, 844 bytes).
    pub frames: u32,
    /// Whether keep rules decided on them (`false`: a device whose keep rules are new).
    pub decided: bool,
}

impl Default for ArchiveShape {
    fn default() -> Self {
        Self {
            recordings: 10_000,
            deployment: "archive".into(),
            detector: "band".into(),
            detection_every: 10,
            frames: 400,
            decided: true,
        }
    }
}

/// Sample rate of the archive's files, Hz.
pub const SAMPLERATE_HZ: u32 = 8000;

/// Builds `shape` in the storage folder `root` (made if missing), as the recorder and a
/// curator that kept everything would have left it; the device clock (`roost_clock`) says the
/// newest recording was made just now; sizes and skews are stamped as the curator stamps them.
/// Returns the files, oldest first.
///
/// # Errors
/// The storage or metadata.db cannot be made or written.
pub fn build(
    root: &Path,
    shape: &ArchiveShape,
    now: Timestamp,
) -> Result<Vec<PathBuf>, BuildError> {
    let spec: StorageSpec = serde_json::from_value(serde_json::json!({"path": root}))
        .map_err(|e| BuildError::Other(e.to_string()))?;
    let mut storage = Storage::open(root, &spec)?;
    let deployment = storage.start_deployment(&shape.deployment, None, now)?;
    let files = write_files(&storage.recordings_dir(), shape, now)?;
    insert_rows(&mut storage, &deployment, shape, &files, now)?;
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// Why an archive could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The storage could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// metadata.db could not be written.
    #[error("metadata.db: {0}")]
    Db(#[from] rusqlite::Error),
    /// A file could not be written.
    #[error("a recording: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A WAV file of `frames` frames of quiet noise, 8000 Hz mono 16-bit.
pub fn wav_bytes(frames: u32) -> Vec<u8> {
    let data = frames * 2;
    let mut out = Vec::with_capacity(44 + data as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&SAMPLERATE_HZ.to_le_bytes());
    out.extend_from_slice(&(SAMPLERATE_HZ * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    out.extend((0..frames).flat_map(|i| (((i * 7919) % 64) as i16 - 32).to_le_bytes()));
    out
}

/// The start of recording `i` of `n` (one a minute, the last one ending at `now`).
fn start_of(i: u64, n: u64, now: Timestamp) -> Timestamp {
    now - SignedDuration::from_mins((n - i) as i64)
}

fn write_files(
    dir: &Path,
    shape: &ArchiveShape,
    now: Timestamp,
) -> Result<Vec<(PathBuf, Timestamp)>, BuildError> {
    let bytes = wav_bytes(shape.frames);
    let mut out = Vec::with_capacity(shape.recordings as usize);
    for i in 0..shape.recordings {
        let start = start_of(i, shape.recordings, now);
        let path = recording_path(dir, start);
        if let Some(parent) = path.parent()
            && !parent.is_dir()
        {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::File::create(&path)?.write_all(&bytes)?;
        out.push((path, start));
    }
    Ok(out)
}

fn insert_rows(
    storage: &mut Storage,
    deployment: &uuid::Uuid,
    shape: &ArchiveShape,
    files: &[(PathBuf, Timestamp)],
    now: Timestamp,
) -> Result<(), BuildError> {
    let duration_s = f64::from(shape.frames) / f64::from(SAMPLERATE_HZ);
    let conn = storage.connection_mut();
    let tx = conn.transaction()?;
    let n = files.len() as u64;
    for (i, (path, start)) in files.iter().enumerate() {
        let id = new_uuid();
        tx.prepare_cached(
            "INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id)
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)",
        )?
        .execute(params![id, path.to_string_lossy(), db_datetime(*start), duration_s, SAMPLERATE_HZ, deployment])?;
        // Made on the device clock as many seconds before now as its wall time says.
        let made = -((n - i as u64) as f64) * 60.0;
        let bytes = crate::storage::disk_bytes(path) as i64;
        tx.prepare_cached(
            "INSERT INTO roost_age (recording_id, made_device_s, bytes, skew_s) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![id, made, bytes, crate::curate::db::skew(*start, made)])?;
        let when = db_datetime(*start + SignedDuration::from_secs(70));
        tx.prepare_cached(
            "INSERT INTO roost_analysis (recording_id, detector, outcome, attempts, finished_on)
             VALUES (?1, ?2, 'done', 1, ?3)",
        )?
        .execute(params![id, shape.detector, when])?;
        insert_output(&tx, &id, shape, i as u64, &when)?;
        if shape.decided {
            tx.prepare_cached(
                "INSERT INTO roost_keep (recording_id, kept_by, decided_on) VALUES (?1, 'none', ?2)",
            )?
            .execute(params![id, when])?;
        }
    }
    tx.execute(
        "INSERT OR IGNORE INTO roost_detector (name, since, since_rowid) VALUES (?1, ?2, 0)",
        params![shape.detector, db_datetime(start_of(0, n.max(1), now))],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO roost_clock (id, boot_id, boottime_s, device_s, wall, wall_synced)
         VALUES (1, 'archive', 0, 0, ?1, 1)",
        [db_datetime(now)],
    )?;
    tx.commit()?;
    Ok(())
}

/// The model output of recording `i`, with a detection and two tags on every
/// `detection_every`-th.
fn insert_output(
    tx: &rusqlite::Transaction<'_>,
    recording: &uuid::Uuid,
    shape: &ArchiveShape,
    i: u64,
    when: &str,
) -> rusqlite::Result<()> {
    let output = new_uuid();
    tx.prepare_cached(
        "INSERT INTO model_output (id, model_name, recording_id, created_on) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![output, shape.detector, recording, when])?;
    if shape.detection_every == 0 || !i.is_multiple_of(shape.detection_every) {
        return Ok(());
    }
    let detection = new_uuid();
    tx.prepare_cached(
        "INSERT INTO detection (id, prediction_type, start_time_s, low_freq_hz, end_time_s,
             high_freq_hz, detection_score, model_output_id)
         VALUES (?1, 'event', 0.01, 2000.0, 0.04, 3000.0, 0.8, ?2)",
    )?
    .execute(params![detection, output])?;
    for (key, value) in [("band", "2-3 kHz"), ("species", "Turdus merula")] {
        tx.prepare_cached(
            "INSERT INTO predicted_tag (key, value, confidence_score, detection_id) VALUES (?1, ?2, 0.8, ?3)",
        )?
        .execute(params![key, value, detection])?;
    }
    // A file-level tag too: a `presence` detection without a box, as the curator stores one.
    let clip = new_uuid();
    tx.prepare_cached(
        "INSERT INTO detection (id, prediction_type, detection_score, model_output_id)
         VALUES (?1, 'presence', 0.6, ?2)",
    )?
    .execute(params![clip, output])?;
    tx.prepare_cached(
        "INSERT INTO predicted_tag (key, value, confidence_score, detection_id)
         VALUES ('weather', 'calm', 0.6, ?1)",
    )?
    .execute(params![clip])?;
    Ok(())
}

/// Writes one recording of the archive's kind (400 frames) that starts at `start` into
/// `storage` and registers it under `deployment`, as the recorder would; returns its file.
///
/// # Errors
/// The file cannot be written or its row registered.
pub fn arrive(
    storage: &mut Storage,
    deployment: &uuid::Uuid,
    start: Timestamp,
) -> Result<PathBuf, BuildError> {
    let frames = 400;
    let path = recording_path(&storage.recordings_dir(), start);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, wav_bytes(frames))?;
    let rec = crate::storage::NewRecording {
        path: path.clone(),
        datetime: start,
        duration_s: f64::from(frames) / f64::from(SAMPLERATE_HZ),
        samplerate_hz: SAMPLERATE_HZ,
        audio_channels: 1,
    };
    storage.register(&rec, deployment)?;
    Ok(path)
}

/// Every row `sql` gives, each as its values' debug text joined by `|` (blobs as bytes): for
/// comparing a database before and after a change, in the tests.
///
/// # Errors
/// The query fails.
pub fn rows_as_text(conn: &rusqlite::Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(sql)?;
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                r.get::<_, rusqlite::types::Value>(i)
                    .map(|v| format!("{v:?}"))
            })
            .collect::<rusqlite::Result<Vec<_>>>()
            .map(|v| v.join("|"))
    })?
    .collect()
}

/// Rewrites the metadata.db of the storage at `root` in the layout of roost before acoupi's
/// (version 6: ids as text, times as `YYYY-MM-DD HH:MM:SS.ffffff`, a JSON `location`, file-level
/// tags on `predicted_tag.model_output_id`), row for row and rowid for rowid, as an older
/// roost would have left the same archive: for the tests and the benchmark of the conversion
/// (`benches/archive.rs --v6`). The storage must not be open.
///
/// # Errors
/// metadata.db cannot be read, or the new file written.
pub fn as_roost_v6(root: &Path) -> Result<(), BuildError> {
    let db = root.join(crate::storage::DB_FILE);
    let old = root.join("metadata.v6.db");
    let _ = std::fs::remove_file(&old);
    let mut conn = rusqlite::Connection::open(&old)?;
    crate::storage::schema::create_roost_v6(&mut conn)?;
    let flags = rusqlite::functions::FunctionFlags::SQLITE_UTF8
        | rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("v6_id", 1, flags, |ctx| {
        Ok(ctx.get::<Option<uuid::Uuid>>(0)?.map(|u| u.to_string()))
    })?;
    conn.create_scalar_function("v6_time", 1, flags, |ctx| {
        let text: Option<String> = ctx.get(0)?;
        Ok(text.map(|t| match crate::storage::parse_db_datetime(&t) {
            Some(ts) => ts.strftime("%Y-%m-%d %H:%M:%S.%6f").to_string(),
            None => t,
        }))
    })?;
    conn.execute("ATTACH DATABASE ?1 AS v7", [db.to_string_lossy()])?;
    conn.execute_batch(V6_COPY)?;
    conn.execute_batch("DETACH DATABASE v7")?;
    drop(conn);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(root.join(format!("{}{suffix}", crate::storage::DB_FILE)));
    }
    std::fs::rename(&old, &db)?;
    Ok(())
}

/// The rows of `v7` (attached) in version 6's tables (see [`as_roost_v6`]); the figures are
/// copied after the rows, whose triggers counted them once more.
const V6_COPY: &str = "
    BEGIN;
    INSERT INTO deployment SELECT v6_id(id), name, v6_time(started_on), v6_time(ended_on),
        latitude, longitude FROM v7.deployment;
    INSERT INTO recording (rowid, id, path, datetime, duration_s, samplerate_hz, audio_channels,
            deployment_id, protected, deleted_on, deleted_by)
        SELECT rowid, v6_id(id), path, v6_time(datetime), duration_s, samplerate_hz,
            audio_channels, v6_id(deployment_id), protected, v6_time(deleted_on), deleted_by
        FROM v7.recording;
    INSERT INTO model_output (rowid, id, model_name, recording_id, created_on)
        SELECT rowid, v6_id(id), model_name, v6_id(recording_id), v6_time(created_on)
        FROM v7.model_output;
    INSERT INTO detection (rowid, id, location, detection_score, model_output_id)
        SELECT rowid, v6_id(id), json_object('type', 'BoundingBox', 'coordinates',
                json_array(start_time_s, low_freq_hz, coalesce(end_time_s, start_time_s),
                    coalesce(high_freq_hz, low_freq_hz))),
            detection_score, v6_id(model_output_id)
        FROM v7.detection WHERE start_time_s IS NOT NULL;
    INSERT INTO predicted_tag (id, key, value, confidence_score, detection_id, model_output_id)
        SELECT t.id, t.key, t.value, t.confidence_score,
            CASE WHEN d.start_time_s IS NULL THEN NULL ELSE v6_id(t.detection_id) END,
            CASE WHEN d.start_time_s IS NULL THEN v6_id(d.model_output_id) END
        FROM v7.predicted_tag t JOIN v7.detection d ON d.id = t.detection_id;
    INSERT INTO roost_analysis (rowid, recording_id, detector, outcome, attempts, error_code,
            error, finished_on)
        SELECT rowid, v6_id(recording_id), detector, outcome, attempts, error_code, error,
            v6_time(finished_on) FROM v7.roost_analysis;
    INSERT INTO roost_keep (rowid, recording_id, kept_by, decided_on)
        SELECT rowid, v6_id(recording_id), kept_by, v6_time(decided_on) FROM v7.roost_keep;
    INSERT INTO roost_age (rowid, recording_id, made_device_s, bytes, skew_s)
        SELECT rowid, v6_id(recording_id), made_device_s, bytes, skew_s FROM v7.roost_age;
    INSERT INTO roost_detector (name, since, since_rowid)
        SELECT name, v6_time(since), since_rowid FROM v7.roost_detector;
    INSERT INTO roost_clock SELECT id, boot_id, boottime_s, device_s, v6_time(wall), wall_synced
        FROM v7.roost_clock;
    INSERT INTO roost_unlink SELECT path FROM v7.roost_unlink;
    DELETE FROM roost_tally; INSERT INTO roost_tally SELECT * FROM v7.roost_tally;
    DELETE FROM roost_deleted; INSERT INTO roost_deleted SELECT * FROM v7.roost_deleted;
    DELETE FROM roost_outcomes; INSERT INTO roost_outcomes SELECT * FROM v7.roost_outcomes;
    COMMIT;";

/// The curator's configuration the benchmarks and tests run on an archive built in
/// `dir/storage`: the archive's detector (`band`, bandEnergy), the keep rules `keep` (a YAML
/// flow list, e.g. `[{every: 10m}]`), `maxAge: 365d` and `maxUsage: max_usage` (e.g. `100GiB`).
///
/// # Errors
/// The deployment these make is refused (a keep rule or size that does not parse).
pub fn curate_config(dir: &Path, keep: &str, max_usage: &str) -> Result<CurateConfig, BuildError> {
    let yaml = format!(
        "apiVersion: roost/v1
kind: Deployment
metadata: {{name: archive}}
spec:
  recorder: {{sampleRate: 8000, duration: 60s, timezone: UTC}}
  detectors:
    - {{name: band, kind: bandEnergy, lowHz: 1000, highHz: 3000, thresholdDb: 12, minDuration: 10ms}}
  storage: {{path: {}, keep: {keep}, maxAge: 365d, maxUsage: {max_usage}}}
",
        serde_json::to_string(&dir.join("storage")).map_err(|e| BuildError::Other(e.to_string()))?
    );
    let d = crate::spec::parse_str(Path::new("archive.yaml"), &yaml)
        .map_err(|e| BuildError::Other(e.to_string()))?;
    CurateConfig::from_deployment(&d, dir)
        .ok_or_else(|| BuildError::Other("the deployment has no curator".into()))
}
