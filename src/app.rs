//! What each command does, above the library's parts: choosing a runtime, `check`, `plan`,
//! schemas and logs. `main.rs` only parses and dispatches.

use std::fmt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::RuntimeChoice;
use crate::errors::{self, ErrorCode};
use crate::history::History;
use crate::plan::{self, Desired, PlanInput};
use crate::reconcile::{self, Config, ReconcileError};
use crate::runtime::RuntimeError;
use crate::runtime::process::ProcessRuntime;
use crate::spec;
use crate::state_dir::StateDir;
use crate::watch::absolute;

/// Why a command failed, as `main` reports it.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The reconcile loop ended with an error.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    /// The device's loop (`run --dir`) ended with an error.
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// The runtime could not be set up or asked (e.g. the systemd manager does not answer).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The async runtime or its signal handlers could not be set up.
    #[error("cannot start the async runtime")]
    Tokio(#[source] std::io::Error),
    /// The command line asks for something that cannot be done (e.g. `--user` with the process
    /// runtime).
    #[error("{0}")]
    Usage(String),
    /// Another roost runs on the state folder, or the folder cannot be created.
    #[error(transparent)]
    Lock(#[from] crate::state_dir::LockError),
}

/// Raises the soft limit of open files to the hard limit: each component under the process
/// runtime holds a few descriptors (log pipes), and the usual soft limit of 1024 stops at about
/// 250 components. Components inherit the raised limit.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

/// `roost run`: reconciles until SIGTERM or SIGINT.
pub fn run(
    file: &Path,
    state_dir: &Path,
    choice: RuntimeChoice,
    user: bool,
) -> Result<(), AppError> {
    let _lock = crate::state_dir::lock(state_dir)?;
    raise_open_files_limit();
    let rt = one_thread()?;
    let cfg = Config {
        file: absolute(file),
        state_dir: state_dir.to_path_buf(),
        exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("roost")),
    };
    let remote = crate::remote::ledger::Target::File(cfg.file.clone());
    rt.block_on(async move {
        let shutdown = shutdown_signal()?;
        let (use_systemd, target) = choose_runtime(choice, user).await?;
        let link = spawn_remote(remote, &cfg.state_dir);
        if use_systemd {
            let runtime = crate::runtime::systemd::SystemdRuntime::connect(target).await?;
            reconcile::run_linked(cfg, runtime, shutdown, ready, Some(link)).await?;
        } else {
            let runtime = ProcessRuntime::new(state_dir)?;
            reconcile::run_linked(cfg, runtime, shutdown, ready, Some(link)).await?;
        }
        Ok(())
    })
}

/// `roost run --dir`: reconciles every deployment file of `dir` until SIGTERM or SIGINT.
pub fn run_dir(
    dir: &Path,
    state_dir: &Path,
    choice: RuntimeChoice,
    user: bool,
) -> Result<(), AppError> {
    let _lock = crate::state_dir::lock(state_dir)?;
    raise_open_files_limit();
    let rt = one_thread()?;
    let cfg = crate::device::DirConfig {
        dir: absolute(dir),
        state_dir: state_dir.to_path_buf(),
        exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("roost")),
    };
    // Each deployment's loop is a local task of this one thread.
    let remote = crate::remote::ledger::Target::Dir(cfg.dir.clone());
    tokio::task::LocalSet::new().block_on(&rt, async move {
        let shutdown = shutdown_signal()?;
        let (use_systemd, target) = choose_runtime(choice, user).await?;
        let link = spawn_remote(remote, &cfg.state_dir);
        if use_systemd {
            crate::device::run_linked(cfg, SystemdMaker(target), shutdown, ready, Some(link))
                .await?;
        } else {
            crate::device::run_linked(cfg, ProcessMaker, shutdown, ready, Some(link)).await?;
        }
        Ok(())
    })
}

/// Starts the desired state over the broker for `target` as a task of this runtime; the link
/// goes to the loop (or the device's coordinator).
fn spawn_remote(
    target: crate::remote::ledger::Target,
    state_dir: &Path,
) -> crate::publish::RemoteLink {
    let (link, side) = crate::publish::remote_link();
    tokio::spawn(crate::remote::device::run(
        target,
        state_dir.to_path_buf(),
        side,
    ));
    link
}

