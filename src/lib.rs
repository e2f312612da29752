#![warn(missing_docs)]
//! Roost keeps a field recording device in the state that `deployment.yaml` describes.
//!
//! # Layout
//! - [`spec`]: the desired state, its types, schema and loading with precise errors.
//! - [`plan`]: pure decisions: (desired, observed, history, now) -> actions and statuses.
//! - [`observe`]: the data plan and runtime share (runs, observed states, exits).
//! - [`runtime`]: where components run: the embedded process supervisor and systemd.
//! - [`apply`]: carries a plan out through a runtime and counts what failed.
//! - [`builtin`]: components roost provides itself (the recorder), their runs and health.
//! - [`component`]: the skeleton of a component process: its configuration, report and stop.
//! - [`desired`]: the desired-state file, its last valid copy and what changed.
//! - [`clock`]: the wall clock handed to decision code (a tokio-paced one for tests).
//! - [`reconcile`]: the loop that wakes on triggers, observes, plans, applies and publishes.
//! - [`publish`]: status publishers (status.json first), each on its own thread.
//! - [`sd_notify`]: sd_notify (READY=1, WATCHDOG=1) under any runtime.
//! - [`watch`]: inotify on the file's folders, debounced into reload triggers.
//! - [`status`]: the status document and its atomic writer.
//! - [`status_view`]: what `roost status` says to people (the first line answers "is it recording?").
//! - [`serve`]: `roost serve`, a read-only web page (status, problems, spectrograms) for a phone on the hotspot.
//! - [`connect`]: `roost connect`, status and heartbeats to MQTT, HTTP and Prometheus through a durable outbox.
//! - [`detect`]: detectors that look at each new recording (the built-in band-energy detector, an external command printing findings JSON).
//! - [`curate`]: `roost curate`, the detectors' queue (exactly once per recording), keep rules and retention.
//! - [`fleet`]: `roost fleet`, every device's retained status, availability and heartbeat on a broker, one row each.
//! - [`recorder`], [`storage`], [`schedule`]: audio capture to WAV files and metadata.db.
//! - [`errors`]: the error code catalogue.
//! - [`power`]: the board's power and heat from sysfs, their warnings, and the energy policy.
//! - [`init`]: `roost init`, a first deployment.yaml from a few answers.
//! - [`logging`]: roost's own log writer, which no failed write can end.

pub mod app;
pub mod apply;
pub mod archive;
pub mod builtin;
pub mod cli;
pub mod clock;
pub mod component;
pub mod connect;
pub mod curate;
pub mod desired;
pub mod detect;
pub mod device;
pub mod errors;
pub mod fleet;
pub mod fsutil;
pub mod history;
pub mod init;
pub mod logging;
pub mod observe;
pub mod plan;
pub mod power;
pub mod procscan;
pub mod publish;
pub mod reconcile;
pub mod recorder;
pub mod redact;
pub mod remote;
pub mod rollout;
pub mod runtime;
pub mod sandbox;
pub mod schedule;
pub mod sd_notify;
pub mod secret_file;
pub mod serve;
pub mod spec;
pub mod state_dir;
pub mod status;
pub mod status_seen;
pub mod status_view;
pub mod storage;
pub mod watch;
