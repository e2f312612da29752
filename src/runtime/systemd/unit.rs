//! The unit file roost writes for one component: rendering with every YAML-derived value quoted
//! and escaped per systemd.syntax(7) and systemd.unit(5) specifiers, and reading back the marker
//! line that makes a file roost's. Pure: no I/O. Command words are double-quoted and C-escaped
//! (systemd unescapes quoted words of `ExecStart=`), and the environment goes into a file of its
//! own ([`hardening::environment_file`](super::hardening::environment_file), mode 0600: unit
//! files are world-readable), so newlines, tabs and every other character reach the process as
//! written;
//! what systemd cannot express (`WorkingDirectory=` is not unescaped) is refused when the file
//! is loaded (`spec::Deployment::validate`), and refused here again as a last guard.

use std::fmt::Write as _;
use std::time::Duration;

use crate::runtime::{ComponentRun, RuntimeError};
use crate::spec::RestartPolicy;

/// First words of the first line of every unit roost writes. Roost only changes or removes
/// files that start with it.
pub const MARKER: &str = "# Managed by roost; edits are overwritten.";

/// systemd never restarts faster than this, whatever the back-off says: a tighter loop only
/// burns CPU and trips the start limit at once.
pub const MIN_RESTART_SEC: Duration = Duration::from_millis(100);

/// Start limit: more than this many starts inside the interval puts the unit in
/// `failed (start-limit-hit)`, which roost reports as an exit and restarts with its own back-off.
pub const START_LIMIT_BURST: u32 = 5;
/// The interval is this many times `RestartSec`, and at least [`MIN_START_LIMIT_INTERVAL`].
pub const START_LIMIT_INTERVAL_FACTOR: u32 = 10;
/// Shortest start-limit interval, however short `RestartSec` is.
pub const MIN_START_LIMIT_INTERVAL: Duration = Duration::from_secs(10);

/// What differs between managers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitOptions {
    /// `default.target` for a user manager, `multi-user.target` for the system manager.
    pub wanted_by: &'static str,
    /// `RestartSteps=`/`RestartMaxDelaySec=` exist (systemd 254 and newer).
    pub restart_steps: bool,
    /// The manager may switch users and make namespaces (system manager, or running as root):
    /// confined components get their whole sandbox.
    pub privileged: bool,
    /// `roost run --dir`: each deployment's units go into its own slice
    /// (`roost-<deployment>.slice`, under `roost.slice`), so resource accounting and
    /// `systemctl status` follow deployments. Off for a single file (its units unchanged).
    pub deployment_slice: bool,
}

/// The slice of a deployment's units under `roost run --dir`: `roost-<deployment>.slice`,
/// the deployment's `-` escaped (`\x2d`): in a slice name `-` means a parent slice.
pub fn slice_name(deployment: &str) -> String {
    format!("roost-{}.slice", deployment.replace('-', "\\x2d"))
}

/// What the marker line says about a unit file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The deployment the unit belongs to (`roost-deployment=`).
    pub deployment: String,
    /// The component the unit runs (`roost-component=`).
    pub component: String,
    /// Hash of the spec the file was rendered from (`roost-spec-hash=`).
    pub spec_hash: String,
    /// The rest of the file is exactly what roost wrote (its hash matches the marker).
    pub intact: bool,
}

