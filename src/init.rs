//! `roost init`: a first deployment.yaml for a recording device, from a few answers (the
//! site's name and position, the microphone, a schedule preset, the storage), asked at a
//! terminal or given as flags (for scripts and configuration management). The file is
//! commented, carries its `$schema` line, is parsed by roost's own loader before it is written,
//! and then checked as `roost check` would.

use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use crate::recorder::devices::InputDevice;

/// What a deployment records, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Every sample, day and night, in contiguous one-minute files (a soundscape).
    Continuous,
    /// One minute in every five from 30 minutes before sunrise to 3 hours after (birds).
    DawnChorus,
    /// Everything from 15 minutes before sunset to 15 minutes after sunrise, in 15-second
    /// files at an ultrasonic rate (bats).
    DuskAndNight,
}

impl Preset {
    /// The sample rate it records at unless told otherwise, Hz.
    pub fn sample_rate_hz(self) -> u32 {
        match self {
            Self::Continuous | Self::DawnChorus => 48_000,
            Self::DuskAndNight => 384_000,
        }
    }

    /// Whether its windows are computed from sunrise or sunset (it needs the site's position).
    pub fn needs_location(self) -> bool {
        !matches!(self, Self::Continuous)
    }

    fn word(self) -> &'static str {
        match self {
            Self::Continuous => "continuous",
            Self::DawnChorus => "dawn-chorus",
            Self::DuskAndNight => "dusk-and-night",
        }
    }

    fn summary(self) -> &'static str {
        match self {
            Self::Continuous => "every sample, day and night, in contiguous one-minute files",
            Self::DawnChorus => {
                "one minute in every five, from 30 minutes before sunrise to 3 hours after"
            }
            Self::DuskAndNight => {
                "from 15 minutes before sunset to 15 minutes after sunrise, in 15-second files (bats: an ultrasonic microphone)"
            }
        }
    }

    /// The `recorder:` lines after `sampleFormat`, indented for the file.
    fn recorder_lines(self) -> &'static str {
        match self {
            Self::Continuous => {
                "    duration: 1m             # files follow each other with no gap\n"
            }
            Self::DawnChorus => {
                "    duration: 1m\n    interval: 5m             # a file starts every 5 minutes from local midnight\n    windows:\n      - {start: sunrise-30m, end: sunrise+3h}\n"
            }
            Self::DuskAndNight => {
                "    duration: 15s\n    windows:\n      - {start: sunset-15m, end: sunrise+15m}\n"
            }
        }
    }
}

/// The answers a deployment is written from.
#[derive(Clone, Debug, PartialEq)]
pub struct Answers {
    /// `metadata.name`: 1-63 lower-case letters, digits and '-'.
    pub name: String,
    /// The site, degrees (latitude north, longitude east; south and west negative).
    pub location: Option<(f64, f64)>,
    /// `spec.recorder.device`.
    pub device: String,
    /// What is recorded, and when.
    pub preset: Preset,
    /// `spec.storage.path`.
    pub storage: PathBuf,
    /// Whether the storage is on a card that must be mounted first (`requireMount`).
    pub require_mount: bool,
    /// `spec.recorder.timezone` (IANA name).
    pub timezone: String,
    /// `spec.recorder.sampleRate`, Hz.
    pub sample_rate_hz: u32,
}

