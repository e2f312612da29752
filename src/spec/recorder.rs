//! The `spec.storage` and `spec.recorder` sections: where recordings go and how they are made.
//! Single values are parsed into newtypes while deserializing (so a bad value is reported at its
//! line and column); checks that involve several fields live in [`RecorderSpec::validate`].
//! Nothing here touches a device or a disk.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AbsolutePath, FieldIssue, HumanDuration, Location, RestartPolicy};

/// The component name under which the recorder runs.
pub const RECORDER_COMPONENT: &str = "recorder";

/// Folder of the storage, under the state folder, when `spec.storage.path` is not given.
pub const DEFAULT_STORAGE_DIR: &str = "storages";

/// The largest WAV file: RIFF sizes are 32-bit.
const WAV_MAX_BYTES: u64 = u32::MAX as u64 - 4096;

// ---------------------------------------------------------------------------------------------
// Storage

/// Where recordings and metadata.db live, and what to do when the disk runs low.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageSpec {
    /// Folder that holds metadata.db and recordings/. Default: `<state-dir>/storages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<AbsolutePath>,
    /// Free space to keep on the storage's disk, e.g. "1GiB", "500MB".
    #[serde(default = "default_min_free_space")]
    pub min_free_space: ByteSize,
    /// What to do when free space falls below minFreeSpace.
    #[serde(default)]
    pub on_low_space: OnLowSpace,
    /// The storage folder must lie on a mounted disk (an SD card or USB disk), as systemd's
    /// `RequiresMountsFor=`: the mount /etc/fstab names at or above it, else any mount at or
    /// above it other than `/` (so `/media/card/roost` on a card mounted at `/media/card`).
    /// Until then the recorder writes nothing (not even its folders) and reports DEP_E301
    /// with the mount it waits for, then records there by itself. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_mount: bool,
    /// Saving rules, decided for each recording once every detector has seen it: kept when any
    /// rule keeps it, otherwise its file is deleted and its row's `path` cleared. Without rules
    /// everything is kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<super::curate::KeepRule>,
    /// Recordings older than this are deleted (never protected ones, nor ones a detector or the
    /// outbox still needs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    /// The most the recordings may use: bytes ("20GiB") or a share of the file system ("80%");
    /// the oldest go first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_usage: Option<super::curate::Usage>,
}

fn default_min_free_space() -> ByteSize {
    ByteSize(1 << 30)
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            path: None,
            min_free_space: default_min_free_space(),
            on_low_space: OnLowSpace::default(),
            require_mount: false,
            keep: Vec::new(),
            max_age: None,
            max_usage: None,
        }
    }
}

impl StorageSpec {
    /// The storage folder: `path` when given, `<state_dir>/storages` otherwise.
    pub fn resolved_path(&self, state_dir: &Path) -> PathBuf {
        match &self.path {
            Some(p) => p.as_path().to_path_buf(),
            None => state_dir.join(DEFAULT_STORAGE_DIR),
        }
    }

    /// Whether keep rules or retention limits are set.
    pub fn curates(&self) -> bool {
        !self.keep.is_empty() || self.max_age.is_some() || self.max_usage.is_some()
    }

    /// A copy whose `path` is set, so that the recorder needs no state folder to find it.
    pub fn resolved(&self, state_dir: &Path) -> StorageSpec {
        let path = self.resolved_path(state_dir);
        let path = AbsolutePath::try_from(path.to_string_lossy().into_owned()).ok();
        StorageSpec {
            path,
            ..self.clone()
        }
    }
}

/// What the recorder does while free space is below `minFreeSpace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnLowSpace {
    /// Delete the oldest registered recordings (file and row) until there is enough space.
    #[default]
    DeleteOldest,
    /// Stop recording until there is space again.
    Stop,
    /// Keep capturing but discard each new file instead of keeping it.
    DiscardNew,
}

/// A size in bytes written with a unit: "1GiB", "500MiB", "2GB", "4096B" or "0".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

