//! The systemd runtime against a real `systemd --user` (one private manager per test, see
//! `support/systemd_sandbox.rs`), through the library API. Needs root.

#[path = "support/systemd_sandbox.rs"]
mod sandbox;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use roost::runtime::systemd::{EDITED_SPEC_HASH, MISSING_SPEC_HASH, SystemdRuntime, dbus};
use roost::runtime::{
    ComponentRun, ObservedComponent, ObservedState, Runtime, RuntimeError, RuntimeEvent,
};
use roost::spec::{Backoff, Command, ComponentName, HumanDuration, RestartPolicy};
use sandbox::Sandbox;

const DEPLOYMENT: &str = "field";

fn run(name: &str, argv: &[&str], policy: RestartPolicy) -> ComponentRun {
    ComponentRun {
        deployment: DEPLOYMENT.into(),
        name: ComponentName::try_from(name).unwrap(),
        spec_hash: "hash-1".into(),
        command: Command::try_from(argv.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
        env: BTreeMap::new(),
        working_dir: None,
        restart_policy: policy,
        backoff: Backoff {
            initial: HumanDuration::from_millis(100),
            max: HumanDuration::from_secs(1),
            reset_after: HumanDuration::from_secs(10),
        },
        stop_timeout: Duration::from_secs(5),
        confinement: None,
    }
}

fn sleeper(name: &str, policy: RestartPolicy) -> ComponentRun {
    run(name, &["/bin/sleep", "1000"], policy)
}

async fn connect(sandbox: &Sandbox) -> SystemdRuntime {
    SystemdRuntime::connect(sandbox.target())
        .await
        .expect("connect to the sandbox manager")
}

/// Observes until `want` holds for the component, waking on runtime events (and every 250 ms
/// in case an event was missed); panics with the last observation after `within`.
async fn observe_until(
    rt: &mut SystemdRuntime,
    name: &str,
    within: Duration,
    want: impl Fn(&ObservedComponent) -> bool,
) -> ObservedComponent {
    let deadline = Instant::now() + within;
    loop {
        let observed = rt.observe(DEPLOYMENT).await.expect("observe");
        if let Some(c) = observed.get(name)
            && want(c)
        {
            return c.clone();
        }
        if Instant::now() > deadline {
            panic!("{name} never reached the wanted state; last observation: {observed:#?}");
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), rt.next_event()).await;
    }
}

async fn next_event_matching(
    rt: &mut SystemdRuntime,
    within: Duration,
    want: impl Fn(&RuntimeEvent) -> bool,
) -> RuntimeEvent {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rt.next_event()).await {
            Ok(event) if want(&event) => return event,
            Ok(_) => {}
            Err(_) => panic!("no matching event within {within:?}"),
        }
    }
}

fn running_pid(c: &ObservedComponent) -> Option<u32> {
    match c.state {
        ObservedState::Running { pid, .. } => pid,
        _ => None,
    }
}

async fn service(rt: &SystemdRuntime, unit: &str) -> dbus::ServiceProxy<'static> {
    let conn = rt.connection().expect("connected");
    let manager = dbus::manager_proxy(&conn).await.unwrap();
    let path = manager.load_unit(unit).await.unwrap();
    dbus::service_proxy(&conn, path).await.unwrap()
}

/// Odd and hostile values that the process runtime passes through untouched: under systemd
/// each must reach the process identically (cmdline, environ) and be what the manager holds.
const ODD_VALUES: &[&str] = &[
    "quote\"d",
    "back\\slash",
    "trailing\\",
    "\\n literally",
    "100%",
    "%n %h %%",
    "$HOME",
    "${HOME}",
    "$$",
    "semi;colon",
    ";",
    "sp ace",
    "  leading and trailing  ",
    "it's",
    "",
    " ",
    "ünïcødé ✓ 🎙 中文",
    "#not-a-comment",
    "-x",
    "@at",
    "|pipe",
    "*?[glob]",
    "~",
    "a=b",
    "line one\nline two\n",
    "echo one\necho \"two\" $((1+1))\n",
    "tab\there",
    "cr\rhere",
    "esc\u{1b}[0m",
    "bell\u{7}",
    "del\u{7f}",
    "c1 \u{85} nel",
    "\n",
    "a\nExecStartPre=/bin/touch /tmp/pwned",
    "\"\n[Service]\nUser=root\n\"",
];