/// Renders the whole unit file for `run`, whose environment (if any) is in `env_file`.
pub fn render(
    run: &ComponentRun,
    opts: &UnitOptions,
    env_file: &std::path::Path,
) -> Result<String, RuntimeError> {
    let name = run.name.as_str();
    let invalid = |message: String| RuntimeError::InvalidValue {
        name: name.to_string(),
        message,
    };
    if run.spec_hash.is_empty() || !run.spec_hash.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "spec hash {:?} must be printable ASCII without spaces",
            run.spec_hash
        )));
    }
    let mut body = String::new();
    let restart_sec = run.backoff.initial.as_std().max(MIN_RESTART_SEC);
    let max_delay = run.backoff.max.as_std();
    let start_limit_interval =
        (restart_sec * START_LIMIT_INTERVAL_FACTOR).max(MIN_START_LIMIT_INTERVAL);

    body.push_str("[Unit]\n");
    let _ = writeln!(
        body,
        "Description=roost component {} of deployment {}",
        name, run.deployment
    );
    let _ = writeln!(body, "StartLimitIntervalSec={}", usec(start_limit_interval));
    let _ = writeln!(body, "StartLimitBurst={START_LIMIT_BURST}");

    body.push_str("\n[Service]\n");
    // exec: the start job fails when the program cannot be executed, instead of "done" then a
    // 203/EXEC failure.
    body.push_str("Type=exec\n");
    let _ = writeln!(
        body,
        "ExecStart={}",
        exec_line(run.command.argv()).map_err(invalid)?
    );
    if !run.env.is_empty() {
        // Refused here, before any file is written, like every other value.
        super::hardening::environment_file(&run.env).map_err(invalid)?;
        body.push_str(&super::hardening::environment_file_line(env_file).map_err(invalid)?);
    }
    if let Some(dir) = &run.working_dir {
        let _ = writeln!(
            body,
            "WorkingDirectory={}",
            working_directory(dir).map_err(invalid)?
        );
    }
    let _ = writeln!(body, "SyslogIdentifier={name}");
    let restart = match run.restart_policy {
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Never => "no",
    };
    let _ = writeln!(body, "Restart={restart}");
    let _ = writeln!(body, "RestartSec={}", usec(restart_sec));
    if opts.restart_steps && max_delay > restart_sec {
        let _ = writeln!(
            body,
            "RestartSteps={}",
            restart_steps(restart_sec, max_delay)
        );
        let _ = writeln!(body, "RestartMaxDelaySec={}", usec(max_delay));
    }
    // 0 would mean "wait forever" to systemd.
    let _ = writeln!(
        body,
        "TimeoutStopSec={}",
        usec(run.stop_timeout.max(Duration::from_millis(1)))
    );
    body.push_str("KillMode=control-group\n");
    if opts.deployment_slice {
        let _ = writeln!(body, "Slice={}", slice_name(&run.deployment));
    }
    if let Some(c) = &run.confinement {
        body.push_str(&super::hardening::directives(c, opts.privileged).map_err(invalid)?);
    }

    body.push_str("\n[Install]\n");
    let _ = writeln!(body, "WantedBy={}", opts.wanted_by);

    let marker = format!(
        "{MARKER} roost-deployment={} roost-component={} roost-spec-hash={} roost-content-hash={:016x}\n",
        run.deployment,
        name,
        run.spec_hash,
        fnv1a(body.as_bytes())
    );
    Ok(marker + &body)
}

/// Reads the marker of a unit file; `None` when the file is not roost's.
pub fn parse_marker(text: &str) -> Option<Marker> {
    let (first, body) = text.split_once('\n').unwrap_or((text, ""));
    let fields = first.strip_prefix(MARKER)?;
    let mut deployment = None;
    let mut component = None;
    let mut spec_hash = None;
    let mut content_hash = None;
    for word in fields.split_whitespace() {
        match word.split_once('=') {
            Some(("roost-deployment", v)) => deployment = Some(v.to_string()),
            Some(("roost-component", v)) => component = Some(v.to_string()),
            Some(("roost-spec-hash", v)) => spec_hash = Some(v.to_string()),
            Some(("roost-content-hash", v)) => content_hash = u64::from_str_radix(v, 16).ok(),
            _ => {}
        }
    }
    Some(Marker {
        deployment: deployment?,
        component: component?,
        spec_hash: spec_hash.unwrap_or_default(),
        intact: content_hash == Some(fnv1a(body.as_bytes())),
    })
}

/// `ExecStart=` value: `:` turns off `$VAR` expansion (so `$` needs no escaping and the argv
/// reaches the program as written), then every word double-quoted.
fn exec_line(argv: &[String]) -> Result<String, String> {
    let program = argv.first().ok_or("command is empty")?;
    if program.starts_with(['-', '@', ':', '+', '!', '|']) {
        return Err(format!(
            "program {program:?} starts with {:?}, which systemd reads as an ExecStart prefix; use an absolute path",
            &program[..1]
        ));
    }
    if !program.starts_with('/') && program.contains('/') {
        return Err(format!(
            "program {program:?} must be an absolute path or a bare name found on systemd's search path"
        ));
    }
    let mut line = String::from(":");
    for (i, arg) in argv.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        line.push_str(&quote(arg));
    }
    Ok(line)
}