/// One thread is plenty for a reconciler and keeps the footprint small.
fn one_thread() -> Result<tokio::runtime::Runtime, AppError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::Tokio)
}

/// SIGTERM or SIGINT, registered now: a signal during start-up is not lost (the default action
/// would kill roost and orphan what it started).
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, AppError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Tokio)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Tokio)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    })
}

fn ready() {
    let _ = crate::sd_notify::sd_notify("READY=1");
}

/// Whether components run under systemd (`auto`: when a manager answers) and which manager.
async fn choose_runtime(
    choice: RuntimeChoice,
    user: bool,
) -> Result<(bool, crate::runtime::systemd::SystemdTarget), AppError> {
    use crate::runtime::systemd::{SystemdTarget, probe};
    let target = if user {
        SystemdTarget::User
    } else {
        SystemdTarget::System
    };
    let use_systemd = match choice {
        RuntimeChoice::Process => false,
        RuntimeChoice::Systemd => true,
        // No manager on this machine (a container, a test box): the process runtime.
        RuntimeChoice::Auto => {
            std::path::Path::new("/run/systemd/system").exists()
                && probe(&target, Duration::from_millis(500)).await
        }
    };
    if !use_systemd && user && choice == RuntimeChoice::Process {
        return Err(AppError::Usage(
            "--user only applies to the systemd runtime".into(),
        ));
    }
    let runtime = if use_systemd { "systemd" } else { "process" };
    tracing::info!(runtime, "runtime chosen");
    Ok((use_systemd, target))
}

/// Each deployment of a folder supervises its own child processes.
struct ProcessMaker;

impl crate::device::MakeRuntime for ProcessMaker {
    type R = ProcessRuntime;
    async fn make(&self, state_dir: &Path) -> Result<ProcessRuntime, RuntimeError> {
        ProcessRuntime::new(state_dir)
    }
}

/// Each deployment of a folder has its own connection to the systemd manager (its units carry
/// the deployment's name).
struct SystemdMaker(crate::runtime::systemd::SystemdTarget);

impl crate::device::MakeRuntime for SystemdMaker {
    type R = crate::runtime::systemd::SystemdRuntime;
    async fn make(&self, _: &Path) -> Result<Self::R, RuntimeError> {
        let runtime = crate::runtime::systemd::SystemdRuntime::connect(self.0.clone()).await?;
        Ok(runtime.with_deployment_slices())
    }
}

/// One problem `roost check` found.
pub struct Problem {
    /// The catalogue entry of the problem.
    pub code: &'static ErrorCode,
    /// What is wrong, with the file, line and column where there are any.
    pub message: String,
    /// The offending lines of the file, for a syntax error.
    pub snippet: Option<String>,
}

/// What `roost check` found; its `Display` is the report printed.
pub struct CheckReport {
    /// Every problem found, in the order checked; none means the check passed.
    pub problems: Vec<Problem>,
    /// What is valid but probably not meant (keep rules that keep nothing); never fails it.
    pub warnings: Vec<String>,
    /// What a technician installing the device should know (when the next recording window
    /// opens); never fails it.
    pub notes: Vec<String>,
}

impl CheckReport {
    /// True when no problem was found.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        if self.passed() {
            return writeln!(f, "Health checks passed");
        }
        for p in &self.problems {
            writeln!(f, "{} {}", p.code.code, p.message)?;
            if let Some(s) = &p.snippet {
                writeln!(f, "{s}")?;
            }
            writeln!(f, "  action: {}", crate::errors::action_on_device(p.code))?;
        }
        writeln!(f, "{} problem(s) found", self.problems.len())
    }
}

