//! The command line (clap). Only definitions live here; `main.rs` dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeChoice {
    /// systemd when a manager answers on D-Bus, the process runtime otherwise.
    Auto,
    /// Roost supervises the components itself.
    Process,
    /// Components become systemd units, driven over D-Bus.
    Systemd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    Deployment,
    Status,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Watch the file and reconcile until stopped (SIGTERM/SIGINT); SIGHUP re-reads the file.
    Run {
        #[arg(long, short)]
        file: PathBuf,
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = RuntimeChoice::Auto)]
        runtime: RuntimeChoice,
        /// With the systemd runtime: use the user manager instead of the system manager.
        #[arg(long)]
        user: bool,
    },
    /// Validate the file and the environment it needs.
    Check {
        #[arg(long, short)]
        file: PathBuf,
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Report the status file.
    Status {
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Print the status file itself.
        #[arg(long)]
        json: bool,
    },
    /// Show what would change, changing nothing.
    Plan {
        #[arg(long, short)]
        file: PathBuf,
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Print a JSON Schema.
    Schema {
        #[arg(value_enum, default_value_t = SchemaKind::Deployment)]
        kind: SchemaKind,
    },
    /// Explain an error code (or list them all).
    Explain { code: Option<String> },
    /// Show a component's log.
    Logs {
        name: String,
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Keep printing new lines as they are written.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Run the audio recorder (started by roost as component `recorder`).
    Record {
        /// The recorder configuration written by the reconciler.
        #[arg(long)]
        config: PathBuf,
        #[arg(long, env = "ROOST_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Feed a generated test signal into a FIFO at real-time pace (for devices without a sound card).
    #[command(hide = true)]
    Feed {
        #[arg(long)]
        fifo: PathBuf,
        #[arg(long, default_value_t = 48_000)]
        sample_rate: u32,
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
    },
}
