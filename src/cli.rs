//! The command line (clap). Only definitions live here, and the one step every path argument
//! goes through before use (made absolute); `main.rs` dispatches.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::fleet::QuietWait;
use crate::spec::connect::{BrokerUrl, TopicLevel};

/// The command line of roost: the global options and one command.
#[derive(Parser, Debug)]
#[command(
    name = "roost",
    version,
    about = "Keeps a field recording device in the state deployment.yaml describes"
)]
pub struct Cli {
    /// Log format of roost's own log on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// How roost writes its own log lines on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where `roost run` runs the components.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeChoice {
    /// systemd when a manager answers on D-Bus, the process runtime otherwise.
    Auto,
    /// Roost supervises the components itself.
    Process,
    /// Components become systemd units, driven over D-Bus.
    Systemd,
}

/// Which JSON Schema `roost schema` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    /// The schema of deployment.yaml.
    Deployment,
    /// The schema of status.json.
    Status,
    /// The schema of the field page's `/api/view.json` (`roost serve`).
    View,
}

/// What roost is asked to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Watch the file and reconcile until stopped (SIGTERM/SIGINT); SIGHUP re-reads the file.
    Run {
        /// The deployment file to apply and watch.
        #[arg(long, short, default_value = "/etc/roost/deployment.yaml")]
        file: PathBuf,
        /// A folder of deployment files (`*.yaml`, one deployment each) to apply and watch
        /// instead of one file: each deployment has its own phase, status and restart counts;
        /// removing a file removes its deployment.
        #[arg(long, conflicts_with = "file")]
        dir: Option<PathBuf>,
        /// Folder of status.json, history.json and logs (default: /var/lib/roost for root, else
        /// $XDG_STATE_HOME/roost).
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Where the components run.
        #[arg(long, value_enum, default_value_t = RuntimeChoice::Auto)]
        runtime: RuntimeChoice,
        /// With the systemd runtime: use the user manager instead of the system manager.
        #[arg(long)]
        user: bool,
    },
    /// Validate the file and the environment it needs.
    Check {
        /// The deployment file to check.
        #[arg(long, short, default_value = "/etc/roost/deployment.yaml")]
        file: PathBuf,
        /// Folder of status.json, history.json and logs (default: /var/lib/roost for root, else
        /// $XDG_STATE_HOME/roost).
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Check the file alone (syntax and validity): no device, storage, programs or state
        /// folder. For `validate:` steps of configuration management.
        #[arg(long)]
        offline: bool,
    },
    /// Report the status file.
    Status {
        /// One deployment of a device run with `--dir` (default: the device, each deployment
        /// on a line).
        name: Option<String>,
        /// Folder of status.json, history.json and logs (default: /var/lib/roost for root, else
        /// $XDG_STATE_HOME/roost).
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Print the status file itself.
        #[arg(long)]
        json: bool,
    },
    /// Show what would change, changing nothing.
    Plan {
        /// The deployment file to compare with what runs now.
        #[arg(long, short, default_value = "/etc/roost/deployment.yaml")]
        file: PathBuf,
        /// Folder of status.json, history.json and logs (default: /var/lib/roost for root, else
        /// $XDG_STATE_HOME/roost).
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Print a JSON Schema.
    Schema {
        /// Which schema to print.
        #[arg(value_enum, default_value_t = SchemaKind::Deployment)]
        kind: SchemaKind,
    },
    /// Write a first deployment.yaml for a recording device: asks (at a terminal) or takes as
    /// flags the site's name and position, the microphone, a schedule and the storage, then
    /// checks the file.
    Init {
        /// The file to write (a file already there is kept as <file>.bak).
        #[arg(long, short, default_value = "/etc/roost/deployment.yaml")]
        file: PathBuf,
        /// The deployment's name (the site): lower-case letters, digits and '-'.
        #[arg(long)]
        name: Option<String>,
        /// The site's latitude in degrees (south negative).
        #[arg(long, allow_hyphen_values = true)]
        latitude: Option<f64>,
        /// The site's longitude in degrees (west negative).
        #[arg(long, allow_hyphen_values = true)]
        longitude: Option<f64>,
        /// The microphone: a NAME from `roost devices`.
        #[arg(long)]
        device: Option<String>,
        /// What to record, and when.
        #[arg(long, value_enum)]
        preset: Option<crate::init::Preset>,
        /// Where recordings go: a folder (a card's mount point, or a folder on it).
        #[arg(long)]
        storage: Option<PathBuf>,
        /// The schedule's time zone (IANA name, e.g. Europe/London).
        #[arg(long)]
        timezone: Option<String>,
        /// Sample rate in Hz (default: the preset's, or the microphone's best below it).
        #[arg(long)]
        sample_rate: Option<u32>,
        /// Ask nothing: what no flag gives is the machine's suggestion.
        #[arg(long)]
        yes: bool,
        /// Folder of status.json, history.json and logs, for the check that follows.
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// List the audio inputs (the names spec.recorder.device takes) and what each captures.
    Devices {
        /// One JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Explain an error code (or list them all).
    Explain {
        /// The code to explain, e.g. DEP_E161; without it, every code is listed.
        code: Option<String>,
    },
    /// Show a component's log.
    Logs {
        /// The component whose log to print.
        name: String,
        /// Folder of status.json, history.json and logs (default: /var/lib/roost for root, else
        /// $XDG_STATE_HOME/roost).
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Keep printing new lines as they are written.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// One line per device from the retained status, availability and heartbeat topics on an
    /// MQTT broker; exit 0 when every device is reachable and Running, 1 otherwise, 2 when the
    /// broker cannot be read.
    #[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
    Fleet {
        /// `rollout`: change devices from afar (signed, in batches, through a health gate).
        #[command(subcommand)]
        action: Option<FleetAction>,
        /// The broker: `mqtt://host[:port]` or `mqtts://host[:port]`.
        #[arg(long, value_parser = broker_url, required = true)]
        broker: Option<BrokerUrl>,
        /// First topic level of the devices' topics (their spec.connect.mqtt.topicPrefix).
        #[arg(long, value_parser = topic_level, default_value = "roost")]
        prefix: TopicLevel,
        /// Print a JSON array of devices instead of the table.
        #[arg(long)]
        json: bool,
        /// User name, when the broker asks for one.
        #[arg(long)]
        username: Option<String>,
        /// A file whose first line is the password (with --username).
        #[arg(long, requires = "username")]
        password_file: Option<PathBuf>,
        /// PEM CA certificates to trust besides the system's (mqtts).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Stop reading once no message arrived for this long (at most 10s).
        #[arg(long, default_value = "2s")]
        wait: QuietWait,
    },
    /// Serve a read-only web page of the device's state and spectrograms of its recordings
    /// (for a phone on the device's hotspot); runs until stopped.
    Serve {
        /// Address and port to listen on (default: this device only).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// A file whose first line is the page's password (HTTP Basic, any user name); without
        /// it the page is open to whoever reaches the address.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Folder of status.json, history.json and logs (default: /var/lib/roost for root, else
        /// $XDG_STATE_HOME/roost).
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Run the audio recorder (started by roost as component `recorder`).
    Record {
        /// The recorder configuration written by the reconciler.
        #[arg(long)]
        config: PathBuf,
        /// Folder of status.json, history.json and logs (default: /var/lib/roost for root, else
        /// $XDG_STATE_HOME/roost).
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Run the connector (started by `roost run` as component `connect` when spec.connect is set).
    #[command(hide = true)]
    Connect {
        /// The connector configuration written by the reconciler.
        #[arg(long)]
        config: PathBuf,
        /// Folder of status.json and the outbox (default: /var/lib/roost for root, else
        /// $XDG_STATE_HOME/roost).
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Run the curator: detectors, keep rules, retention (started by `roost run` as component
    /// `curator` when spec.detectors or spec.storage.keep/maxAge/maxUsage is set).
    #[command(hide = true)]
    Curate {
        /// The curator configuration written by the reconciler.
        #[arg(long)]
        config: PathBuf,
        /// Folder of its report (default: /var/lib/roost for root, else $XDG_STATE_HOME/roost).
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Feed a generated test signal into a FIFO at real-time pace (for devices without a sound card).
    #[command(hide = true)]
    Feed {
        /// The FIFO to write the signal into.
        #[arg(long)]
        fifo: PathBuf,
        /// Samples per second per channel.
        #[arg(long, default_value_t = 48_000)]
        sample_rate: u32,
        /// Number of interleaved channels.
        #[arg(long, default_value_t = 1)]
        channels: u16,
        /// Frames per write; must equal the recorder's capture period (default: the recorder's).
        #[arg(long)]
        period_frames: Option<u32>,
        /// Also write an ALSA configuration whose default capture device reads this FIFO
        /// (use it as ALSA_CONFIG_PATH for `roost run`).
        #[arg(long)]
        alsa_config: Option<PathBuf>,
        /// Stop after this many seconds (default: run until killed).
        #[arg(long)]
        seconds: Option<f64>,
        /// The signal: `sweep` (default) or `events` (tone bursts at known times, for detectors).
        #[arg(long, value_enum, default_value_t = crate::recorder::feed::Signal::Sweep)]
        signal: crate::recorder::feed::Signal,
    },
}

impl Command {
    /// Whether the command prints for a person or a pipe and ends (`check`, `status`, `plan`,
    /// `schema`, `explain`, `logs`, `fleet`): a reader that stops early ends it quietly.
    pub fn prints_for_a_reader(&self) -> bool {
        matches!(
            self,
            Self::Check { .. }
                | Self::Devices { .. }
                | Self::Status { .. }
                | Self::Plan { .. }
                | Self::Schema { .. }
                | Self::Explain { .. }
                | Self::Logs { .. }
                | Self::Fleet { .. }
        )
    }

    /// Makes every path argument (`ROOST_STATE_DIR` included, which clap puts into
    /// `--state-dir`) absolute, once, before anything uses it: the state folder ends up in the
    /// recorder's configuration, in spec hashes and in metadata.db, and must be the same folder
    /// whatever the working directory of roost or of the processes it starts. Nothing needs to
    /// exist yet.
    pub fn resolve_paths(&mut self) -> std::io::Result<()> {
        for path in self.paths_mut() {
            *path = absolute(path)?;
        }
        Ok(())
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let paths: Vec<Option<&mut PathBuf>> = match self {
            Command::Run {
                file,
                state_dir,
                dir,
                ..
            } => vec![Some(file), state_dir.as_mut(), dir.as_mut()],
            Command::Check {
                file, state_dir, ..
            }
            | Command::Plan { file, state_dir } => vec![Some(file), state_dir.as_mut()],
            Command::Record { config, state_dir }
            | Command::Connect { config, state_dir }
            | Command::Curate { config, state_dir } => {
                vec![Some(config), state_dir.as_mut()]
            }
            Command::Status { state_dir, .. } | Command::Logs { state_dir, .. } => {
                vec![state_dir.as_mut()]
            }
            Command::Init {
                file,
                storage,
                state_dir,
                ..
            } => vec![Some(file), storage.as_mut(), state_dir.as_mut()],
            Command::Serve {
                state_dir,
                password_file,
                ..
            } => vec![state_dir.as_mut(), password_file.as_mut()],
            Command::Feed {
                fifo, alsa_config, ..
            } => vec![Some(fifo), alsa_config.as_mut()],
            Command::Fleet {
                password_file,
                ca_file,
                ..
            } => vec![password_file.as_mut(), ca_file.as_mut()],
            Command::Schema { .. } | Command::Explain { .. } | Command::Devices { .. } => vec![],
        };
        paths.into_iter().flatten().collect()
    }
}

fn broker_url(text: &str) -> Result<BrokerUrl, String> {
    BrokerUrl::try_from(text.to_string())
}

fn topic_level(text: &str) -> Result<TopicLevel, String> {
    TopicLevel::try_from(text.to_string())
}

/// `path` joined to the working directory when relative, without `.` components or a trailing
/// slash, so that `.state`, `./.state/` and `$PWD/.state` are one spelling. Symbolic links and
/// `..` are kept: resolving them would need the path to exist.
pub fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    Ok(std::path::absolute(path)?.components().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn every_spelling_of_a_folder_is_one_absolute_path() {
        let cwd = std::env::current_dir().unwrap();
        for spelling in [".state", "./.state/", "./.state/."] {
            assert_eq!(absolute(Path::new(spelling)).unwrap(), cwd.join(".state"));
        }
        assert_eq!(
            absolute(Path::new("/var/lib//roost/")).unwrap(),
            Path::new("/var/lib/roost")
        );
        assert!(absolute(Path::new("")).is_err());
    }

    #[test]
    fn path_arguments_are_resolved() {
        let cwd = std::env::current_dir().unwrap();
        let mut cli = Cli::parse_from(["roost", "run", "-f", "d.yaml", "--state-dir", ".state"]);
        cli.command.resolve_paths().unwrap();
        let Command::Run {
            file, state_dir, ..
        } = cli.command
        else {
            panic!("not run");
        };
        assert_eq!(file, cwd.join("d.yaml"));
        assert_eq!(state_dir, Some(cwd.join(".state")));
    }

    #[test]
    fn fleet_arguments_are_parsed_and_its_files_resolved() {
        let cwd = std::env::current_dir().unwrap();
        let mut cli = Cli::parse_from([
            "roost",
            "fleet",
            "--broker",
            "mqtts://broker.example.org",
            "--username",
            "ops",
            "--password-file",
            "pw",
            "--ca-file",
            "ca.pem",
        ]);
        cli.command.resolve_paths().unwrap();
        let Command::Fleet {
            broker,
            prefix,
            password_file,
            ca_file,
            wait,
            json,
            ..
        } = cli.command
        else {
            panic!("not fleet");
        };
        let broker = broker.unwrap();
        assert_eq!((broker.port, broker.tls), (8883, true));
        assert_eq!(prefix.as_str(), "roost");
        assert_eq!(password_file, Some(cwd.join("pw")));
        assert_eq!(ca_file, Some(cwd.join("ca.pem")));
        assert_eq!(wait, QuietWait::default());
        assert!(!json);
        for bad in [
            vec!["roost", "fleet", "--broker", "http://h"],
            vec!["roost", "fleet", "--broker", "mqtt://h", "--prefix", "a/b"],
            vec!["roost", "fleet", "--broker", "mqtt://h", "--wait", "1m"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
    }
}

/// `roost fleet` subcommands.
#[derive(Subcommand, Debug)]
pub enum FleetAction {
    /// Sign a version of the deployment file(s), publish it to the chosen devices batch by
    /// batch, wait for each batch through its health gate; halt when more than --max-failed
    /// fail. Exit 0 done, 1 halted, 2 could not run. Progress is kept on the broker
    /// (`<prefix>/_rollouts/<id>`) for --resume.
    Rollout(Box<RolloutArgs>),
}

/// `roost fleet rollout`'s arguments.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").args(["file", "dir"])))]
#[command(group(clap::ArgGroup::new("choice").args(["devices", "select"])))]
pub struct RolloutArgs {
    /// The broker: `mqtt://host[:port]` or `mqtts://host[:port]`.
    #[arg(long, value_parser = broker_url)]
    pub broker: BrokerUrl,
    /// First topic level of the devices' topics (their spec.connect.mqtt.topicPrefix).
    #[arg(long, value_parser = topic_level, default_value = "roost")]
    pub prefix: TopicLevel,
    /// User name, when the broker asks for one.
    #[arg(long)]
    pub username: Option<String>,
    /// A file whose first line is the password (with --username).
    #[arg(long, requires = "username")]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates to trust besides the system's (mqtts).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// The minisign secret key that signs (`minisign -G` writes it).
    #[arg(long)]
    pub key: PathBuf,
    /// A file whose first line is the key's password (else ROOST_KEY_PASSWORD).
    #[arg(long)]
    pub key_password_file: Option<PathBuf>,
    /// The deployment file every chosen device gets (`roost run --file` devices).
    #[arg(long, required_unless_present_any = ["dir", "resume"])]
    pub file: Option<PathBuf>,
    /// The folder of deployment files every chosen device gets (`roost run --dir` devices).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Devices by id, comma-separated.
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["select", "resume"])]
    pub devices: Vec<String>,
    /// Devices whose spec.connect.labels has LABEL=VALUE (from their reports on the broker).
    #[arg(long, value_parser = label_value)]
    pub select: Option<(String, String)>,
    /// Devices in all by the end of each batch: counts and percentages.
    #[arg(long, value_delimiter = ',', default_value = "1,10%,100%")]
    pub batches: Vec<crate::rollout::BatchSize>,
    /// How long each device's health gate watches the version.
    #[arg(long, default_value = "10m")]
    pub gate: crate::spec::HumanDuration,
    /// Failures allowed before the rollout halts.
    #[arg(long, default_value_t = 0)]
    pub max_failed: usize,
    /// When devices apply: now, fileBoundary (after the recorder closes a file) or windowClosed.
    #[arg(long, default_value = "now", value_parser = apply_at)]
    pub apply: crate::remote::signed::ApplyAt,
    /// The latest a deferred version waits on a device after it arrived.
    #[arg(long, default_value = "1h")]
    pub max_wait: crate::spec::HumanDuration,
    /// How long a device may take beyond its gate (and --max-wait) to report.
    #[arg(long, default_value = "15m")]
    pub timeout: crate::spec::HumanDuration,
    /// On a halt, ask the devices that took the version to go back to their files before it.
    #[arg(long)]
    pub revert: bool,
    /// The version number (default: one above the highest any device under --prefix reports).
    #[arg(long)]
    pub version: Option<u64>,
    /// Carry on the rollout ID (its devices, files and batches are on the broker).
    #[arg(long, conflicts_with_all = ["file", "dir", "devices", "select", "version"])]
    pub resume: Option<String>,
    /// Print the rollout's final record as JSON (the files left out) instead of the summary.
    #[arg(long)]
    pub json: bool,
}

fn label_value(text: &str) -> Result<(String, String), String> {
    let (l, v) = text
        .split_once('=')
        .ok_or_else(|| format!("--select {text:?}: give LABEL=VALUE"))?;
    let l = TopicLevel::try_from(l.to_string())?;
    let v = TopicLevel::try_from(v.to_string())?;
    Ok((l.to_string(), v.to_string()))
}

fn apply_at(text: &str) -> Result<crate::remote::signed::ApplyAt, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("--apply {text:?}: give now, fileBoundary or windowClosed"))
}
