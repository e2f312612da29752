//! The durable outbox (`<state-dir>/outbox.db`, SQLite): every message is written in a
//! committed transaction (synchronous FULL) before it counts as queued, delivered in order per
//! sink, and deleted only when the sink acknowledged it (MQTT PUBACK, HTTP 2xx). Bounded by
//! bytes and age: the oldest go first, and are counted. Survives restarts, kill -9 and power
//! cuts; a file that is not a database is set aside and replaced. It never sends anything, and
//! no cost of it grows with the backlog but the backlog's bytes: depth and bytes are kept by
//! triggers, messages are read in batches, and the space of delivered ones is given back.

use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sink {
    /// The MQTT broker.
    Mqtt,
    /// The HTTP endpoint.
    Http,
}

impl Sink {
    fn as_str(self) -> &'static str {
        match self {
            Sink::Mqtt => "mqtt",
            Sink::Http => "http",
        }
    }
}

/// A message to queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Its sink.
    pub sink: Sink,
    /// MQTT topic (for HTTP: what it is, e.g. `status`).
    pub topic: String,
    /// The bytes sent (JSON, carrying the message id).
    pub payload: Vec<u8>,
    /// MQTT retain flag.
    pub retain: bool,
    /// The recording (metadata.db `recording.id`) the message tells about: the curator never
    /// deletes a recording while a message about it waits here.
    pub recording: Option<String>,
}

/// A queued message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Position in the outbox: increasing, never reused while the file lives.
    pub seq: i64,
    /// Its sink.
    pub sink: Sink,
    /// MQTT topic (for HTTP: what it is).
    pub topic: String,
    /// The bytes sent.
    pub payload: Vec<u8>,
    /// MQTT retain flag.
    pub retain: bool,
    /// When it was queued.
    pub created_at: Timestamp,
}

/// What the outbox holds, for the report and the heartbeat.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", default)]
pub struct OutboxStats {
    /// Messages waiting (all sinks).
    pub depth: u64,
    /// Their bytes.
    pub bytes: u64,
    /// When the oldest waiting message was queued.
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub oldest_at: Option<Timestamp>,
    /// Messages dropped to keep within maxBytes and maxAge since the outbox was created.
    pub dropped: u64,
    /// When a sink last acknowledged a message.
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub last_delivered_at: Option<Timestamp>,
}

/// Bounds of the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes kept (payload and topic).
    pub max_bytes: u64,
    /// Oldest message kept.
    pub max_age: SignedDuration,
}

/// Why the outbox cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// An SQLite operation failed.
    #[error("outbox {path}: cannot {action}")]
    Database {
        /// The outbox file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
}