/// `roost check`: the file, then what it needs from the machine, with the codes the running
/// components would raise. It creates and changes nothing (no state folder, no storage
/// folder, no probe file).
pub fn check(file: &Path, state_dir: &Path) -> CheckReport {
    let (deployment, mut problems) = check_file(file);
    if let Some(d) = &deployment {
        problems.extend(check_programs(d));
        problems.extend(check_detectors(d));
        problems.extend(check_connect_files(d));
        problems.extend(check_users(d));
        problems.extend(check_recorder(d, state_dir));
    }
    if let Err(e) = could_write(state_dir) {
        problems.push(Problem {
            code: &errors::INTERNAL,
            message: format!("state folder {} is not writable: {e}", state_dir.display()),
            snippet: None,
        });
    }
    let mut warnings = deployment
        .as_ref()
        .map(crate::curate::keep_warnings)
        .unwrap_or_default();
    let mut notes = Vec::new();
    if let Some(d) = &deployment {
        next_window(d, jiff::Timestamp::now(), &mut notes, &mut warnings);
        warnings.extend(exposure_warnings(d));
        warnings.extend(page_open_warning(d));
    }
    CheckReport {
        problems,
        warnings,
        notes,
    }
}

/// Outside the recorder's windows now: when the next one opens (local time) as a note, and
/// DEP_E318 as a warning when that is more than 7 days away or never within a year.
fn next_window(
    d: &spec::Deployment,
    now: jiff::Timestamp,
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let Some(recorder) = &d.spec.recorder else {
        return;
    };
    let schedule = crate::schedule::Schedule::new(recorder, d.spec.location.as_ref());
    if recorder.windows.is_empty() || schedule.in_window(now) {
        return;
    }
    let tz = schedule.time_zone().clone();
    match schedule.next_window_start(now) {
        Some(at) => {
            let local = at.to_zoned(tz).strftime("%a %-d %b %Y %H:%M %Z");
            notes.push(format!(
                "outside the recording windows now; the next opens {local}"
            ));
            if at.duration_since(now) > jiff::SignedDuration::from_hours(24 * 7) {
                warnings.push(format!(
                    "{} the next recording window opens {local}, more than 7 days from now",
                    errors::NO_WINDOW_SOON.code
                ));
            }
        }
        None => warnings.push(format!(
            "{} no recording window opens within a year (check spec.recorder.windows and spec.location)",
            errors::NO_WINDOW_SOON.code
        )),
    }
}

/// `roost check --offline`: the file alone (parse and validate), for configuration-management
/// tools that validate a file before putting it in place, perhaps on another machine. It looks
/// at no device, storage, program or state folder, and creates nothing.
pub fn check_offline(file: &Path) -> CheckReport {
    let (deployment, problems) = check_file(file);
    let mut warnings = deployment
        .as_ref()
        .map(crate::curate::keep_warnings)
        .unwrap_or_default();
    warnings.extend(deployment.as_ref().and_then(page_open_warning));
    CheckReport {
        problems,
        warnings,
        notes: Vec::new(),
    }
}

/// The files of `d` that hold secrets, each with its field path.
fn secret_files(d: &spec::Deployment) -> Vec<(&'static str, &Path)> {
    let mut files = Vec::new();
    if let Some(c) = &d.spec.connect {
        if let Some(p) = c.mqtt.as_ref().and_then(|m| m.password_file.as_ref()) {
            files.push(("spec.connect.mqtt.passwordFile", p.as_path()));
        }
        if let Some(p) = c.http.as_ref().and_then(|h| h.headers_file.as_ref()) {
            files.push(("spec.connect.http.headersFile", p.as_path()));
        }
    }
    if let Some(p) = d.spec.page.as_ref().and_then(|p| p.password_file.as_ref()) {
        files.push(("spec.page.passwordFile", p.as_path()));
    }
    files
}

/// DEP_E509 for each secret file every user may read.
fn exposure_warnings(d: &spec::Deployment) -> Vec<String> {
    secret_files(d)
        .into_iter()
        .filter_map(|(field, path)| crate::secret_file::exposed(field, path))
        .map(|why| format!("{} {why}", errors::SECRET_EXPOSED.code))
        .collect()
}