const BYTE_UNITS: [(&str, u64); 9] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("kB", 1_000),
    ("B", 1),
];

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let fail = |why: &str| {
            format!(
                "invalid size {text:?}: {why}; expected a whole number and a unit such as \"500MiB\", \"1GiB\", \"2GB\" or \"0\""
            )
        };
        let s = text.trim();
        if s == "0" {
            return Ok(Self(0));
        }
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if digits == 0 {
            return Err(fail("it must start with a number"));
        }
        let number: u64 = s[..digits]
            .parse()
            .map_err(|_| fail("the number is too large"))?;
        let unit = s[digits..].trim_start();
        let factor = BYTE_UNITS
            .iter()
            .find(|(u, _)| *u == unit || (unit == "KB" && *u == "kB"))
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                if unit.is_empty() {
                    fail("the unit is missing")
                } else {
                    fail("unknown unit")
                }
            })?;
        number
            .checked_mul(factor)
            .map(Self)
            .ok_or_else(|| fail("it is too large"))
    }
}

/// `b` bytes for a person: `1.2 GiB`, `350 MiB`, `12 KiB`, `800 bytes` (binary units, as
/// minFreeSpace is written).
pub fn human_bytes(b: u64) -> String {
    let x = b as f64;
    match b {
        _ if b >= 1 << 30 => format!("{:.1} GiB", x / f64::from(1u32 << 30)),
        _ if b >= 1 << 20 => format!("{:.0} MiB", x / f64::from(1u32 << 20)),
        _ if b >= 1 << 10 => format!("{:.0} KiB", x / 1024.0),
        _ => format!("{b} bytes"),
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        let (unit, factor) = BYTE_UNITS
            .iter()
            .find(|(_, factor)| self.0.is_multiple_of(*factor))
            .copied()
            .unwrap_or(("B", 1));
        write!(f, "{}{unit}", self.0 / factor)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(0|[0-9]+ ?(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB))$",
            "description": "A size such as \"500MiB\", \"1GiB\", \"2GB\" or \"0\".",
            "examples": ["1GiB", "500MB"]
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Recorder

/// The audio recorder, run as component `recorder`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecorderSpec {
    /// An ALSA device name as cpal lists it (`arecord -L`), or "default".
    #[serde(default)]
    pub device: DeviceName,
    /// Samples per second per channel, 8000 to 768000.
    #[serde(default)]
    pub sample_rate: SampleRate,
    /// Number of channels, 1 to 32.
    #[serde(default)]
    pub channels: Channels,
    /// Sample encoding of the files: `i16` (default), `i24` or `f32`.
    #[serde(default)]
    pub sample_format: SampleFormat,
    /// Length of one file.
    #[serde(default = "default_file_duration")]
    pub duration: HumanDuration,
    /// Start to start of consecutive files; equal to duration (the default) records continuously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// IANA time zone of the windows and of the interval grid (default "UTC").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<TimeZoneName>,
    /// Daily recording windows; empty records all day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
    /// Overrides spec.restartPolicy for the recorder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// The most audio a power cut can cost: how often the file being written is made durable.
    /// On ext3/ext4 with ordered data (the default) the audio is handed to the kernel's
    /// write-back every `syncInterval` less the journal's commit interval (5 s unless mounted
    /// with `commit=`) and the journal's own commit carries its size, with no forced commit;
    /// elsewhere, or when that leaves less than 1 s, fdatasync every `syncInterval`. Default
    /// 10s; `0s` syncs at the end of each file only. Shorter intervals wear an SD card faster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_interval: Option<HumanDuration>,
}

/// The default `syncInterval`: at most 10 s of audio lost to a power cut, one flush of the
/// card every 10 s (about 1 MB at 48 kHz mono i16).
pub const DEFAULT_SYNC_INTERVAL: HumanDuration = HumanDuration::from_secs(10);

fn default_file_duration() -> HumanDuration {
    HumanDuration::from_secs(60)
}

impl Default for RecorderSpec {
    fn default() -> Self {
        Self {
            device: DeviceName::default(),
            sample_rate: SampleRate::default(),
            channels: Channels::default(),
            sample_format: SampleFormat::default(),
            duration: default_file_duration(),
            interval: None,
            timezone: None,
            windows: Vec::new(),
            restart_policy: None,
            sync_interval: None,
        }
    }
}

impl RecorderSpec {
    /// Start-to-start time of files.
    pub fn effective_interval(&self) -> HumanDuration {
        self.interval.unwrap_or(self.duration)
    }

    /// True when files follow each other without a gap.
    pub fn is_continuous(&self) -> bool {
        self.effective_interval() == self.duration
    }

    /// The configured time zone, UTC when none is given.
    pub fn time_zone(&self) -> jiff::tz::TimeZone {
        match &self.timezone {
            Some(tz) => tz.time_zone(),
            None => jiff::tz::TimeZone::UTC,
        }
    }

    /// The sync interval in force ([`DEFAULT_SYNC_INTERVAL`] unless set); zero: at file end only.
    pub fn effective_sync_interval(&self) -> std::time::Duration {
        self.sync_interval.unwrap_or(DEFAULT_SYNC_INTERVAL).as_std()
    }

    /// Bytes of audio per second.
    pub fn bytes_per_second(&self) -> u64 {
        u64::from(self.sample_rate.get())
            * u64::from(self.channels.get())
            * u64::from(self.sample_format.bytes_per_sample())
    }

    /// Cross-field checks; `location` and `storage` are the deployment's.
    pub fn validate(
        &self,
        location: Option<&Location>,
        _storage: Option<&StorageSpec>,
    ) -> Vec<FieldIssue> {
        let mut issues = Vec::new();
        let duration = self.duration.as_std();
        if duration < std::time::Duration::from_secs(1) {
            issues.push(FieldIssue::new(
                "spec.recorder.duration",
                format!(
                    "duration {} is shorter than 1s; give each file at least one second",
                    self.duration
                ),
            ));
        }
        let sync = self.effective_sync_interval();
        if !sync.is_zero() && sync < std::time::Duration::from_secs(1) {
            issues.push(FieldIssue::new(
                "spec.recorder.syncInterval",
                format!(
                    "syncInterval {} flushes the card more than once a second, which wears it out; use at least 1s, or 0s to sync at the end of each file only",
                    self.sync_interval.unwrap_or(DEFAULT_SYNC_INTERVAL)
                ),
            ));
        }
        let file_bytes = duration.as_secs_f64() * self.bytes_per_second() as f64;
        if file_bytes > WAV_MAX_BYTES as f64 {
            issues.push(FieldIssue::new(
                "spec.recorder.duration",
                format!(
                    "a file of {} at {} Hz x {} channels ({}) would exceed the 4 GiB limit of WAV; use a shorter duration",
                    self.duration,
                    self.sample_rate.get(),
                    self.channels.get(),
                    self.sample_format
                ),
            ));
        }
        if let Some(interval) = self.interval {
            if interval < self.duration {
                issues.push(FieldIssue::new(
                    "spec.recorder.interval",
                    format!("interval ({interval}) is shorter than duration ({}); make interval >= duration", self.duration),
                ));
            }
            if interval.as_std() > std::time::Duration::from_secs(86_400) {
                issues.push(FieldIssue::new(
                    "spec.recorder.interval",
                    format!("interval ({interval}) is longer than a day; the interval grid restarts every day at midnight"),
                ));
            }
        }
        for (i, w) in self.windows.iter().enumerate() {
            for (name, t) in [("start", &w.start), ("end", &w.end)] {
                if t.is_solar() && location.is_none() {
                    issues.push(FieldIssue::new(
                        format!("spec.recorder.windows[{i}].{name}"),
                        format!("{t} needs spec.location (latitude and longitude) to compute the sun's times; add it or use \"HH:MM\""),
                    ));
                }
            }
            if w.start == w.end {
                issues.push(FieldIssue::new(
                    format!("spec.recorder.windows[{i}].end"),
                    format!(
                        "the window starts and ends at {}; to record all day leave windows empty",
                        w.start
                    ),
                ));
            }
        }
        issues
    }
}

/// An audio device name: one line, at most 256 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "DeviceNameSchema")]
pub struct DeviceName(String);

#[derive(JsonSchema)]
#[schemars(transparent)]
#[allow(dead_code)]
struct DeviceNameSchema(#[schemars(length(min = 1, max = 256))] String);

impl Default for DeviceName {
    fn default() -> Self {
        Self("default".into())
    }
}

impl TryFrom<String> for DeviceName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.trim().is_empty() || s.len() > 256 || s.contains(['\0', '\n', '\r']) {
            return Err(format!(
                "invalid audio device name {s:?}: use a name `arecord -L` lists (one line, at most 256 characters), or \"default\""
            ));
        }
        Ok(Self(s))
    }
}
impl From<DeviceName> for String {
    fn from(d: DeviceName) -> String {
        d.0
    }
}
impl DeviceName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Samples per second per channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "u32", into = "u32")]
#[schemars(with = "SampleRateSchema")]
pub struct SampleRate(u32);