/// The deployment file for `a`, commented; `written_at` and `file` go into its heading.
pub fn render(a: &Answers, file: &Path, written_at: Timestamp) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# yaml-language-server: $schema=/usr/share/roost/deployment.schema.json"
    );
    let _ = writeln!(
        out,
        "# Written by `roost init` on {}. roost applies every change to this file by itself;",
        written_at.strftime("%Y-%m-%d")
    );
    let _ = writeln!(
        out,
        "# `roost check --file {}` shows any problem with its line and column.",
        file.display()
    );
    let _ = writeln!(out, "# Preset {}: {}.", a.preset.word(), a.preset.summary());
    out.push_str("apiVersion: roost/v1\nkind: Deployment\nmetadata:\n");
    let _ = writeln!(out, "  name: {}", a.name);
    out.push_str("spec:\n");
    if let Some((lat, lon)) = a.location {
        let _ = writeln!(
            out,
            "  location: {{latitude: {lat}, longitude: {lon}}}   # sunrise and sunset are computed from it"
        );
    }
    out.push_str("  storage:\n");
    let _ = writeln!(
        out,
        "    path: {}",
        yaml_string(&a.storage.display().to_string())
    );
    if a.require_mount {
        out.push_str(
            "    requireMount: true       # nothing is written until the card is mounted\n",
        );
    }
    out.push_str("    minFreeSpace: 1GiB\n");
    out.push_str(
        "    onLowSpace: discardNew   # a full card keeps what it holds; deleteOldest makes room instead\n",
    );
    out.push_str("  recorder:\n");
    let _ = writeln!(
        out,
        "    device: {}   # from `roost devices`",
        yaml_string(&a.device)
    );
    let _ = writeln!(out, "    sampleRate: {}", a.sample_rate_hz);
    out.push_str("    channels: 1\n    sampleFormat: i16\n");
    out.push_str(a.preset.recorder_lines());
    let _ = writeln!(out, "    timezone: {}", yaml_string(&a.timezone));
    out.push_str("    restartPolicy: Always\n");
    out
}

/// `s` as a YAML scalar: plain when that reads back as the same string, else double-quoted.
fn yaml_string(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_.-:=,+@".contains(c))
        && !s.starts_with(['-', ':', '@'])
        && !matches!(
            s,
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
        );
    if plain && s.parse::<f64>().is_err() {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

/// A question asked of a person: the answer, or `default` for an empty line.
pub trait Ask {
    /// Asks `question`; `None` when the input ended.
    ///
    /// # Errors
    /// The terminal cannot be read or written.
    fn ask(&mut self, question: &str, default: &str) -> std::io::Result<Option<String>>;
    /// Says something that needs no answer.
    ///
    /// # Errors
    /// The terminal cannot be written.
    fn say(&mut self, text: &str) -> std::io::Result<()>;
}

/// [`Ask`] on a reader and a writer (the terminal's stdin and stdout).
pub struct Terminal<R, W> {
    /// Where answers come from.
    pub input: R,
    /// Where questions go.
    pub output: W,
}

impl<R: BufRead, W: Write> Ask for Terminal<R, W> {
    fn ask(&mut self, question: &str, default: &str) -> std::io::Result<Option<String>> {
        if default.is_empty() {
            write!(self.output, "{question}: ")?;
        } else {
            write!(self.output, "{question} [{default}]: ")?;
        }
        self.output.flush()?;
        let mut line = String::new();
        if self.input.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim();
        Ok(Some(
            if line.is_empty() { default } else { line }.to_string(),
        ))
    }

    fn say(&mut self, text: &str) -> std::io::Result<()> {
        writeln!(self.output, "{text}")
    }
}

/// What the flags gave; `None` is asked (at a terminal) or defaulted.
#[derive(Clone, Debug, Default)]
pub struct Given {
    /// `--name`.
    pub name: Option<String>,
    /// `--latitude`.
    pub latitude: Option<f64>,
    /// `--longitude`.
    pub longitude: Option<f64>,
    /// `--device`.
    pub device: Option<String>,
    /// `--preset`.
    pub preset: Option<Preset>,
    /// `--storage`.
    pub storage: Option<PathBuf>,
    /// `--timezone`.
    pub timezone: Option<String>,
    /// `--sample-rate`.
    pub sample_rate_hz: Option<u32>,
}

/// What the machine suggests: the defaults offered.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// Its host name.
    pub hostname: String,
    /// Its time zone's IANA name.
    pub timezone: String,
    /// Its audio inputs.
    pub devices: Vec<InputDevice>,
    /// Mounted removable file systems (under /media and /mnt), where a card would be.
    pub cards: Vec<PathBuf>,
}

/// Why `roost init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// An answer that cannot be used, and what is expected.
    #[error("{0}")]
    Answer(String),
    /// The terminal or the file could not be used.
    #[error("{what}")]
    Io {
        /// What roost was doing.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The answers from `given`, asking `ask` (when there is one) for each missing value with the
/// machine's suggestion as its default; without `ask`, the suggestions are taken, and a preset
/// that needs the site's position refuses to go on without it.
///
/// # Errors
/// An answer is not usable (with what is expected), or the terminal failed.
pub fn gather(
    given: &Given,
    machine: &Machine,
    mut ask: Option<&mut dyn Ask>,
) -> Result<Answers, InitError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| InitError::Io { what, source }
    };
    let mut question = |q: &str, default: &str| -> Result<String, InitError> {
        match ask.as_deref_mut() {
            Some(a) => a
                .ask(q, default)
                .map_err(io("cannot read the answer"))?
                .ok_or_else(|| InitError::Answer("the input ended before every answer".into())),
            None => Ok(default.to_string()),
        }
    };
    let name = match &given.name {
        Some(n) => n.clone(),
        None => question("Deployment name (the site)", &name_from(&machine.hostname))?,
    };
    check_name(&name)?;
    let preset = match given.preset {
        Some(p) => p,
        None => {
            let p = question(
                "Schedule: continuous, dawn-chorus or dusk-and-night (bats)",
                "continuous",
            )?;
            <Preset as clap::ValueEnum>::from_str(p.trim(), true).map_err(|_| {
                InitError::Answer(format!(
                    "{p:?} is no preset: write continuous, dawn-chorus or dusk-and-night"
                ))
            })?
        }
    };
    let location = location(given, preset, &mut question)?;
    let device = match &given.device {
        Some(d) => d.clone(),
        None => {
            let default = machine
                .devices
                .first()
                .map_or("default", |d| d.name.as_str());
            question("Microphone (a NAME from `roost devices`)", default)?
        }
    };
    let sample_rate_hz = match given.sample_rate_hz {
        Some(r) => r,
        None => {
            let offered = machine.devices.iter().find(|d| d.name == device);
            let default = suggested_rate(preset, offered);
            let r = question("Sample rate in Hz", &default.to_string())?;
            parse_rate(&r)?
        }
    };
    let (storage, require_mount) = match &given.storage {
        Some(s) => (s.clone(), on_card(s, &machine.cards)),
        None => {
            let default = machine.cards.first().map_or_else(
                || PathBuf::from("/var/lib/roost/storages"),
                |c| c.join("roost"),
            );
            let s = PathBuf::from(question(
                "Where recordings go (a folder; a card's mount point or a folder on it)",
                &default.display().to_string(),
            )?);
            let card = on_card(&s, &machine.cards);
            (s, card)
        }
    };
    let timezone = match &given.timezone {
        Some(t) => t.clone(),
        None => question("Time zone of the schedule", &machine.timezone)?,
    };
    Ok(Answers {
        name,
        location,
        device,
        preset,
        storage,
        require_mount,
        timezone,
        sample_rate_hz,
    })
}