/// DEP_E701 when the page listens beyond this device without a password.
fn page_open_warning(d: &spec::Deployment) -> Option<String> {
    let page = d.spec.page.as_ref()?;
    let ip = page.listen.addr().ip();
    (!ip.is_loopback() && page.password_file.is_none()).then(|| {
        format!(
            "{} spec.page listens on {} without a password: anyone on that network sees the page (set spec.page.passwordFile)",
            errors::PAGE_OPEN.code,
            page.listen.addr()
        )
    })
}

/// Users the components run as exist (DEP_E165), and the built-ins' user can read the secret
/// files they need (DEP_E507), as the components would find out when they start.
fn check_users(d: &spec::Deployment) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut missing = |who: &str, name: &str| {
        problems.push(Problem {
            code: &errors::USER_NOT_FOUND,
            message: format!("{who}: user {name:?} does not exist on this device"),
            snippet: None,
        })
    };
    for c in &d.spec.components {
        if let Some(u) = &c.user
            && crate::sandbox::Identity::of(u.as_str(), false).is_err()
        {
            missing(&format!("component {}", c.name), u.as_str());
        }
    }
    let Some(user) = crate::sandbox::builtin_user() else {
        return problems;
    };
    let Ok(who) = crate::sandbox::Identity::of(&user, false) else {
        missing("the built-ins (ROOST_USER)", &user);
        return problems;
    };
    for (field, path) in secret_files(d) {
        if crate::secret_file::readable_by(path, &who) == Some(false) {
            let p = path.display();
            problems.push(Problem {
                code: &errors::SECRET_UNREADABLE,
                message: format!(
                    "{field} {p}: the built-ins run as user {user}, which cannot read it (`chown root:{user} {p} && chmod 0640 {p}`)"
                ),
                snippet: None,
            });
        }
    }
    problems
}

/// Loads and validates the file: the deployment, or the problem with its file, line and column.
fn check_file(file: &Path) -> (Option<spec::Deployment>, Vec<Problem>) {
    match spec::load_file(file) {
        Ok((d, _)) => (Some(d), Vec::new()),
        Err(e) => {
            let snippet = match &e {
                spec::LoadError::Syntax { snippet, .. } => snippet.clone(),
                _ => None,
            };
            let problem = Problem {
                code: &errors::INVALID_SPEC,
                message: e.to_string(),
                snippet,
            };
            (None, vec![problem])
        }
    }
}