#[derive(JsonSchema)]
#[schemars(transparent)]
#[allow(dead_code)]
struct SampleRateSchema(#[schemars(range(min = 8000, max = 768000))] u32);

impl Default for SampleRate {
    fn default() -> Self {
        Self(48_000)
    }
}
impl TryFrom<u32> for SampleRate {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        if !(8_000..=768_000).contains(&v) {
            return Err(format!(
                "sample rate {v} is out of range: expected 8000 to 768000 (Hz), e.g. 48000 or 384000"
            ));
        }
        Ok(Self(v))
    }
}
impl From<SampleRate> for u32 {
    fn from(v: SampleRate) -> u32 {
        v.0
    }
}
impl SampleRate {
    /// Samples per second per channel.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Number of interleaved channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "u16", into = "u16")]
#[schemars(with = "ChannelsSchema")]
pub struct Channels(u16);

#[derive(JsonSchema)]
#[schemars(transparent)]
#[allow(dead_code)]
struct ChannelsSchema(#[schemars(range(min = 1, max = 32))] u16);

impl Default for Channels {
    fn default() -> Self {
        Self(1)
    }
}
impl TryFrom<u16> for Channels {
    type Error = String;
    fn try_from(v: u16) -> Result<Self, String> {
        if !(1..=32).contains(&v) {
            return Err(format!("channels {v} is out of range: expected 1 to 32"));
        }
        Ok(Self(v))
    }
}
impl From<Channels> for u16 {
    fn from(v: Channels) -> u16 {
        v.0
    }
}
impl Channels {
    /// Channels per frame.
    pub fn get(self) -> u16 {
        self.0
    }
}

/// Sample format of the capture and of the WAV files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SampleFormat {
    /// 16-bit signed integer.
    #[default]
    I16,
    /// 24-bit signed integer (3 bytes per sample in the WAV).
    I24,
    /// 32-bit float.
    F32,
}

impl SampleFormat {
    /// Bytes per sample in the WAV file.
    pub fn bytes_per_sample(self) -> u16 {
        match self {
            Self::I16 => 2,
            Self::I24 => 3,
            Self::F32 => 4,
        }
    }
}

impl fmt::Display for SampleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::I16 => "i16",
            Self::I24 => "i24",
            Self::F32 => "f32",
        })
    }
}