fn location(
    given: &Given,
    preset: Preset,
    question: &mut dyn FnMut(&str, &str) -> Result<String, InitError>,
) -> Result<Option<(f64, f64)>, InitError> {
    let latitude = match given.latitude {
        Some(x) => Some(x),
        None => parse_degrees(&question(
            "Latitude in degrees (south negative; empty: none)",
            "",
        )?)?,
    };
    let longitude = match given.longitude {
        Some(x) => Some(x),
        None if latitude.is_none() => None,
        None => parse_degrees(&question("Longitude in degrees (west negative)", "")?)?,
    };
    match (latitude, longitude) {
        (Some(lat), Some(lon))
            if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) =>
        {
            Ok(Some((lat, lon)))
        }
        (Some(lat), Some(lon)) => Err(InitError::Answer(format!(
            "latitude {lat} or longitude {lon} is off the globe: latitude -90 to 90, longitude -180 to 180"
        ))),
        (None, None) if !preset.needs_location() => Ok(None),
        _ => Err(InitError::Answer(format!(
            "the {} preset computes its windows from sunrise and sunset: give the site's --latitude and --longitude (degrees, e.g. 51.76 and -1.26)",
            preset.word()
        ))),
    }
}

fn parse_degrees(text: &str) -> Result<Option<f64>, InitError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .map(Some)
        .ok_or_else(|| {
            InitError::Answer(format!(
                "{t:?} is not a number of degrees: write it as a decimal, e.g. 51.76 or -1.26"
            ))
        })
}