/// Every component's program can be found and its working folder exists.
fn check_programs(d: &spec::Deployment) -> Vec<Problem> {
    let mut problems = Vec::new();
    for c in &d.spec.components {
        let path_var = c
            .env
            .iter()
            .find(|(k, _)| k.as_str() == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_default();
        if let Err(e) = crate::runtime::process::resolve_program(
            c.command.program(),
            &path_var,
            c.working_dir.as_ref().map(|w| w.as_path()),
        ) {
            problems.push(Problem {
                code: &errors::EXECUTABLE_NOT_FOUND,
                message: format!("component {}: {e}", c.name),
                snippet: None,
            });
        }
        if let Some(dir) = &c.working_dir
            && !dir.as_path().is_dir()
        {
            problems.push(Problem {
                code: &errors::COMPONENT_FAILED,
                message: format!(
                    "component {}: workingDir {} is not a folder",
                    c.name,
                    dir.as_path().display()
                ),
                snippet: None,
            });
        }
    }
    problems
}

/// Every command detector's program can be found and run (DEP_E601, as the curator would
/// say at its first recording).
fn check_detectors(d: &spec::Deployment) -> Vec<Problem> {
    let path_var = std::env::var("PATH").unwrap_or_default();
    d.spec
        .detectors
        .iter()
        .filter_map(|det| Some((det, det.command.as_ref()?.first()?)))
        .filter_map(|(det, program)| {
            let found = crate::runtime::process::resolve_program(program, &path_var, None);
            found.err().map(|e| Problem {
                code: &errors::DETECTOR_NOT_FOUND,
                message: format!("detector {}: {e}", det.name),
                snippet: None,
            })
        })
        .collect()
}

/// The files `spec.connect` names can be read and parsed (DEP_E507, as the connector would say).
fn check_connect_files(d: &spec::Deployment) -> Vec<Problem> {
    let Some(connect) = &d.spec.connect else {
        return Vec::new();
    };
    let mut problems: Vec<Problem> = crate::connect::check_files(connect)
        .into_iter()
        .map(|p| Problem {
            code: errors::lookup(&p.code).unwrap_or(&errors::SECRET_UNREADABLE),
            message: p.message,
            snippet: None,
        })
        .collect();
    if let Some(desired) = &connect.desired {
        problems.extend(check_trusted_keys(desired.trusted_keys.as_path()));
    }
    problems
}

/// spec.connect.desired.trustedKeys: a folder with at least one minisign public key, or the
/// device refuses every version (DEP_E802) and can only be changed on site.
fn check_trusted_keys(dir: &Path) -> Vec<Problem> {
    let problem = |message: String| Problem {
        code: &errors::DESIRED_UNTRUSTED_KEY,
        message,
        snippet: None,
    };
    match crate::remote::signed::load_keys(dir) {
        Err(e) => vec![problem(format!(
            "spec.connect.desired.trustedKeys {}: {e}",
            dir.display()
        ))],
        Ok((keys, bad)) => {
            let mut out = Vec::new();
            if keys.is_empty() {
                out.push(problem(format!(
                    "spec.connect.desired.trustedKeys {} holds no minisign public key (*.pub): every version from the broker would be refused",
                    dir.display()
                )));
            }
            if !bad.is_empty() {
                out.push(problem(format!(
                    "spec.connect.desired.trustedKeys {}: not minisign public keys: {}",
                    dir.display(),
                    bad.join(", ")
                )));
            }
            out
        }
    }
}

/// The recorder's storage is writable and its device healthy, judged as `roost status` judges
/// it (from a live recorder's report, else by a bounded probe of the device).
fn check_recorder(d: &spec::Deployment, state_dir: &Path) -> Vec<Problem> {
    let Some(config) = crate::recorder::RecordConfig::from_deployment(d, state_dir) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    problems.extend(check_storage(&config, state_dir));
    let now = jiff::Timestamp::now();
    if let Err((code, message)) =
        crate::recorder::check_device_or_report(&config.recorder, state_dir, now)
    {
        let code = errors::lookup(code.code).unwrap_or(&errors::AUDIO_DEVICE_UNAVAILABLE);
        problems.push(Problem {
            code,
            message,
            snippet: None,
        });
    }
    problems
}

/// The storage takes files as the recorder will find it: on a mounted disk when `requireMount`
/// says so, and writable (or makeable: the nearest existing folder above it writable). Nothing
/// is created.
fn check_storage(config: &crate::recorder::RecordConfig, state_dir: &Path) -> Option<Problem> {
    let storage = config.storage_path(state_dir);
    let folders = crate::storage::Folders::new(&storage, &config.storage);
    if let Err(e) = folders.check_mounted() {
        let code = errors::lookup(e.code().code).unwrap_or(&errors::STORAGE_UNUSABLE);
        return Some(Problem {
            code,
            message: e.to_string(),
            snippet: None,
        });
    }
    could_write(&storage).err().map(|e| Problem {
        code: &errors::STORAGE_UNUSABLE,
        message: format!("storage {} is not writable: {e}", storage.display()),
        snippet: None,
    })
}

/// Whether roost could write in `dir` without anything being created now: it is a writable
/// folder, or the nearest folder above it that exists is (roost makes the rest when it runs).
fn could_write(dir: &Path) -> std::io::Result<()> {
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => {
                use nix::unistd::{AccessFlags, access};
                return access(at, AccessFlags::W_OK | AccessFlags::X_OK)
                    .map_err(std::io::Error::from);
            }
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is not a folder",
                    at.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                at = at.parent().ok_or(e)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `roost plan`: what a running roost would do with this file, changing nothing.
pub fn plan_offline(file: &Path, state_dir: &Path) -> (String, bool) {
    let deployment = match spec::load_file(file) {
        Ok((d, _)) => d,
        Err(e) => return (format!("{} {e}\n", errors::INVALID_SPEC.code), false),
    };
    let state = StateDir::new(state_dir.to_path_buf());
    let history = History::load(&state.history());
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("roost"));
    let reconciler_cfg = Config {
        file: absolute(file),
        state_dir: state_dir.to_path_buf(),
        exe,
    };
    let extra =
        crate::builtin::Builtins::standard(&reconciler_cfg.exe, state_dir).runs(&deployment);
    let desired = Desired::from_deployment(&deployment, extra);
    let under_systemd =
        crate::status::read(&state.status()).is_ok_and(|s| s.reconciler.runtime == "systemd");
    let observed = if under_systemd {
        match observe_systemd(&desired.deployment) {
            Ok(o) => o,
            Err(e) => {
                return (
                    format!(
                        "{} cannot observe the systemd units: {}\n",
                        errors::RUNTIME_UNREACHABLE.code,
                        errors::chain(&e)
                    ),
                    false,
                );
            }
        }
    } else {
        ProcessRuntime::observe_offline(state_dir)
    };
    let p = plan::plan(&PlanInput {
        desired: &desired,
        observed: &observed,
        history: &history,
        stop_failures: &Default::default(),
        runtime_restarts_itself: under_systemd,
        builtins: &Default::default(),
        now: jiff::Timestamp::now(),
    });
    let mut out = String::new();
    if p.actions.is_empty() {
        out.push_str("No changes: the device already matches the file.\n");
    }
    for a in &p.actions {
        out.push_str(&format!("  {a}\n"));
    }
    out.push_str(&keep_preview(&deployment, state_dir));
    (out, true)
}

/// What the keep rules would delete now, and warnings about rules that keep nothing.
fn keep_preview(deployment: &spec::Deployment, state_dir: &Path) -> String {
    let mut out = String::new();
    for w in crate::curate::keep_warnings(deployment) {
        out.push_str(&format!("warning: {w}\n"));
    }
    let Some(config) = crate::curate::CurateConfig::from_deployment(deployment, state_dir) else {
        return out;
    };
    if config.storage.keep.is_empty() {
        return out;
    }
    match crate::curate::preview(&config) {
        Ok(p) => {
            out.push_str(&format!(
                "Keep rules: of {} recordings now on the storage, {} would be deleted, {} are kept for good, {} wait for a detector (nothing is changed by plan).\n",
                p.recordings,
                p.would_delete.len(),
                p.kept,
                p.waiting
            ));
            for path in p.would_delete.iter().take(20) {
                out.push_str(&format!("  would delete {}\n", path.display()));
            }
            if p.would_delete.len() > 20 {
                out.push_str(&format!("  ... and {} more\n", p.would_delete.len() - 20));
            }
            if p.not_judged > 0 {
                out.push_str(&format!(
                    "  {} more recordings wait for a decision and are not judged by plan (the curator judges them in order, oldest first).\n",
                    p.not_judged
                ));
            }
        }
        Err(e) => out.push_str(&format!(
            "Keep rules: metadata.db cannot be read yet ({e}); nothing to delete.\n"
        )),
    }
    out
}

/// What the systemd manager holds for the deployment (system manager for root, else the user's).
fn observe_systemd(deployment: &str) -> Result<crate::runtime::Observation, AppError> {
    use crate::runtime::Runtime;
    use crate::runtime::systemd::{SystemdRuntime, SystemdTarget};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::Tokio)?;
    rt.block_on(async {
        let target = if nix::unistd::geteuid().is_root() {
            SystemdTarget::System
        } else {
            SystemdTarget::User
        };
        let mut runtime = SystemdRuntime::connect(target).await?;
        Ok(runtime.observe(deployment).await?)
    })
}