/// An IANA time zone name known to this system's time zone database.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct TimeZoneName(String);

impl TryFrom<String> for TimeZoneName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match jiff::tz::TimeZone::get(&s) {
            Ok(_) => Ok(Self(s)),
            Err(_) => Err(format!(
                "unknown time zone {s:?}: use an IANA name such as \"Europe/London\", \"America/New_York\" or \"UTC\""
            )),
        }
    }
}
impl From<TimeZoneName> for String {
    fn from(t: TimeZoneName) -> String {
        t.0
    }
}
impl TimeZoneName {
    /// The IANA name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The zone; validated when parsed, UTC should the database have changed since.
    pub fn time_zone(&self) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(&self.0).unwrap_or(jiff::tz::TimeZone::UTC)
    }
}

/// A daily recording window; an end at or before the start means it crosses midnight.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Window {
    /// When recording starts each day.
    pub start: TimeOfDay,
    /// When it ends (at or before `start`: the next day).
    pub end: TimeOfDay,
}

/// A sun event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SunEvent {
    /// The upper limb of the sun at the horizon, morning.
    Sunrise,
    /// The same, evening.
    Sunset,
}

/// A time of day: "HH:MM" on the clock, or "sunrise"/"sunset" with an optional offset
/// ("sunrise-30m", "sunset+1h30m").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TimeOfDay {
    /// Minutes after local midnight, 0..1440.
    Clock {
        /// Minutes after local midnight.
        minute_of_day: u16,
    },
    /// A sun event shifted by `offset_seconds` (negative: before).
    Solar {
        /// Sunrise or sunset.
        event: SunEvent,
        /// Seconds after it (negative: before).
        offset_seconds: i32,
    },
}