#[tokio::test]
async fn hostile_values_reach_the_manager_exactly() {
    let sandbox = Sandbox::start().await;
    let mut rt = connect(&sandbox).await;
    let work = sandbox.dir().join("work dir 100% $HOME; \"q\" \\ ü");
    std::fs::create_dir_all(&work).unwrap();
    // The shell stays (no exec), so its command line keeps every word.
    let mut argv = vec!["/bin/sh", "-c", "while :; do sleep 1; done", "name"];
    argv.extend(ODD_VALUES);
    assert!(ODD_VALUES.len() >= 30);
    let mut r = run("hostile", &argv, RestartPolicy::OnFailure);
    for (i, value) in ODD_VALUES.iter().enumerate() {
        r.env.insert(format!("ODD_{i}"), value.to_string());
    }
    r.working_dir = Some(work.clone());
    rt.start(&r).await.expect("start");

    let unit = SystemdRuntime::unit_name(DEPLOYMENT, "hostile");
    let svc = service(&rt, &unit).await;
    let exec = svc.exec_start().await.unwrap();
    assert_eq!(exec.len(), 1);
    assert_eq!(exec[0].0, "/bin/sh");
    let expected_argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    assert_eq!(exec[0].1, expected_argv);
    // The values are in a 0600 file the manager reads, never in the unit (world-readable) or
    // its Environment property (shown to every user by `systemctl show`).
    assert!(svc.environment().await.unwrap().is_empty());
    let expected_env: Vec<String> = r.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let env_file = rt.env_file(&unit);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&env_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{}", env_file.display());
    let unit_text = std::fs::read_to_string(rt.unit_dir().join(&unit)).unwrap();
    assert!(!unit_text.contains("ODD_"), "{unit_text}");
    assert_eq!(
        svc.working_directory().await.unwrap(),
        work.to_str().unwrap()
    );

    // And the process really got them.
    let c = observe_until(&mut rt, "hostile", Duration::from_secs(5), |c| {
        running_pid(c).is_some()
    })
    .await;
    let pid = running_pid(&c).unwrap();
    let split = |bytes: Vec<u8>| -> Vec<String> {
        let mut v: Vec<String> = bytes
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        v.pop(); // after the last NUL
        v
    };
    let cmdline = split(std::fs::read(format!("/proc/{pid}/cmdline")).unwrap());
    assert_eq!(cmdline, expected_argv);
    let environ = split(std::fs::read(format!("/proc/{pid}/environ")).unwrap());
    let mut round_trips = 0;
    for var in &expected_env {
        assert!(
            environ.contains(var),
            "{var:?} missing from the process environment"
        );
        round_trips += 1;
    }
    eprintln!(
        "figure: {} odd values round-trip under systemd (argv and environment: {round_trips} each)",
        ODD_VALUES.len()
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        work
    );
}

#[tokio::test]
async fn a_working_dir_systemd_cannot_express_is_refused_before_anything_is_written() {
    let sandbox = Sandbox::start().await;
    let mut rt = connect(&sandbox).await;
    for bad in [
        "/srv/a\nb",
        "/srv/tab\there",
        "/srv/trailing ",
        "/srv/back\\",
    ] {
        let mut r = run("bad", &["/bin/echo"], RestartPolicy::Never);
        r.working_dir = Some(bad.into());
        let err = rt.start(&r).await.unwrap_err();
        assert!(
            matches!(err, RuntimeError::InvalidValue { .. }),
            "{bad:?}: {err}"
        );
    }
    assert!(
        !sandbox
            .unit_dir()
            .join(SystemdRuntime::unit_name(DEPLOYMENT, "bad"))
            .exists()
    );
    assert!(rt.observe(DEPLOYMENT).await.unwrap().is_empty());
}

#[tokio::test]
async fn kill_9_is_an_exit_event_then_systemd_restarts_it() {
    let sandbox = Sandbox::start().await;
    let mut rt = connect(&sandbox).await;
    rt.start(&sleeper("rec", RestartPolicy::OnFailure))
        .await
        .unwrap();
    let c = observe_until(&mut rt, "rec", Duration::from_secs(5), |c| {
        running_pid(c).is_some()
    })
    .await;
    let first = running_pid(&c).unwrap();
    assert_eq!(c.spec_hash.as_deref(), Some("hash-1"));
    assert_eq!(c.runtime_restarts, 0);

    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let event = next_event_matching(&mut rt, Duration::from_secs(5), |e| {
        matches!(e, RuntimeEvent::Exited { .. })
    })
    .await;
    let RuntimeEvent::Exited { name, exit } = event else {
        unreachable!()
    };
    assert_eq!(name, "rec");
    assert_eq!((exit.code, exit.signal), (None, Some(9)));

    let c = observe_until(&mut rt, "rec", Duration::from_secs(5), |c| {
        running_pid(c).is_some_and(|p| p != first)
    })
    .await;
    eprintln!(
        "kill -9 -> observed Running with a new pid: {:?}",
        killed_at.elapsed()
    );
    assert_eq!(c.runtime_restarts, 1);
}