/// A maker of errors about the outbox at `path`, one per action.
fn db_err(
    path: PathBuf,
) -> impl Fn(&'static str) -> Box<dyn FnOnce(rusqlite::Error) -> OutboxError> {
    move |action| {
        let path = path.clone();
        Box::new(move |source| OutboxError::Database {
            path,
            action,
            source,
        })
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS message (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS message_sink ON message (sink, seq);
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sent (name TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// Added for issue 22: the age limit and the oldest message found through an index, and depth
/// and bytes kept by triggers (each was a scan of the whole outbox at every queueing and
/// report), counted once from what is there.
const TOTALS: &str = "
BEGIN IMMEDIATE;
CREATE INDEX IF NOT EXISTS message_created ON message (created_at);
CREATE TABLE IF NOT EXISTS total (id INTEGER PRIMARY KEY CHECK (id = 1), depth INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT OR REPLACE INTO total SELECT 1, count(*), coalesce(sum(bytes), 0) FROM message;
CREATE TRIGGER IF NOT EXISTS message_in AFTER INSERT ON message
    BEGIN UPDATE total SET depth = depth + 1, bytes = bytes + NEW.bytes; END;
CREATE TRIGGER IF NOT EXISTS message_out AFTER DELETE ON message
    BEGIN UPDATE total SET depth = depth - 1, bytes = bytes - OLD.bytes; END;
COMMIT;
";

fn has_totals(conn: &Connection) -> bool {
    conn.prepare("SELECT depth FROM total LIMIT 0").is_ok()
}

/// Free pages given back per step (4 MiB): each step is a short transaction of its own.
const SHRINK_STEP_PAGES: i64 = 1024;
/// Free pages below which the file is left as it is (1 MiB; SQLite reuses them first).
const SHRINK_MIN_FREE_PAGES: i64 = 256;

/// Added after the first release: the recording a message is about (NULL for the others), in
/// one transaction with its index.
const RECORDING_COLUMN: &str = "
BEGIN IMMEDIATE;
ALTER TABLE message ADD COLUMN recording_id TEXT;
CREATE INDEX IF NOT EXISTS message_recording ON message (recording_id);
COMMIT;
";

fn has_recording_column(conn: &Connection) -> bool {
    conn.prepare("SELECT recording_id FROM message LIMIT 0")
        .is_ok()
}

/// The outbox's file name in the state folder.
pub const OUTBOX_FILE: &str = "outbox.db";

/// The counter holding the rowid of the last `model_output` queued.
pub const MODEL_OUTPUT_CURSOR: &str = "model_output_rowid";

/// What the outbox still owes about recordings, read without disturbing the connector.
#[derive(Debug, Default)]
pub struct Owed {
    /// The last `model_output` rowid queued (later ones are not queued yet).
    pub queued_until: i64,
    /// Recordings with a message still waiting for delivery.
    pub recordings: std::collections::HashSet<String>,
}

/// Reads [`Owed`] from the outbox at `path`, read-only; `None` when there is no outbox yet (the
/// connector has not run) or it cannot be read now (locked, damaged). An outbox of an older
/// roost, without the recording column, gives its cursor and no recordings.
pub fn owed(path: &Path) -> Option<Owed> {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).ok()?;
    conn.busy_timeout(std::time::Duration::from_secs(2)).ok()?;
    let queued_until = conn
        .query_row(
            "SELECT value FROM counter WHERE name = ?1",
            [MODEL_OUTPUT_CURSOR],
            |r| r.get(0),
        )
        .unwrap_or(0);
    let recordings = match conn
        .prepare("SELECT DISTINCT recording_id FROM message WHERE recording_id IS NOT NULL")
    {
        Ok(mut stmt) => stmt
            .query_map([], |r| r.get::<_, String>(0))
            .ok()?
            .flatten()
            .collect(),
        // No such column: written by an older connector, which never said.
        Err(_) if !has_recording_column(&conn) => Default::default(),
        Err(_) => return None,
    };
    Some(Owed {
        queued_until,
        recordings,
    })
}

/// The outbox file and its connection.
pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    limits: Limits,
    /// Messages read since opening: what start-up and sending hold is bounded by batches.
    loaded: std::cell::Cell<u64>,
}

impl Outbox {
    /// Opens (or creates) the outbox at `path`. A file that is not a usable database is moved
    /// aside as `<path>.bad-<UTC>` and replaced; its path is returned with the outbox.
    pub fn open(path: &Path, limits: Limits) -> Result<(Self, Option<PathBuf>), OutboxError> {
        match Self::open_existing(path, limits) {
            Ok(outbox) => Ok((outbox, None)),
            Err(e) => {
                let aside = PathBuf::from(format!(
                    "{}.bad-{}",
                    path.display(),
                    Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
                ));
                tracing::warn!(error = %crate::errors::chain(&e), aside = %aside.display(), "the outbox cannot be read; setting it aside");
                let _ = std::fs::rename(path, &aside);
                for suffix in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                Ok((Self::open_existing(path, limits)?, Some(aside)))
            }
        }
    }

    fn open_existing(path: &Path, limits: Limits) -> Result<Self, OutboxError> {
        let err = |action| {
            let path = path.to_path_buf();
            move |source| OutboxError::Database {
                path,
                action,
                source,
            }
        };
        let conn = Connection::open(path).map_err(err("open it"))?;
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(err("set its busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err("switch it to WAL"))?;
        // Queued means on the card: a message is never reported queued and then lost.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err("set synchronous"))?;
        // Before the first table, or it cannot be set without a VACUUM: a new outbox gives
        // back the space of delivered messages step by step ([`Outbox::shrink`]).
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(err("set auto_vacuum"))?;
        // The write-ahead log is cut back after a checkpoint, not left at its largest.
        conn.pragma_update(None, "journal_size_limit", 1 << 20)
            .map_err(err("limit its journal"))?;
        conn.execute_batch(SCHEMA)
            .map_err(err("create its tables"))?;
        if !has_recording_column(&conn) {
            conn.execute_batch(RECORDING_COLUMN).map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                err("add the recording column")(e)
            })?;
        }
        if !has_totals(&conn) {
            conn.execute_batch(TOTALS).map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                err("add its totals")(e)
            })?;
        }
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(err("check it"))?;
        if check != "ok" {
            return Err(OutboxError::Database {
                path: path.to_path_buf(),
                action: "use it (quick_check failed)",
                source: rusqlite::Error::InvalidQuery,
            });
        }
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            limits,
            loaded: Default::default(),
        })
    }

    fn err(&self, action: &'static str) -> impl FnOnce(rusqlite::Error) -> OutboxError + '_ {
        move |source| OutboxError::Database {
            path: self.path.clone(),
            action,
            source,
        }
    }

    /// Queues `messages` in one transaction, then drops what exceeds the limits (oldest first).
    /// Returns how many were dropped.
    pub fn push(&mut self, messages: &[NewMessage], now: Timestamp) -> Result<u64, OutboxError> {
        self.push_with(messages, Marks::default(), now)
    }

    /// Queues `messages` and sets counter `mark.0` to `mark.1` in the same transaction (a
    /// cursor over another source: what was queued and how far it got commit together).
    pub fn push_marked(
        &mut self,
        messages: &[NewMessage],
        mark: (&str, i64),
        now: Timestamp,
    ) -> Result<u64, OutboxError> {
        let marks = Marks {
            counter: Some(mark),
            ..Marks::default()
        };
        self.push_with(messages, marks, now)
    }

    /// Queues `messages` and remembers `sent` (name -> what was queued for it) in the same
    /// transaction, so that a restart knows what the sinks already have.
    pub fn push_remembering(
        &mut self,
        messages: &[NewMessage],
        sent: &[(String, String)],
        now: Timestamp,
    ) -> Result<u64, OutboxError> {
        let marks = Marks {
            sent,
            ..Marks::default()
        };
        self.push_with(messages, marks, now)
    }

    fn push_with(
        &mut self,
        messages: &[NewMessage],
        marks: Marks<'_>,
        now: Timestamp,
    ) -> Result<u64, OutboxError> {
        let err = db_err(self.path.clone());
        let tx = self.conn.transaction().map_err(err("begin"))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO message (sink, topic, payload, retain, created_at, bytes, recording_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(err("prepare an insert"))?;
            for m in messages {
                let bytes = (m.payload.len() + m.topic.len()) as i64;
                insert
                    .execute(params![
                        m.sink.as_str(),
                        m.topic,
                        m.payload,
                        m.retain,
                        now.to_string(),
                        bytes,
                        m.recording
                    ])
                    .map_err(err("queue a message"))?;
            }
            if let Some((name, value)) = marks.counter {
                tx.execute(
                    "INSERT INTO counter (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = ?2",
                    params![name, value],
                )
                .map_err(err("move a cursor"))?;
            }
            for (name, value) in marks.sent {
                tx.execute(
                    "INSERT INTO sent (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = ?2",
                    params![name, value],
                )
                .map_err(err("remember what was sent"))?;
            }
        }
        tx.commit().map_err(err("commit"))?;
        self.enforce_limits(now)
    }

    /// What was remembered as sent, by name (see [`Outbox::push_remembering`]).
    pub fn sent(&self) -> std::collections::BTreeMap<String, String> {
        let read = || -> rusqlite::Result<std::collections::BTreeMap<String, String>> {
            let mut stmt = self.conn.prepare("SELECT name, value FROM sent")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        };
        read().unwrap_or_default()
    }

    /// Whether counter `name` was ever set.
    pub fn has_counter(&self, name: &str) -> bool {
        self.conn
            .query_row("SELECT 1 FROM counter WHERE name = ?1", [name], |_| Ok(()))
            .optional()
            .ok()
            .flatten()
            .is_some()
    }

    /// The value of counter `name` (0 when never set).
    pub fn counter(&self, name: &str) -> i64 {
        self.conn
            .query_row("SELECT value FROM counter WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .unwrap_or(0)
    }

    /// Drops messages older than maxAge, then the oldest until the rest fit in maxBytes; both
    /// through indexes and the kept totals, never a scan of the whole outbox.
    fn enforce_limits(&mut self, now: Timestamp) -> Result<u64, OutboxError> {
        let cutoff = (now - self.limits.max_age).to_string();
        let mut dropped = self
            .conn
            .execute("DELETE FROM message WHERE created_at < ?1", [cutoff])
            .map_err(self.err("drop old messages"))? as u64;
        let (_, total) = self.totals()?;
        if total > self.limits.max_bytes {
            dropped += self.drop_oldest(total - self.limits.max_bytes)?;
        }
        if dropped > 0 {
            self.add_counter("dropped", dropped as i64)?;
            tracing::warn!(
                dropped,
                "outbox over its limits: dropped the oldest messages"
            );
        }
        Ok(dropped)
    }

    /// Drops the shortest run of oldest messages whose bytes cover `excess`, reading their
    /// sizes in batches.
    fn drop_oldest(&mut self, excess: u64) -> Result<u64, OutboxError> {
        let mut covered = 0u64;
        let mut last = None;
        while covered < excess {
            let batch: Vec<(i64, i64)> = {
                let mut stmt = self
                    .conn
                    .prepare_cached(
                        "SELECT seq, bytes FROM message WHERE seq > ?1 ORDER BY seq LIMIT 256",
                    )
                    .map_err(self.err("prepare a read"))?;
                let rows = stmt
                    .query_map([last.unwrap_or(0)], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(self.err("read sizes"))?;
                rows.collect::<Result<_, _>>()
                    .map_err(self.err("read a size"))?
            };
            if batch.is_empty() {
                break;
            }
            for (seq, bytes) in batch {
                if covered >= excess {
                    break;
                }
                covered += bytes.max(0) as u64;
                last = Some(seq);
            }
        }
        let Some(last) = last else { return Ok(0) };
        self.conn
            .execute("DELETE FROM message WHERE seq <= ?1", [last])
            .map(|n| n as u64)
            .map_err(self.err("drop the oldest messages"))
    }

    /// Depth and bytes, as the triggers keep them.
    fn totals(&self) -> Result<(u64, u64), OutboxError> {
        self.conn
            .query_row("SELECT depth, bytes FROM total WHERE id = 1", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?.max(0) as u64,
                    r.get::<_, i64>(1)?.max(0) as u64,
                ))
            })
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(self.err("read its totals"))
    }

    fn add_counter(&self, name: &str, by: i64) -> Result<(), OutboxError> {
        self.conn
            .execute(
                "INSERT INTO counter (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = value + ?2",
                params![name, by],
            )
            .map_err(self.err("count"))?;
        Ok(())
    }

    /// Drops the messages for `sink` that no longer belong to the configuration: all of them
    /// when `keep` is empty (the sink was removed), else those whose topic starts with none of
    /// `keep` (the device id or prefix changed: a message for the old identity must not reach
    /// a broker as a ghost device). Counted as dropped; returns how many. Done in SQL, loading
    /// nothing, and only when `keep` differs from the last call's (a restart with the same
    /// configuration does not read the backlog at all).
    pub fn drop_foreign(&mut self, sink: Sink, keep: &[String]) -> Result<u64, OutboxError> {
        let identity = format!("identity_{}", sink.as_str());
        let wanted = keep.join("\n");
        if self.sent().get(&identity) == Some(&wanted) {
            return Ok(0);
        }
        let matches: Vec<String> = (0..keep.len())
            .map(|i| format!("substr(topic, 1, length(?{0})) = ?{0}", i + 2))
            .collect();
        let sql = match matches.is_empty() {
            true => "DELETE FROM message WHERE sink = ?1".to_string(),
            false => format!(
                "DELETE FROM message WHERE sink = ?1 AND NOT ({})",
                matches.join(" OR ")
            ),
        };
        let values = std::iter::once(sink.as_str()).chain(keep.iter().map(String::as_str));
        let err = db_err(self.path.clone());
        let tx = self.conn.transaction().map_err(err("begin"))?;
        let dropped = tx
            .execute(&sql, rusqlite::params_from_iter(values))
            .map_err(err("drop messages of an old configuration"))?;
        tx.execute(
            "INSERT INTO counter (name, value) VALUES ('dropped', ?1) ON CONFLICT(name) DO UPDATE SET value = value + ?1",
            [dropped as i64],
        )
        .map_err(err("count"))?;
        tx.execute(
            "INSERT INTO sent (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = ?2",
            params![identity, wanted],
        )
        .map_err(err("remember the configuration"))?;
        tx.commit().map_err(err("commit"))?;
        Ok(dropped as u64)
    }

    /// Up to `limit` messages for `sink` after position `after`, oldest first.
    pub fn next(&self, sink: Sink, after: i64, limit: usize) -> Result<Vec<Message>, OutboxError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, topic, payload, retain, created_at FROM message WHERE sink = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(self.err("prepare a read"))?;
        let rows = stmt
            .query_map(params![sink.as_str(), after, limit as i64], |r| {
                let created: String = r.get(4)?;
                Ok(Message {
                    seq: r.get(0)?,
                    sink,
                    topic: r.get(1)?,
                    // Text or blob: a row another tool wrote must not block the queue.
                    payload: match r.get_ref(2)? {
                        rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => {
                            b.to_vec()
                        }
                        _ => Vec::new(),
                    },
                    retain: r.get(3)?,
                    created_at: created.parse().unwrap_or(Timestamp::UNIX_EPOCH),
                })
            })
            .map_err(self.err("read messages"))?;
        let rows: Vec<Message> = rows
            .collect::<Result<_, _>>()
            .map_err(self.err("read a message"))?;
        self.loaded.set(self.loaded.get() + rows.len() as u64);
        Ok(rows)
    }

    /// How many messages were ever queued (the sequence's last value).
    pub fn counter_of_messages(&self) -> u64 {
        self.conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'message'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_or(0, |n| n.max(0) as u64)
    }

    /// Messages read from the file since it was opened.
    pub fn loaded(&self) -> u64 {
        self.loaded.get()
    }

    /// Deletes the acknowledged messages `seqs` and notes the delivery time.
    pub fn ack(&mut self, seqs: &[i64], now: Timestamp) -> Result<(), OutboxError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let err = db_err(self.path.clone());
        // A delivery lost to a power cut costs a duplicate (at least once), not a message: no
        // fsync for it; the next queueing (FULL) makes it durable along with itself.
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(err("relax synchronous"))?;
        let tx = self.conn.transaction().map_err(err("begin"))?;
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM message WHERE seq = ?1")
                .map_err(err("prepare a delete"))?;
            for seq in seqs {
                delete.execute([seq]).map_err(err("delete a message"))?;
            }
            tx.execute(
                "INSERT INTO counter (name, value) VALUES ('last_delivered_ms', ?1) ON CONFLICT(name) DO UPDATE SET value = ?1",
                [now.as_millisecond()],
            )
            .map_err(err("note the delivery"))?;
        }
        tx.commit().map_err(err("commit"))?;
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(err("restore synchronous"))
    }

    /// Depth, bytes, oldest message, drops and last delivery: each read through an index or
    /// the kept totals.
    pub fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let (depth, bytes) = self.totals()?;
        let oldest: Option<String> = self
            .conn
            .query_row("SELECT min(created_at) FROM message", [], |r| r.get(0))
            .map_err(self.err("measure it"))?;
        let counter = |name: &str| -> Result<Option<i64>, OutboxError> {
            self.conn
                .query_row("SELECT value FROM counter WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(self.err("read a counter"))
        };
        Ok(OutboxStats {
            depth,
            bytes,
            oldest_at: oldest.and_then(|t| t.parse().ok()),
            dropped: counter("dropped")?.unwrap_or(0) as u64,
            last_delivered_at: counter("last_delivered_ms")?
                .and_then(|ms| Timestamp::from_millisecond(ms).ok()),
        })
    }

    /// Gives back the space of delivered messages once at least a quarter of the file is free:
    /// [`SHRINK_STEP_PAGES`] at a time, each step a short transaction of its own (one step a
    /// call while messages wait), then the write-ahead log is cut back. An outbox made before auto_vacuum was set is rebuilt
    /// (VACUUM) once it is empty, when that costs nothing. Returns the pages given back.
    pub fn shrink(&mut self) -> Result<i64, OutboxError> {
        let pragma = |name: &str| -> Result<i64, OutboxError> {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .map_err(self.err("read its page counts"))
        };
        let (pages, free) = (pragma("page_count")?, pragma("freelist_count")?);
        if free < SHRINK_MIN_FREE_PAGES || free * 4 < pages {
            return Ok(0);
        }
        match pragma("auto_vacuum")? {
            2 => {
                // While messages wait, a step moves some of them into the free pages: one step
                // a call, between deliveries; an empty outbox moves nothing and goes at once.
                let steps = match self.totals()?.0 {
                    0 => free.div_euclid(SHRINK_STEP_PAGES) + 1,
                    _ => 1,
                };
                for _ in 0..steps {
                    self.conn
                        .execute_batch(&format!("PRAGMA incremental_vacuum({SHRINK_STEP_PAGES})"))
                        .map_err(self.err("give back free pages"))?;
                }
            }
            _ if self.totals()?.0 == 0 => self
                .conn
                .execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM")
                .map_err(self.err("rebuild it"))?,
            _ => return Ok(0),
        }
        // Readers (the curator) may hold the log for a moment: then it is cut at a later step.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        Ok(free - pragma("freelist_count")?)
    }
}