/// The JSON Schema of `deployment.yaml`, pretty-printed (`roost schema deployment`).
pub fn deployment_schema() -> String {
    serde_json::to_string_pretty(&schemars::schema_for!(spec::Deployment))
        .expect("schema serializes")
}

/// The JSON Schema of `status.json`, pretty-printed (`roost schema status`). A component's
/// `output` is one of the component processes' output types (the status document itself does
/// not know them: it is below the components in the module graph).
pub fn status_schema() -> String {
    let mut generator = schemars::generate::SchemaSettings::default().into_generator();
    let mut outputs = vec![
        generator.subschema_for::<crate::recorder::RecorderOutput>(),
        generator.subschema_for::<crate::curate::report::CuratorReport>(),
        generator.subschema_for::<crate::connect::report::ConnectReport>(),
    ];
    outputs.push(schemars::json_schema!({"type": "null"}));
    let mut schema = generator.into_root_schema_for::<crate::status::StatusDoc>();
    if let Some(output) = schema.pointer_mut("/$defs/ComponentStatus/properties/output")
        && let Some(output) = output.as_object_mut()
    {
        output.insert(
            "anyOf".into(),
            serde_json::to_value(outputs).expect("schemas"),
        );
    }
    serde_json::to_string_pretty(&schema).expect("schema serializes")
}