/// `WorkingDirectory=` is neither unquoted nor unescaped by systemd: only specifiers apply. A
/// path systemd would read differently (surrounding blanks, a trailing backslash that continues
/// the line) is refused.
fn working_directory(dir: &std::path::Path) -> Result<String, String> {
    let dir = dir
        .to_str()
        .ok_or_else(|| format!("working directory {dir:?} is not valid UTF-8"))?;
    check_line_safe("workingDir", dir)?;
    if !dir.starts_with('/') {
        return Err(format!("working directory {dir:?} must be absolute"));
    }
    if dir.ends_with(|c: char| c.is_whitespace() || c == '\\') {
        return Err(format!(
            "working directory {dir:?} ends with a blank or a backslash, which systemd would not keep"
        ));
    }
    Ok(dir.replace('%', "%%"))
}

/// A newline would start a new directive; other control characters have no safe spelling.
fn check_line_safe(field: &str, value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "{field} contains the control character {c:?}; newlines and control characters cannot be written to a unit file"
        )),
        None => Ok(()),
    }
}

/// One double-quoted word, C-escaped as systemd unescapes quoted words (systemd.syntax(7)):
/// backslash, quote and every control character escaped (`\n`, `\t`, `\xNN`, `\uNNNN`), `%`
/// doubled (specifiers are expanded before unquoting). Other characters, non-ASCII included,
/// are written as they are.
pub fn quote(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn usec(d: Duration) -> String {
    format!("{}us", d.as_micros())
}

/// Steps for systemd to grow `RestartSec` to `RestartMaxDelaySec` by doubling.
fn restart_steps(initial: Duration, max: Duration) -> u32 {
    let ratio = max.as_secs_f64() / initial.as_secs_f64();
    (ratio.log2().ceil() as u32).clamp(1, 3600)
}

/// FNV-1a, 64 bits: stable across Rust releases (std's hasher is not), so a roost upgrade does
/// not make every unit look hand-edited.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::spec::{Backoff, Command, ComponentName, HumanDuration};

    fn run(argv: &[&str]) -> ComponentRun {
        ComponentRun {
            deployment: "field".into(),
            name: ComponentName::try_from("uploader").unwrap(),
            spec_hash: "abc123".into(),
            command: Command::try_from(argv.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap(),
            env: BTreeMap::new(),
            working_dir: None,
            restart_policy: RestartPolicy::OnFailure,
            backoff: Backoff::default(),
            stop_timeout: Duration::from_secs(10),
            confinement: None,
        }
    }

    const USER: UnitOptions = UnitOptions {
        wanted_by: "default.target",
        restart_steps: false,
        privileged: true,
        deployment_slice: false,
    };
    const ENV: &str = "/etc/systemd/system/roost-env/roost-field-uploader.service.env";

    #[test]
    fn renders_a_complete_unit() {
        let mut r = run(&["/usr/bin/env", "sh", "-c", "echo $HOME; exit 3"]);
        r.env.insert("GREETING".into(), "hello world".into());
        r.working_dir = Some("/srv/field data".into());
        let text = render(&r, &USER, std::path::Path::new(ENV)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with(MARKER));
        for expected in [
            "Description=roost component uploader of deployment field",
            "StartLimitIntervalSec=10000000us",
            "StartLimitBurst=5",
            "Type=exec",
            r#"ExecStart=:"/usr/bin/env" "sh" "-c" "echo $HOME; exit 3""#,
            "EnvironmentFile=/etc/systemd/system/roost-env/roost-field-uploader.service.env",
            "WorkingDirectory=/srv/field data",
            "Restart=on-failure",
            "RestartSec=1000000us",
            "TimeoutStopSec=10000000us",
            "KillMode=control-group",
            "WantedBy=default.target",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("RestartSteps"), "252 has no RestartSteps");
    }

    #[test]
    fn restart_steps_only_where_supported() {
        let mut r = run(&["/bin/true"]);
        r.backoff.initial = HumanDuration::from_secs(1);
        r.backoff.max = HumanDuration::from_secs(60);
        let text = render(
            &r,
            &UnitOptions {
                restart_steps: true,
                ..USER
            },
            std::path::Path::new(ENV),
        )
        .unwrap();
        assert!(text.contains("RestartSteps=6\n"), "{text}");
        assert!(text.contains("RestartMaxDelaySec=60000000us\n"));
    }

    #[test]
    fn restart_sec_has_a_floor_and_policies_map() {
        let mut r = run(&["/bin/true"]);
        r.backoff.initial = HumanDuration::from_millis(1);
        r.restart_policy = RestartPolicy::Always;
        let text = render(&r, &USER, std::path::Path::new(ENV)).unwrap();
        assert!(text.contains("RestartSec=100000us\n") && text.contains("Restart=always\n"));
        r.restart_policy = RestartPolicy::Never;
        assert!(
            render(&r, &USER, std::path::Path::new(ENV))
                .unwrap()
                .contains("Restart=no\n")
        );
        r.stop_timeout = Duration::ZERO;
        assert!(
            render(&r, &USER, std::path::Path::new(ENV))
                .unwrap()
                .contains("TimeoutStopSec=1000us\n")
        );
    }

    #[test]
    fn hostile_words_are_quoted_and_escaped() {
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(quote("100% %n"), r#""100%% %%n""#);
        assert_eq!(quote("$HOME ${X} ; 'q' ü"), r#""$HOME ${X} ; 'q' ü""#);
        assert_eq!(quote(""), r#""""#);
        let text = render(
            &run(&["/bin/echo", ";", "%h", "\\"]),
            &USER,
            std::path::Path::new(ENV),
        )
        .unwrap();
        assert!(
            text.contains(r#"ExecStart=:"/bin/echo" ";" "%%h" "\\""#),
            "{text}"
        );
    }

    #[test]
    fn control_characters_are_escaped_and_working_dir_guarded() {
        for odd in [
            "a\nExecStartPre=/bin/evil",
            "a\rb",
            "tab\there",
            "del\u{7f}",
            "c1\u{85}",
            "bell\u{7}",
        ] {
            let text = render(&run(&["/bin/echo", odd]), &USER, std::path::Path::new(ENV)).unwrap();
            let exec = text.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
            assert!(!exec.chars().any(char::is_control), "{exec:?}");
            assert!(!text.contains("\nExecStartPre"), "no new directive");
            let mut r = run(&["/bin/echo"]);
            r.env.insert("X".into(), odd.into());
            let text = render(&r, &USER, std::path::Path::new(ENV)).unwrap();
            assert!(!text.contains(odd), "a value never reaches the unit file");
            let mut r = run(&["/bin/echo"]);
            r.working_dir = Some(format!("/srv/{odd}").into());
            assert!(matches!(
                render(&r, &USER, std::path::Path::new(ENV)),
                Err(RuntimeError::InvalidValue { .. })
            ));
        }
        assert_eq!(
            quote("a\nb\t\u{1b}\u{85}\\%\""),
            "\"a\\nb\\t\\x1b\\u0085\\\\%%\\\"\""
        );
    }

    #[test]
    fn programs_systemd_would_misread_are_refused() {
        for bad in ["-rm", "@x", ":x", "+x", "!x", "bin/x"] {
            assert!(
                render(&run(&[bad]), &USER, std::path::Path::new(ENV)).is_err(),
                "{bad}"
            );
        }
        assert!(render(&run(&["sleep", "1"]), &USER, std::path::Path::new(ENV)).is_ok());
        let mut r = run(&["/bin/true"]);
        r.env.insert("1BAD".into(), "v".into());
        assert!(render(&r, &USER, std::path::Path::new(ENV)).is_err());
        r = run(&["/bin/true"]);
        r.working_dir = Some("/srv/x\\".into());
        assert!(render(&r, &USER, std::path::Path::new(ENV)).is_err());
        r.working_dir = Some("/srv/x ".into());
        assert!(render(&r, &USER, std::path::Path::new(ENV)).is_err());
        r = run(&["/bin/true"]);
        r.spec_hash = "a b".into();
        assert!(render(&r, &USER, std::path::Path::new(ENV)).is_err());
    }

    #[test]
    fn marker_round_trips_and_detects_edits() {
        let text = render(&run(&["/bin/true"]), &USER, std::path::Path::new(ENV)).unwrap();
        let marker = parse_marker(&text).unwrap();
        assert_eq!(
            marker,
            Marker {
                deployment: "field".into(),
                component: "uploader".into(),
                spec_hash: "abc123".into(),
                intact: true,
            }
        );
        let edited = text.replace("Restart=on-failure", "Restart=no");
        assert!(!parse_marker(&edited).unwrap().intact);
        assert_eq!(parse_marker("[Unit]\nDescription=mine\n"), None);
        assert_eq!(parse_marker(""), None);
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