impl TimeOfDay {
    /// Whether it follows the sun (needs `spec.location`).
    pub fn is_solar(&self) -> bool {
        matches!(self, Self::Solar { .. })
    }
}

impl TryFrom<String> for TimeOfDay {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl FromStr for TimeOfDay {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let fail = |why: &str| {
            format!(
                "invalid time of day {text:?}: {why}; expected \"HH:MM\" (24-hour clock) or sunrise/sunset with an optional offset, e.g. \"sunrise-30m\", \"sunset+1h\""
            )
        };
        let s = text.trim();
        for (name, event) in [("sunrise", SunEvent::Sunrise), ("sunset", SunEvent::Sunset)] {
            let Some(rest) = s.strip_prefix(name) else {
                continue;
            };
            let rest = rest.trim();
            if rest.is_empty() {
                return Ok(Self::Solar {
                    event,
                    offset_seconds: 0,
                });
            }
            let (sign, amount) = match (rest.strip_prefix('+'), rest.strip_prefix('-')) {
                (Some(a), _) => (1, a),
                (_, Some(a)) => (-1, a),
                _ => return Err(fail("the offset must start with '+' or '-'")),
            };
            let offset: HumanDuration = amount
                .trim()
                .parse()
                .map_err(|_| fail("the offset is not a duration"))?;
            if offset.as_std() > std::time::Duration::from_secs(12 * 3600) {
                return Err(fail("the offset is longer than 12h"));
            }
            return Ok(Self::Solar {
                event,
                offset_seconds: sign * offset.as_std().as_secs() as i32,
            });
        }
        let (h, m) = s
            .split_once(':')
            .ok_or_else(|| fail("no ':' between hours and minutes"))?;
        let valid = |part: &str| part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit());
        if !valid(h) || !valid(m) {
            return Err(fail("hours and minutes must be two digits each"));
        }
        let (h, m): (u16, u16) = (h.parse().unwrap_or(99), m.parse().unwrap_or(99));
        if h > 23 || m > 59 {
            return Err(fail("hours go from 00 to 23 and minutes from 00 to 59"));
        }
        Ok(Self::Clock {
            minute_of_day: h * 60 + m,
        })
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Clock { minute_of_day } => {
                write!(f, "{:02}:{:02}", minute_of_day / 60, minute_of_day % 60)
            }
            Self::Solar {
                event,
                offset_seconds,
            } => {
                f.write_str(match event {
                    SunEvent::Sunrise => "sunrise",
                    SunEvent::Sunset => "sunset",
                })?;
                if offset_seconds != 0 {
                    let sign = if offset_seconds < 0 { '-' } else { '+' };
                    let d = HumanDuration::from_secs(u64::from(offset_seconds.unsigned_abs()));
                    write!(f, "{sign}{d}")?;
                }
                Ok(())
            }
        }
    }
}

impl From<TimeOfDay> for String {
    fn from(t: TimeOfDay) -> String {
        t.to_string()
    }
}