fn parse_rate(text: &str) -> Result<u32, InitError> {
    let t = text.trim();
    t.parse::<u32>().ok().filter(|r| *r > 0).ok_or_else(|| {
        InitError::Answer(format!(
            "{t:?} is not a number of hertz: write it whole, e.g. 48000"
        ))
    })
}

/// The preset's rate when the device takes it (or nothing is known of the device), else the
/// device's highest usual rate not above it, else its lowest.
fn suggested_rate(preset: Preset, device: Option<&InputDevice>) -> u32 {
    let want = preset.sample_rate_hz();
    let Some(rates) = device.map(|d| &d.sample_rates_hz).filter(|r| !r.is_empty()) else {
        return want;
    };
    if rates.contains(&want) {
        return want;
    }
    rates
        .iter()
        .rev()
        .find(|r| **r <= want)
        .or(rates.first())
        .copied()
        .unwrap_or(want)
}

fn check_name(name: &str) -> Result<(), InitError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(InitError::Answer(format!(
            "{name:?} cannot be a deployment name: use 1-63 lower-case letters, digits and '-', e.g. {:?}",
            name_from(name)
        )))
    }
}

/// A deployment name made from `text` (a host name): lower case, other characters as '-'.
pub fn name_from(text: &str) -> String {
    let mut out: String = text
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(63);
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "recorder".into()
    } else {
        out
    }
}

/// Whether `storage` lies on one of the mounted cards.
fn on_card(storage: &Path, cards: &[PathBuf]) -> bool {
    cards.iter().any(|c| storage.starts_with(c))
}

/// The file systems mounted under /media or /mnt (from /proc/self/mountinfo): where a card is.
pub fn mounted_cards() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(crate::storage::unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with("/media") || p.starts_with("/mnt"))
        .filter(|p| p != Path::new("/media") && p != Path::new("/mnt"))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Writes `text` to `file` whole (temp file, fsync, rename); a file already there is kept