#[tokio::test]
async fn an_operator_stop_is_respected_until_roost_starts_it() {
    let sandbox = Sandbox::start().await;
    let mut rt = connect(&sandbox).await;
    // Always (enabled) and OnFailure (not enabled: systemd may unload it once stopped) units;
    // the second exits 0 on SIGTERM, so only the stop itself tells.
    let always = sleeper("uploader", RestartPolicy::Always);
    let on_failure = run(
        "worker",
        &["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"],
        RestartPolicy::OnFailure,
    );
    let mut first = Vec::new();
    for r in [&always, &on_failure] {
        rt.start(r).await.unwrap();
        let c = observe_until(&mut rt, r.name.as_str(), Duration::from_secs(5), |c| {
            running_pid(c).is_some()
        })
        .await;
        first.push(running_pid(&c).unwrap());
    }

    for name in ["uploader", "worker"] {
        let unit = SystemdRuntime::unit_name(DEPLOYMENT, name);
        let out = sandbox.systemctl(&["stop", &unit]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        observe_until(&mut rt, name, Duration::from_secs(5), |c| {
            c.state == ObservedState::StoppedByOperator
        })
        .await;
    }
    // Restart=always, yet systemd does not bring it back, and roost still says so later.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let observed = rt.observe(DEPLOYMENT).await.unwrap();
    assert_eq!(observed["uploader"].state, ObservedState::StoppedByOperator);
    assert_eq!(observed["worker"].state, ObservedState::StoppedByOperator);

    // roost restarted meanwhile: a fresh runtime knows it too (marks in the runtime folder).
    drop(rt);
    let mut rt = connect(&sandbox).await;
    let observed = rt.observe(DEPLOYMENT).await.unwrap();
    assert_eq!(observed["uploader"].state, ObservedState::StoppedByOperator);
    assert_eq!(observed["worker"].state, ObservedState::StoppedByOperator);

    // Until roost starts them again (a changed spec, or a reboot).
    for (r, first) in [&always, &on_failure].into_iter().zip(first) {
        rt.start(r).await.unwrap();
        let c = observe_until(&mut rt, r.name.as_str(), Duration::from_secs(5), |c| {
            running_pid(c).is_some()
        })
        .await;
        assert_ne!(running_pid(&c), Some(first));
    }
}

#[tokio::test]
async fn hand_edited_or_deleted_units_are_detected_and_rewritten() {
    let sandbox = Sandbox::start().await;
    let mut rt = connect(&sandbox).await;
    let r = sleeper("edited", RestartPolicy::OnFailure);
    rt.start(&r).await.unwrap();
    let path = sandbox
        .unit_dir()
        .join(SystemdRuntime::unit_name(DEPLOYMENT, "edited"));
    let written = std::fs::read_to_string(&path).unwrap();
    let c = observe_until(&mut rt, "edited", Duration::from_secs(5), |c| {
        running_pid(c).is_some()
    })
    .await;
    let first = running_pid(&c).unwrap();

    std::fs::write(&path, written.replace("Restart=on-failure", "Restart=no")).unwrap();
    let c = rt.observe(DEPLOYMENT).await.unwrap()["edited"].clone();
    assert_eq!(c.spec_hash.as_deref(), Some(EDITED_SPEC_HASH));
    rt.start(&r).await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
    let c = observe_until(&mut rt, "edited", Duration::from_secs(5), |c| {
        running_pid(c).is_some_and(|p| p != first)
    })
    .await;
    assert_eq!(c.spec_hash.as_deref(), Some("hash-1"));
    let second = running_pid(&c).unwrap();

    std::fs::remove_file(&path).unwrap();
    let c = rt.observe(DEPLOYMENT).await.unwrap()["edited"].clone();
    assert_eq!(c.spec_hash.as_deref(), Some(MISSING_SPEC_HASH));
    rt.start(&r).await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
    observe_until(&mut rt, "edited", Duration::from_secs(5), |c| {
        running_pid(c).is_some_and(|p| p != second) && c.spec_hash.as_deref() == Some("hash-1")
    })
    .await;

    // A file roost did not write is left alone.
    let foreign = run("foreign", &["/bin/true"], RestartPolicy::Never);
    let foreign_path = sandbox
        .unit_dir()
        .join(SystemdRuntime::unit_name(DEPLOYMENT, "foreign"));
    std::fs::write(&foreign_path, "[Service]\nExecStart=/bin/true\n").unwrap();
    assert!(matches!(
        rt.start(&foreign).await,
        Err(RuntimeError::Component { .. })
    ));
    assert!(
        rt.remove(DEPLOYMENT, "foreign", Duration::from_secs(1))
            .await
            .is_err()
    );
    assert!(
        rt.stop(DEPLOYMENT, "foreign", Duration::from_secs(1))
            .await
            .is_err()
    );
    assert_eq!(
        std::fs::read_to_string(&foreign_path).unwrap(),
        "[Service]\nExecStart=/bin/true\n"
    );
}

#[tokio::test]
async fn a_restarted_roost_adopts_running_units_without_restarting_them() {
    let sandbox = Sandbox::start().await;
    let r = sleeper("adopted", RestartPolicy::Always);
    let first = {
        let mut rt = connect(&sandbox).await;
        rt.start(&r).await.unwrap();
        let c = observe_until(&mut rt, "adopted", Duration::from_secs(5), |c| {
            running_pid(c).is_some()
        })
        .await;
        running_pid(&c).unwrap()
    };
    let mut rt = connect(&sandbox).await;
    let observed = rt.observe(DEPLOYMENT).await.unwrap();
    let c = &observed["adopted"];
    assert_eq!(running_pid(c), Some(first));
    assert_eq!(c.spec_hash.as_deref(), Some("hash-1"));
    rt.start(&r).await.unwrap();
    let observed = rt.observe(DEPLOYMENT).await.unwrap();
    assert_eq!(
        running_pid(&observed["adopted"]),
        Some(first),
        "adopting must not restart"
    );
    assert_eq!(observed["adopted"].runtime_restarts, 0);

    // With nothing changing, observing again costs no D-Bus call.
    while let Ok(_event) = tokio::time::timeout(Duration::from_millis(200), rt.next_event()).await {
    }
    rt.observe(DEPLOYMENT).await.unwrap();
    let before = rt.dbus_calls();
    for _ in 0..10 {
        rt.observe(DEPLOYMENT).await.unwrap();
    }
    assert_eq!(
        rt.dbus_calls() - before,
        0,
        "observe with nothing changed made D-Bus calls"
    );
}

#[tokio::test]
async fn stop_then_remove_deletes_the_unit() {
    let sandbox = Sandbox::start().await;
    let mut rt = connect(&sandbox).await;
    // A bare program name: systemd resolves it on its own search path.
    rt.start(&run("gone", &["sleep", "1000"], RestartPolicy::Always))
        .await
        .unwrap();
    let unit = SystemdRuntime::unit_name(DEPLOYMENT, "gone");
    let path = sandbox.unit_dir().join(&unit);
    let wants = sandbox
        .dir()
        .join("config/systemd/user/default.target.wants")
        .join(&unit);
    assert!(wants.exists(), "Always enables the unit");
    observe_until(&mut rt, "gone", Duration::from_secs(5), |c| {
        running_pid(c).is_some()
    })
    .await;

    rt.stop(DEPLOYMENT, "gone", Duration::from_secs(5))
        .await
        .unwrap();
    let observed = rt.observe(DEPLOYMENT).await.unwrap();
    assert_eq!(observed["gone"].state, ObservedState::Inactive);
    assert!(path.exists());
    assert!(
        !wants.exists(),
        "a unit roost stopped is not started at boot"
    );

    rt.remove(DEPLOYMENT, "gone", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(!path.exists());
    assert!(rt.observe(DEPLOYMENT).await.unwrap().is_empty());
    let svc_state = service(&rt, &unit).await;
    let _ = svc_state; // LoadUnit still answers for a missing unit (load state not-found).
}

#[tokio::test]
async fn exits_and_crash_loops_are_reported() {
    let sandbox = Sandbox::start().await;
    let mut rt = connect(&sandbox).await;
    rt.start(&run(
        "once",
        &["/bin/sh", "-c", "sleep 0.2; exit 3"],
        RestartPolicy::Never,
    ))
    .await
    .unwrap();
    let event = next_event_matching(&mut rt, Duration::from_secs(5), |e| {
        matches!(e, RuntimeEvent::Exited { .. })
    })
    .await;
    assert!(
        matches!(event, RuntimeEvent::Exited { ref name, exit } if name == "once" && exit.code == Some(3))
    );
    observe_until(
        &mut rt,
        "once",
        Duration::from_secs(5),
        |c| matches!(c.state, ObservedState::Exited { exit } if exit.code == Some(3)),
    )
    .await;

    // Exits at once under Restart=always: systemd restarts it until the start limit.
    let looping = run("loop", &["/bin/sh", "-c", "exit 1"], RestartPolicy::Always);
    rt.start(&looping).await.unwrap();
    let c = observe_until(&mut rt, "loop", Duration::from_secs(10), |c| {
        matches!(c.state, ObservedState::Exited { .. })
    })
    .await;
    assert!(c.runtime_restarts >= 4, "{c:?}");
    // Roost's start resets the failed state and the start limit.
    rt.start(&looping).await.ok();
    observe_until(&mut rt, "loop", Duration::from_secs(5), |c| {
        c.runtime_restarts >= 1
    })
    .await;

    let missing = run("missing", &["/nonexistent/recorder"], RestartPolicy::Never);
    let err = rt.start(&missing).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::ExecutableNotFound { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn losing_the_manager_is_reported_and_recovered() {
    let mut sandbox = Sandbox::start().await;
    let mut rt = connect(&sandbox).await;
    rt.start(&sleeper("survivor", RestartPolicy::Always))
        .await
        .unwrap();
    observe_until(&mut rt, "survivor", Duration::from_secs(5), |c| {
        running_pid(c).is_some()
    })
    .await;

    sandbox.stop_manager();
    let event = next_event_matching(&mut rt, Duration::from_secs(5), |e| {
        matches!(e, RuntimeEvent::Unreachable { .. })
    })
    .await;
    eprintln!("{event:?}");
    assert!(matches!(
        rt.observe(DEPLOYMENT).await,
        Err(RuntimeError::Unreachable(_))
    ));

    sandbox.start_manager().await;
    next_event_matching(&mut rt, Duration::from_secs(15), |e| {
        *e == RuntimeEvent::Reachable
    })
    .await;
    // The unit is enabled: the new manager started it at "boot", and roost sees it running.
    observe_until(&mut rt, "survivor", Duration::from_secs(10), |c| {
        running_pid(c).is_some() && c.spec_hash.as_deref() == Some("hash-1")
    })
    .await;
}

#[tokio::test]
async fn a_manager_reexec_keeps_units_and_signals() {
    let sandbox = Sandbox::start().await;
    let mut rt = connect(&sandbox).await;
    rt.start(&sleeper("steady", RestartPolicy::OnFailure))
        .await
        .unwrap();
    let c = observe_until(&mut rt, "steady", Duration::from_secs(5), |c| {
        running_pid(c).is_some()
    })
    .await;
    let first = running_pid(&c).unwrap();

    // The manager leaves the bus and comes back (as `systemctl daemon-reexec` of PID 1 does).
    let out = sandbox.systemctl(&["daemon-reexec"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = observe_until(&mut rt, "steady", Duration::from_secs(10), |c| {
        running_pid(c).is_some()
    })
    .await;
    assert_eq!(running_pid(&c), Some(first), "a healthy unit was restarted");

    // Signals still arrive: the watcher subscribed again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    next_event_matching(&mut rt, Duration::from_secs(5), |e| {
        matches!(e, RuntimeEvent::Exited { name, exit } if name == "steady" && exit.signal == Some(9))
    })
    .await;
}

#[tokio::test]
async fn probe_answers_quickly_either_way() {
    let sandbox = Sandbox::start().await;
    assert!(roost::runtime::systemd::probe(&sandbox.target(), Duration::from_secs(2)).await);
    let nowhere = roost::runtime::systemd::SystemdTarget::Address {
        bus_address: format!("unix:path={}", sandbox.dir().join("no-bus").display()),
        unit_dir: sandbox.unit_dir(),
    };
    let asked = Instant::now();
    assert!(!roost::runtime::systemd::probe(&nowhere, Duration::from_secs(2)).await);
    assert!(asked.elapsed() < Duration::from_millis(500));
    assert!(matches!(
        SystemdRuntime::connect(nowhere).await,
        Err(RuntimeError::Unreachable(_))
    ));
}