impl JsonSchema for TimeOfDay {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TimeOfDay".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(([01][0-9]|2[0-3]):[0-5][0-9]|(sunrise|sunset)([+-]([0-9]+(ms|s|m|h|d))+)?)$",
            "description": "\"HH:MM\" on a 24-hour clock in spec.recorder.timezone, or \"sunrise\"/\"sunset\" with an optional offset such as \"sunrise-30m\".",
            "examples": ["22:00", "sunrise-30m", "sunset+1h"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_read_and_print_alike() {
        for (text, bytes) in [
            ("1GiB", 1u64 << 30),
            ("500MB", 500_000_000),
            ("0", 0),
            ("4100B", 4100),
            ("3KiB", 3072),
        ] {
            let b: ByteSize = text.parse().unwrap();
            assert_eq!(b.bytes(), bytes, "{text}");
            assert_eq!(b.to_string(), text);
        }
        assert_eq!("2 GiB".parse::<ByteSize>().unwrap().bytes(), 2 << 30);
        for bad in ["", "GiB", "1", "1.5GiB", "1XB", "-1GiB", "99999999999TiB"] {
            let err = bad.parse::<ByteSize>().unwrap_err();
            assert!(err.contains("expected a whole number"), "{bad}: {err}");
        }
    }

    #[test]
    fn times_of_day() {
        assert_eq!(
            "06:30".parse::<TimeOfDay>().unwrap(),
            TimeOfDay::Clock { minute_of_day: 390 }
        );
        assert_eq!(
            "sunrise-30m".parse::<TimeOfDay>().unwrap(),
            TimeOfDay::Solar {
                event: SunEvent::Sunrise,
                offset_seconds: -1800
            }
        );
        for text in ["22:00", "00:00", "sunset", "sunrise+3h", "sunset-1h30m"] {
            assert_eq!(text.parse::<TimeOfDay>().unwrap().to_string(), text);
        }
        for bad in [
            "24:00",
            "6:00",
            "06:60",
            "noon",
            "sunrise30m",
            "sunrise+13h",
            "sunset+x",
        ] {
            assert!(
                bad.parse::<TimeOfDay>()
                    .unwrap_err()
                    .contains("expected \"HH:MM\""),
                "{bad}"
            );
        }
    }

    #[test]
    fn ranges_are_checked_while_parsing() {
        assert!(SampleRate::try_from(7999).is_err());
        assert!(SampleRate::try_from(384_000).is_ok());
        assert!(Channels::try_from(0).is_err());
        assert!(TimeZoneName::try_from("Europe/London".to_string()).is_ok());
        assert!(
            TimeZoneName::try_from("Europe/Londn".to_string())
                .unwrap_err()
                .contains("unknown time zone")
        );
        assert!(DeviceName::try_from(String::new()).is_err());
    }

    #[test]
    fn cross_field_checks_name_the_field() {
        let spec = RecorderSpec {
            duration: HumanDuration::from_secs(60),
            interval: Some(HumanDuration::from_secs(30)),
            windows: vec![
                Window {
                    start: "22:00".parse().unwrap(),
                    end: "02:00".parse().unwrap(),
                },
                Window {
                    start: "sunrise-30m".parse().unwrap(),
                    end: "sunrise+3h".parse().unwrap(),
                },
            ],
            ..RecorderSpec::default()
        };
        let fields: Vec<String> = spec
            .validate(None, None)
            .into_iter()
            .map(|i| i.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.recorder.interval",
                "spec.recorder.windows[1].start",
                "spec.recorder.windows[1].end"
            ]
        );
        let too_long = RecorderSpec {
            duration: HumanDuration::from_secs(3 * 3600),
            sample_rate: SampleRate::try_from(384_000).unwrap(),
            ..RecorderSpec::default()
        };
        assert_eq!(
            too_long.validate(None, None)[0].field,
            "spec.recorder.duration"
        );
        assert!(RecorderSpec::default().validate(None, None).is_empty());
    }

    #[test]
    fn storage_path_defaults_under_the_state_folder() {
        let s = StorageSpec::default();
        assert_eq!(
            s.resolved_path(Path::new("/var/lib/roost")),
            Path::new("/var/lib/roost/storages")
        );
        assert_eq!(
            s.resolved(Path::new("/x")).path.unwrap().as_path(),
            Path::new("/x/storages")
        );
    }
}