/// beside it as `<file>.bak` (numbered when that exists). Returns where the old one went.
///
/// # Errors
/// The folder cannot be written.
pub fn write(file: &Path, text: &str) -> std::io::Result<Option<PathBuf>> {
    let kept = if file.exists() {
        let mut bak = file.as_os_str().to_os_string();
        bak.push(".bak");
        let bak = PathBuf::from(bak);
        let mut kept = None;
        for n in 0..1000u32 {
            let to = if n == 0 {
                bak.clone()
            } else {
                crate::storage::numbered(&bak, n)
            };
            match crate::storage::copy_no_replace(file, &to) {
                Ok(()) => {
                    kept = Some(to);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        kept
    } else {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        None
    };
    crate::fsutil::write_atomic(file, text.as_bytes())?;
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(preset: Preset) -> Answers {
        Answers {
            name: "meadow-north".into(),
            location: Some((51.76, -1.26)),
            device: "hw:CARD=Mic,DEV=0".into(),
            preset,
            storage: "/media/card/roost".into(),
            require_mount: true,
            timezone: "Europe/London".into(),
            sample_rate_hz: preset.sample_rate_hz(),
        }
    }

    /// Every preset gives a file roost's own loader takes, with its `$schema` line.
    #[test]
    fn every_preset_renders_a_valid_deployment() {
        for preset in [Preset::Continuous, Preset::DawnChorus, Preset::DuskAndNight] {
            let file = Path::new("/etc/roost/deployment.yaml");
            let text = render(&answers(preset), file, Timestamp::UNIX_EPOCH);
            assert!(
                text.starts_with("# yaml-language-server: $schema="),
                "{text}"
            );
            let d = crate::spec::parse_str(file, &text)
                .unwrap_or_else(|e| panic!("{preset:?}: {e}\n{text}"));
            let r = d.spec.recorder.as_ref().unwrap();
            assert_eq!(r.sample_rate.get(), preset.sample_rate_hz());
            assert_eq!(r.device.as_str(), "hw:CARD=Mic,DEV=0");
            assert_eq!(r.windows.is_empty(), preset == Preset::Continuous, "{text}");
        }
    }

    /// Flags alone (a script, Ansible): the machine's suggestions fill the rest; a preset that
    /// needs the site says so instead of guessing it.
    #[test]
    fn flags_alone_are_enough_and_a_missing_site_is_named() {
        let machine = Machine {
            hostname: "RaspberryPi.local".into(),
            timezone: "Europe/Paris".into(),
            devices: Vec::new(),
            cards: vec!["/media/card".into()],
        };
        let given = Given {
            preset: Some(Preset::Continuous),
            ..Given::default()
        };
        let a = gather(&given, &machine, None).unwrap();
        assert_eq!(a.name, "raspberrypi-local");
        assert_eq!(a.storage, Path::new("/media/card/roost"));
        assert!(a.require_mount);
        assert_eq!(a.timezone, "Europe/Paris");
        assert_eq!(a.location, None);
        let given = Given {
            preset: Some(Preset::DawnChorus),
            ..Given::default()
        };
        let e = gather(&given, &machine, None).unwrap_err().to_string();
        assert!(e.contains("--latitude and --longitude"), "{e}");
    }

    struct Scripted(Vec<&'static str>, Vec<String>);
    impl Ask for Scripted {
        fn ask(&mut self, q: &str, default: &str) -> std::io::Result<Option<String>> {
            self.1.push(format!("{q} [{default}]"));
            Ok((!self.0.is_empty()).then(|| {
                let a = self.0.remove(0);
                if a.is_empty() {
                    default.into()
                } else {
                    a.into()
                }
            }))
        }
        fn say(&mut self, text: &str) -> std::io::Result<()> {
            self.1.push(text.into());
            Ok(())
        }
    }

    /// At a terminal each missing value is asked with the machine's suggestion; a bad answer
    /// is named with what to write.
    #[test]
    fn questions_offer_the_machines_suggestions() {
        let machine = Machine {
            hostname: "pi".into(),
            timezone: "UTC".into(),
            devices: vec![InputDevice {
                name: "hw:CARD=Bat,DEV=0".into(),
                description: "Ultrasonic".into(),
                channels: vec![1],
                sample_formats: vec!["i16".into()],
                sample_rates_hz: vec![192000, 256000],
                error: None,
            }],
            cards: Vec::new(),
        };
        let mut s = Scripted(
            vec!["", "dusk-and-night", "50.7", "-3.5", "", "", "", ""],
            Vec::new(),
        );
        let a = gather(&Given::default(), &machine, Some(&mut s)).unwrap();
        assert_eq!(a.name, "pi");
        assert_eq!(a.device, "hw:CARD=Bat,DEV=0");
        assert_eq!(
            a.sample_rate_hz, 256000,
            "the device's best not above 384 kHz"
        );
        assert_eq!(a.location, Some((50.7, -3.5)));
        assert_eq!(a.storage, Path::new("/var/lib/roost/storages"));
        assert!(
            s.1.iter()
                .any(|q| q.starts_with("Sample rate in Hz [256000]")),
            "{:?}",
            s.1
        );
        let mut s = Scripted(vec!["", "", "", "", "48k"], Vec::new());
        let e = gather(&Given::default(), &machine, Some(&mut s))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"48k\" is not a number of hertz: write it whole, e.g. 48000"),
            "{e}"
        );
        for bad in ["Meadow North", "-a", ""] {
            let given = Given {
                name: Some(bad.into()),
                ..Given::default()
            };
            let e = gather(&given, &machine, None).unwrap_err().to_string();
            assert!(e.contains("cannot be a deployment name"), "{e}");
        }
    }

    #[test]
    fn odd_strings_are_quoted() {
        assert_eq!(yaml_string("default"), "default");
        assert_eq!(yaml_string("hw:CARD=Mic,DEV=0"), "hw:CARD=Mic,DEV=0");
        assert_eq!(yaml_string("no"), "\"no\"");
        assert_eq!(yaml_string("1.5"), "\"1.5\"");
        assert_eq!(yaml_string("my card"), "\"my card\"");
    }
}