/// The JSON Schema of the field page's `/api/view.json`, pretty-printed (`roost schema view`).
pub fn view_schema() -> String {
    serde_json::to_string_pretty(&schemars::schema_for!(crate::serve::view::View))
        .expect("schema serializes")
}

/// Where component `name`'s log is: `<state>/logs/NAME.log`, or under `roost run --dir`
/// `<state>/deployments/<deployment>/logs/<component>.log` for `deployment/component`, or for a
/// component name only one deployment has (two: an error naming them).
fn log_path(state_dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let state = StateDir::new(state_dir.to_path_buf());
    let deployments = state_dir.join("deployments");
    if let Some((deployment, component)) = name.split_once('/') {
        return Ok(StateDir::new(deployments.join(deployment)).log_of(component));
    }
    if state.log_of(name).exists() {
        return Ok(state.log_of(name));
    }
    let found: Vec<PathBuf> = std::fs::read_dir(&deployments)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| StateDir::new(e.path()).log_of(name))
        .filter(|p| p.exists())
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Ok(state.log_of(name)),
        many => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "several deployments have a component {name:?}: {}; say which, e.g. `roost logs DEPLOYMENT/{name}`",
                many.iter()
                    .filter_map(|p| p.parent()?.parent()?.file_name()?.to_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// `roost logs NAME [--follow]`: the rotated files oldest first, then the current one (`NAME`
/// may be `deployment/component` under `roost run --dir`).
pub fn logs(state_dir: &Path, name: &str, follow: bool) -> std::io::Result<()> {
    let state = StateDir::new(state_dir.to_path_buf());
    let current = log_path(state_dir, name)?;
    if !current.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no log for component {name:?} in {}",
                state.logs().display()
            ),
        ));
    }
    let mut out = std::io::stdout().lock();
    for i in (1..=2).rev() {
        if let Ok(bytes) = std::fs::read(crate::runtime::process::rotated(&current, i)) {
            out.write_all(&bytes)?;
        }
    }
    let mut file = std::fs::File::open(&current)?;
    std::io::copy(&mut file, &mut out)?;
    out.flush()?;
    if !follow {
        return Ok(());
    }
    follow_file(&current, file, &mut out)
}

/// Prints what is appended to the log, reopening it when rotation replaces it.
fn follow_file(path: &Path, mut file: std::fs::File, out: &mut impl Write) -> std::io::Result<()> {
    use notify::Watcher;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = tx.send(());
    })
    .map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(std::io::Error::other)?;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        file.read_to_end(&mut buf)?;
        out.write_all(&buf)?;
        out.flush()?;
        let pos = file.stream_position()?;
        if std::fs::metadata(path)
            .map(|m| m.len() < pos)
            .unwrap_or(false)
        {
            file = std::fs::File::open(path)?;
            file.seek(SeekFrom::Start(0))?;
            continue;
        }
        if rx.recv_timeout(Duration::from_secs(3600)).is_err() {
            continue;
        }
    }
}