/// What is committed with a batch of messages.
#[derive(Default)]
struct Marks<'a> {
    /// A counter set to a value (a cursor).
    counter: Option<(&'a str, i64)>,
    /// Names remembered with what was queued for them.
    sent: &'a [(String, String)],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(sink: Sink, n: usize, size: usize) -> NewMessage {
        NewMessage {
            sink,
            topic: format!("roost/dev/{n}"),
            payload: vec![b'x'; size],
            retain: false,
            recording: None,
        }
    }

    fn limits() -> Limits {
        Limits {
            max_bytes: 1 << 20,
            max_age: SignedDuration::from_hours(24),
        }
    }

    #[test]
    fn messages_come_out_in_order_per_sink_and_go_only_when_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outbox.db");
        let now = Timestamp::now();
        let (mut o, aside) = Outbox::open(&p, limits()).unwrap();
        assert!(aside.is_none());
        let batch: Vec<NewMessage> = (0..5)
            .flat_map(|n| [msg(Sink::Mqtt, n, 10), msg(Sink::Http, n, 10)])
            .collect();
        o.push(&batch, now).unwrap();
        let mqtt = o.next(Sink::Mqtt, 0, 100).unwrap();
        assert_eq!(mqtt.len(), 5);
        assert!(mqtt.windows(2).all(|w| w[0].seq < w[1].seq));
        o.ack(&[mqtt[0].seq, mqtt[1].seq], now).unwrap();
        drop(o);
        // Reopened (a restart): what was not acknowledged is still there, in order.
        let (o, _) = Outbox::open(&p, limits()).unwrap();
        let left = o.next(Sink::Mqtt, 0, 100).unwrap();
        assert_eq!(
            left.iter().map(|m| m.topic.clone()).collect::<Vec<_>>(),
            ["roost/dev/2", "roost/dev/3", "roost/dev/4"]
        );
        let s = o.stats().unwrap();
        assert_eq!((s.depth, s.dropped), (8, 0));
        assert!(s.last_delivered_at.is_some());
    }

    #[test]
    fn the_oldest_go_first_when_the_limits_are_reached_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let small = Limits {
            max_bytes: 10_000,
            max_age: SignedDuration::from_hours(1),
        };
        let (mut o, _) = Outbox::open(&dir.path().join("o.db"), small).unwrap();
        o.push(
            &[msg(Sink::Mqtt, 0, 100)],
            now - SignedDuration::from_hours(2),
        )
        .unwrap();
        let batch: Vec<NewMessage> = (1..=30).map(|n| msg(Sink::Mqtt, n, 990)).collect();
        let dropped = o.push(&batch, now).unwrap();
        let s = o.stats().unwrap();
        assert!(s.bytes <= 10_000, "{s:?}");
        assert_eq!(s.dropped, dropped);
        // The expired one and the oldest of the new ones went; the newest stayed.
        let left = o.next(Sink::Mqtt, 0, 100).unwrap();
        assert_eq!(left.last().unwrap().topic, "roost/dev/30");
        assert_eq!(s.depth + dropped, 31);
    }

    /// A device id changed or a sink removed: the old identity's messages are dropped, counted.
    #[test]
    fn messages_of_an_old_identity_or_a_removed_sink_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, _) = Outbox::open(&dir.path().join("o.db"), limits()).unwrap();
        let mk = |sink, topic: &str| NewMessage {
            sink,
            topic: topic.into(),
            payload: b"{}".to_vec(),
            retain: true,
            recording: None,
        };
        o.push(
            &[
                mk(Sink::Mqtt, "roost/dev3/status"),
                mk(Sink::Mqtt, "roost/dev4/status"),
                mk(Sink::Mqtt, "acoupi/dev4"),
                mk(Sink::Http, "status"),
            ],
            Timestamp::now(),
        )
        .unwrap();
        let keep = ["roost/dev4/".to_string(), "acoupi/dev4".to_string()];
        assert_eq!(o.drop_foreign(Sink::Mqtt, &keep).unwrap(), 1);
        assert_eq!(o.drop_foreign(Sink::Http, &[]).unwrap(), 1);
        let left: Vec<String> = o
            .next(Sink::Mqtt, 0, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.topic)
            .collect();
        assert_eq!(left, ["roost/dev4/status", "acoupi/dev4"]);
        assert_eq!(o.stats().unwrap().dropped, 2);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outbox.db");
        std::fs::write(
            &p,
            b"this is not SQLite, it is a text file someone left here, long enough",
        )
        .unwrap();
        let (mut o, aside) = Outbox::open(&p, limits()).unwrap();
        let aside = aside.expect("set aside");
        assert!(aside.exists());
        o.push(&[msg(Sink::Mqtt, 1, 5)], Timestamp::now()).unwrap();
        assert_eq!(o.stats().unwrap().depth, 1);
    }

    /// Bytes of the outbox file and its write-ahead log.
    fn file_bytes(path: &Path) -> u64 {
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        [path.to_path_buf(), wal]
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum()
    }

    /// Issue 22: 141 MB stayed on the card after 100,000 messages were delivered.
    #[test]
    fn the_file_gives_its_space_back_once_its_messages_are_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outbox.db");
        let big = Limits {
            max_bytes: 64 << 20,
            ..limits()
        };
        drop(Outbox::open(&dir.path().join("empty.db"), big).unwrap());
        let empty = file_bytes(&dir.path().join("empty.db"));
        let (mut o, _) = Outbox::open(&p, big).unwrap();
        let batch: Vec<NewMessage> = (0..20_000).map(|n| msg(Sink::Mqtt, n, 500)).collect();
        o.push(&batch, Timestamp::now()).unwrap();
        assert!(file_bytes(&p) > 10_000_000, "{}", file_bytes(&p));
        loop {
            let next = o.next(Sink::Mqtt, 0, 100).unwrap();
            if next.is_empty() {
                break;
            }
            let seqs: Vec<i64> = next.iter().map(|m| m.seq).collect();
            o.ack(&seqs, Timestamp::now()).unwrap();
            o.shrink().unwrap();
        }
        // An empty outbox is 11 pages of 4 KiB; drained, it is back within twice that.
        assert_eq!(empty, 11 * 4096);
        assert!(
            file_bytes(&p) <= 2 * empty,
            "{} > 2 x {empty}",
            file_bytes(&p)
        );
        assert_eq!(o.stats().unwrap().depth, 0);
    }

    /// An outbox of an older roost (no auto_vacuum) is rebuilt once it is empty.
    #[test]
    fn an_older_outbox_is_rebuilt_small_once_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outbox.db");
        let conn = Connection::open(&p).unwrap();
        conn.execute_batch(&format!("PRAGMA journal_mode = WAL; {SCHEMA}"))
            .unwrap();
        drop(conn);
        let (mut o, _) = Outbox::open(&p, limits()).unwrap();
        let batch: Vec<NewMessage> = (0..2_000).map(|n| msg(Sink::Mqtt, n, 400)).collect();
        o.push(&batch, Timestamp::now()).unwrap();
        let seqs: Vec<i64> = (o.next(Sink::Mqtt, 0, 5_000).unwrap().iter())
            .map(|m| m.seq)
            .collect();
        o.ack(&seqs, Timestamp::now()).unwrap();
        assert!(o.shrink().unwrap() > 0);
        assert!(file_bytes(&p) <= 12 * 4096, "{}", file_bytes(&p));
    }

    /// Issue 22: start-up loaded the whole outbox (82-110 MiB with a month offline).
    #[test]
    fn starting_loads_nothing_and_sending_reads_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outbox.db");
        let (mut o, _) = Outbox::open(&p, limits()).unwrap();
        let batch: Vec<NewMessage> = (0..3_000)
            .map(|n| NewMessage {
                topic: format!("roost/dev/{n}"),
                ..msg(Sink::Mqtt, n, 20)
            })
            .collect();
        o.push(&batch, Timestamp::now()).unwrap();
        drop(o);
        let (mut o, _) = Outbox::open(&p, limits()).unwrap();
        let keep = ["roost/dev/".to_string()];
        assert_eq!(o.drop_foreign(Sink::Mqtt, &keep).unwrap(), 0);
        assert_eq!(o.drop_foreign(Sink::Http, &[]).unwrap(), 0);
        assert_eq!(o.stats().unwrap().depth, 3_000);
        assert_eq!(
            o.loaded(),
            0,
            "opening and checking the identity load nothing"
        );
        let first = o.next(Sink::Mqtt, 0, 100).unwrap();
        assert_eq!((first.len(), o.loaded()), (100, 100));
    }

    /// Depth and bytes kept by triggers agree with what is there through pushes, drops and
    /// acknowledgements.
    #[test]
    fn the_kept_totals_match_the_messages() {
        let dir = tempfile::tempdir().unwrap();
        let small = Limits {
            max_bytes: 50_000,
            max_age: SignedDuration::from_hours(1),
        };
        let (mut o, _) = Outbox::open(&dir.path().join("o.db"), small).unwrap();
        let now = Timestamp::now();
        for round in 0..5 {
            let batch: Vec<NewMessage> =
                (0..100).map(|n| msg(Sink::Mqtt, n, 300 + round)).collect();
            o.push(&batch, now).unwrap();
            let seqs: Vec<i64> = (o.next(Sink::Mqtt, 0, 7).unwrap().iter())
                .map(|m| m.seq)
                .collect();
            o.ack(&seqs, now).unwrap();
        }
        let (depth, bytes): (i64, i64) = o
            .conn
            .query_row("SELECT count(*), sum(bytes) FROM message", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let s = o.stats().unwrap();
        assert_eq!((s.depth, s.bytes), (depth as u64, bytes as u64));
        assert!(s.bytes <= 50_000 && s.dropped > 0, "{s:?}");
    }

    /// Random pushes, acknowledgements, shrinks and reopenings checked against a `VecDeque`
    /// per sink: order, content and the kept totals (a small xorshift, seeded: reproducible).
    #[test]
    fn random_use_matches_a_model_queue() {
        use std::collections::VecDeque;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outbox.db");
        let big = Limits {
            max_bytes: 64 << 20,
            ..limits()
        };
        let (mut o, _) = Outbox::open(&p, big).unwrap();
        // (seq, payload, bytes with the topic) per sink.
        let mut model: [VecDeque<(i64, Vec<u8>, u64)>; 2] = Default::default();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for step in 0..400 {
            let (sink, side) = [(Sink::Mqtt, 0), (Sink::Http, 1)][rand(2) as usize];
            match rand(10) {
                0..=4 => {
                    let batch: Vec<NewMessage> = (0..rand(60))
                        .map(|n| msg(sink, n as usize, 50 + rand(3_000) as usize))
                        .collect();
                    o.push(&batch, Timestamp::now()).unwrap();
                    let tail = o.next(sink, model[side].back().map_or(0, |m| m.0), 1_000);
                    let fresh = (tail.unwrap().into_iter()).map(|m| {
                        (
                            m.seq,
                            m.payload.clone(),
                            (m.payload.len() + m.topic.len()) as u64,
                        )
                    });
                    model[side].extend(fresh);
                }
                5..=7 => {
                    let take = rand(80) as usize;
                    let seqs: Vec<i64> = (o.next(sink, 0, take).unwrap().iter())
                        .map(|m| m.seq)
                        .collect();
                    o.ack(&seqs, Timestamp::now()).unwrap();
                    model[side].drain(..seqs.len());
                    o.shrink().unwrap();
                }
                8 => drop(std::mem::replace(&mut o, Outbox::open(&p, big).unwrap().0)),
                _ => {
                    let left = o.next(sink, 0, 100_000).unwrap();
                    let got: Vec<(i64, Vec<u8>, u64)> = (left.into_iter())
                        .map(|m| {
                            (
                                m.seq,
                                m.payload.clone(),
                                (m.payload.len() + m.topic.len()) as u64,
                            )
                        })
                        .collect();
                    assert_eq!(got, Vec::from(model[side].clone()), "step {step}");
                }
            }
            let bytes: u64 = model.iter().flatten().map(|m| m.2).sum();
            let depth = (model[0].len() + model[1].len()) as u64;
            let s = o.stats().unwrap();
            assert_eq!((s.depth, s.bytes), (depth, bytes), "step {step}");
        }
    }
}
