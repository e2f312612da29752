//! The `roost` binary: parses the command line, starts logging and calls into the library.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use roost::cli::{Cli, Command, LogFormat, SchemaKind};

fn main() -> ExitCode {
    // Whatever roost or a component makes (recordings, metadata.db, reports, logs) gives others
    // nothing and its group no write; inherited by every component it starts.
    roost::sandbox::restrict_umask();
    let mut cli = Cli::parse();
    if cli.command.prints_for_a_reader() {
        roost::logging::quiet_on_closed_pipe();
    }
    init_logging(cli.log_format);
    let resolved = cli
        .command
        .resolve_paths()
        .context("cannot make a path argument absolute");
    match resolved.and_then(|()| dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            // Not eprintln!: it panics when stderr is a pipe nobody reads (`roost record`
            // after its roost was killed).
            let _ = writeln!(roost::logging::stderr(), "error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `ROOST_LOG`: a level (`debug`) or `target=level` pairs (`roost=debug,zbus=warn`); `info`
/// when unset or unreadable. `Targets` rather than `EnvFilter`: the same syntax for what roost
/// needs, without the regular-expression engine (about 1 MB of binary on a Pi).
fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter: Targets = std::env::var("ROOST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    // Colour codes only for a person at a terminal, never into log files or journald.
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(roost::logging::stderr)
        // Its report of a failed write is an eprintln!, which would panic on a broken stderr.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.finish().with(filter).init(),
        LogFormat::Json => builder.json().finish().with(filter).init(),
    }
}

/// One command, one function; each returns the process exit code.
fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            file,
            dir,
            state_dir,
            runtime,
            user,
        } => {
            match dir {
                Some(dir) => roost::app::run_dir(&dir, &resolve(state_dir), runtime, user)?,
                None => roost::app::run(&file, &resolve(state_dir), runtime, user)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            file,
            state_dir,
            offline,
        } => Ok(check(&file, state_dir, offline)),
        Command::Status {
            name,
            state_dir,
            json,
        } => status(state_dir, name.as_deref(), json),
        Command::Plan { file, state_dir } => {
            let (text, ok) = roost::app::plan_offline(&file, &resolve(state_dir));
            print!("{text}");
            Ok(ExitCode::from(if ok { 0 } else { 1 }))
        }
        Command::Schema { kind } => {
            let schema = match kind {
                SchemaKind::Deployment => roost::app::deployment_schema(),
                SchemaKind::Status => roost::app::status_schema(),
                SchemaKind::View => roost::app::view_schema(),
            };
            println!("{schema}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { code } => Ok(explain(code.as_deref())),
        Command::Devices { json } => devices(json),
        Command::Init {
            file,
            name,
            latitude,
            longitude,
            device,
            preset,
            storage,
            timezone,
            sample_rate,
            yes,
            state_dir,
        } => {
            let given = roost::init::Given {
                name,
                latitude,
                longitude,
                device,
                preset,
                storage,
                timezone,
                sample_rate_hz: sample_rate,
            };
            init(&file, &given, yes, &resolve(state_dir))
        }
        Command::Logs {
            name,
            state_dir,
            follow,
        } => {
            roost::app::logs(&resolve(state_dir), &name, follow).context("cannot show logs")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fleet {
            action: Some(roost::cli::FleetAction::Rollout(args)),
            ..
        } => {
            let (out, err, code) = roost::rollout::command(*args);
            std::io::stdout().lock().write_all(out.as_bytes())?;
            let _ = roost::logging::stderr().write_all(err.as_bytes());
            Ok(ExitCode::from(code))
        }
        Command::Fleet { broker: None, .. } => {
            anyhow::bail!("roost fleet: give --broker, or a subcommand (rollout)")
        }
        Command::Fleet {
            action: None,
            broker: Some(broker),
            prefix,
            json,
            username,
            password_file,
            ca_file,
            wait,
        } => {
            let options = roost::fleet::FleetOptions {
                broker,
                prefix,
                username,
                password_file,
                ca_file,
                wait,
            };
            let outcome = roost::fleet::run(&options, json);
            std::io::stdout()
                .lock()
                .write_all(outcome.stdout.as_bytes())?;
            let _ = roost::logging::stderr().write_all(outcome.stderr.as_bytes());
            Ok(ExitCode::from(outcome.exit_code))
        }
        Command::Serve {
            listen,
            state_dir,
            password_file,
        } => {
            roost::serve::run(listen, &resolve(state_dir), password_file)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Record { config, state_dir } => {
            roost::recorder::run(&config, &resolve(state_dir))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Curate { config, state_dir } => {
            roost::curate::run(&config, &resolve(state_dir))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Connect { config, state_dir } => {
            roost::connect::run(&config, &resolve(state_dir))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Feed {
            fifo,
            sample_rate,
            channels,
            period_frames,
            alsa_config,
            seconds,
            signal,
        } => {
            let period_frames = period_frames
                .unwrap_or_else(|| roost::recorder::default_period_frames(sample_rate));
            feed(
                &fifo,
                alsa_config,
                sample_rate,
                channels,
                period_frames,
                seconds,
                signal,
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn resolve(state_dir: Option<PathBuf>) -> PathBuf {
    roost::state_dir::resolve(state_dir.as_deref())
}

fn check(file: &Path, state_dir: Option<PathBuf>, offline: bool) -> ExitCode {
    let report = if offline {
        roost::app::check_offline(file)
    } else {
        roost::app::check(file, &resolve(state_dir))
    };
    print!("{report}");
    ExitCode::from(if report.passed() { 0 } else { 1 })
}

/// `roost devices`: the table, or JSON; exit 1 when ALSA cannot list its devices.
fn devices(json: bool) -> anyhow::Result<ExitCode> {
    let list = roost::recorder::devices::list_inputs().map_err(|e| anyhow::anyhow!(e.message))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", roost::recorder::devices::render(&list));
    }
    Ok(ExitCode::SUCCESS)
}

/// `roost init`: gathers the answers (asking at a terminal unless `--yes`), writes the file,
/// checks it as `roost check` does; exit 0 when it passes, 1 when it does not, 2 when nothing
/// was written.
fn init(
    file: &Path,
    given: &roost::init::Given,
    yes: bool,
    state_dir: &Path,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let machine = roost::init::Machine {
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default(),
        timezone: jiff::tz::TimeZone::system()
            .iana_name()
            .unwrap_or("UTC")
            .to_string(),
        devices: roost::recorder::devices::list_inputs().unwrap_or_default(),
        cards: roost::init::mounted_cards(),
    };
    let interactive = !yes && std::io::stdin().is_terminal();
    let mut terminal = roost::init::Terminal {
        input: std::io::stdin().lock(),
        output: std::io::stdout(),
    };
    if interactive {
        print!("{}", roost::recorder::devices::render(&machine.devices));
        println!();
    }
    let ask: Option<&mut dyn roost::init::Ask> = if interactive {
        Some(&mut terminal)
    } else {
        None
    };
    let answers = match roost::init::gather(given, &machine, ask) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("roost init: {e}; nothing was written");
            return Ok(ExitCode::from(2));
        }
    };
    let text = roost::init::render(&answers, file, jiff::Timestamp::now());
    if let Err(e) = roost::spec::parse_str(file, &text) {
        eprintln!("roost init: the file would not be valid ({e}); nothing was written");
        return Ok(ExitCode::from(2));
    }
    let kept = roost::init::write(file, &text)
        .with_context(|| format!("cannot write {}", file.display()))?;
    println!("Wrote {}.", file.display());
    if let Some(old) = kept {
        println!("The file that was there is kept as {}.", old.display());
    }
    let report = roost::app::check(file, state_dir);
    print!("{report}");
    if report.passed() {
        println!(
            "Next: `systemctl restart roost` (or `roost run --file {}`), then `roost status`.",
            file.display()
        );
    }
    Ok(ExitCode::from(if report.passed() { 0 } else { 1 }))
}

/// Exit code: the document's own, 1 when it is stale, 3 when roost never ran here.
fn status(state_dir: Option<PathBuf>, name: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let state_dir = roost::state_dir::StateDir::new(resolve(state_dir));
    let path = state_dir.status();
    if !path.exists() {
        eprintln!(
            "roost has not run with state folder {} (no status.json): not started",
            state_dir.root.display()
        );
        return Ok(ExitCode::from(3));
    }
    let doc = roost::status::read(&path)?;
    let now = jiff::Timestamp::now();
    // What the file says, as a reader must take it: roost gone or the file out of date is
    // Unknown with its reason, never the green it last said.
    let (seen, mut doc) = roost::status_seen::look(&doc, &state_dir.root, now);
    if let Some(name) = name {
        let Some(one) = doc
            .deployments
            .iter()
            .find(|d| d.deployment.as_deref() == Some(name))
        else {
            let known: Vec<&str> = doc
                .deployments
                .iter()
                .filter_map(|d| d.deployment.as_deref())
                .collect();
            eprintln!(
                "no deployment {name:?} on this device (it has: {}); `roost status` lists them",
                if known.is_empty() {
                    "one deployment file, no --dir".to_string()
                } else {
                    known.join(", ")
                }
            );
            return Ok(ExitCode::from(2));
        };
        let mut one = one.clone();
        if seen != roost::status_seen::Seen::Current {
            // The device's verdict (roost gone, status out of date) is each deployment's too.
            one.status = roost::status::OverallStatus::Unknown;
            one.errors.splice(0..0, doc.errors.first().cloned());
        }
        doc = one;
        if json {
            println!("{}", serde_json::to_string_pretty(&doc)?);
            return Ok(ExitCode::from(doc.exit_code() as u8));
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        // The file itself, so fields newer than this binary are not lost.
        out.write_all(&std::fs::read(&path)?)?;
    } else {
        let facts = roost::status_view::gather(&doc, &state_dir.root, now);
        write!(out, "{}", roost::status_view::render(&doc, &facts, now))?;
    }
    if seen != roost::status_seen::Seen::Current
        && let Some(e) = doc.errors.first()
    {
        eprintln!("warning: {} {} (status Unknown)", e.code, e.message);
    }
    Ok(ExitCode::from(doc.exit_code() as u8))
}

/// The whole catalogue, or one entry; exit code 2 for a code roost does not know.
fn explain(code: Option<&str>) -> ExitCode {
    let Some(code) = code else {
        for c in roost::errors::CATALOGUE {
            println!("{}  {}", c.code, c.title);
        }
        return ExitCode::SUCCESS;
    };
    match roost::errors::lookup(code) {
        Some(c) => {
            println!(
                "{}: {}\n\n{}\n\nRecommended action: {}",
                c.code, c.title, c.description, c.action
            );
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("unknown error code {code:?}; `roost explain` lists them all");
            ExitCode::from(2)
        }
    }
}

/// `roost feed`: test audio into a FIFO, with an ALSA configuration that reads it if asked.
fn feed(
    fifo: &Path,
    alsa_config: Option<PathBuf>,
    sample_rate: u32,
    channels: u16,
    period_frames: u32,
    seconds: Option<f64>,
    signal: roost::recorder::feed::Signal,
) -> anyhow::Result<()> {
    if let Some(conf) = alsa_config {
        roost::recorder::feed::write_test_asound_conf(&conf, Some(fifo), sample_rate, channels)?;
    }
    roost::recorder::feed::run_feeder(fifo, sample_rate, channels, period_frames, seconds, signal)?;
    Ok(())
}
