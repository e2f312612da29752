//! Table tests of planning with time passed in; no I/O.

use super::*;
use crate::history::ComponentHistory;
use crate::observe::ObservedComponent;
use crate::spec::{Backoff, HumanDuration};

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn comp(name: &str, policy: RestartPolicy, deps: &[&str]) -> DesiredComponent {
    DesiredComponent {
        run: ComponentRun {
            deployment: "d".into(),
            name: name.try_into().unwrap(),
            spec_hash: format!("hash-{name}"),
            command: vec!["/bin/true".to_string()].try_into().unwrap(),
            env: Default::default(),
            working_dir: None,
            restart_policy: policy,
            backoff: Backoff {
                initial: HumanDuration::from_secs(1),
                max: HumanDuration::from_secs(8),
                reset_after: HumanDuration::from_secs(60),
            },
            stop_timeout: Duration::from_secs(1),
            confinement: None,
        },
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
    }
}

fn running(name: &str, pid: u32) -> (String, ObservedComponent) {
    (
        name.into(),
        ObservedComponent {
            state: ObservedState::Running {
                pid: Some(pid),
                since: t(0),
            },
            spec_hash: Some(format!("hash-{name}")),
            runtime_restarts: 0,
            stop_timeout: None,
        },
    )
}

fn exited_history(name: &str, code: i32, at: i64, quick: u32) -> (String, ComponentHistory) {
    let mut h = ComponentHistory::new(&format!("hash-{name}"));
    h.last_start = Some(t(at - 1));
    h.last_exit = Some(ExitInfo {
        code: Some(code),
        signal: None,
        at: t(at),
    });
    h.consecutive_failures = quick;
    (name.into(), h)
}

fn run_plan(desired: &Desired, observed: Observation, history: History, now: i64) -> Plan {
    plan(&PlanInput {
        desired,
        observed: &observed,
        history: &history,
        stop_failures: &BTreeMap::new(),
        runtime_restarts_itself: false,
        builtins: &Default::default(),
        now: t(now),
    })
}

fn desired(components: Vec<DesiredComponent>) -> Desired {
    Desired {
        deployment: "d".into(),
        running: true,
        components,
    }
}

#[test]
fn fresh_deployment_starts_only_components_without_pending_dependencies() {
    let d = desired(vec![
        comp("db", RestartPolicy::Always, &[]),
        comp("up", RestartPolicy::Always, &["db"]),
    ]);
    let p = run_plan(&d, Observation::new(), History::default(), 0);
    assert_eq!(
        p.actions.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        ["start db"]
    );
    assert_eq!(
        p.components[1].reason.map(|r| r.to_string()).as_deref(),
        Some("WaitingForDependency")
    );
    assert_eq!(p.phase, Phase::Provisioning);
}

#[test]
fn all_running_is_succeeded_with_nothing_to_do() {
    let d = desired(vec![
        comp("db", RestartPolicy::Always, &[]),
        comp("up", RestartPolicy::Always, &["db"]),
    ]);
    let obs = Observation::from([running("db", 10), running("up", 11)]);
    let p = run_plan(&d, obs, History::default(), 0);
    assert!(p.actions.is_empty());
    assert_eq!(p.phase, Phase::Succeeded);
    assert_eq!(p.components[0].pid, Some(10));
    assert_eq!(p.requeue_after, None);
}

#[test]
fn changed_spec_restarts_that_component_only() {
    let d = desired(vec![
        comp("a", RestartPolicy::Always, &[]),
        comp("b", RestartPolicy::Always, &[]),
    ]);
    let mut obs = Observation::from([running("a", 10), running("b", 11)]);
    obs.get_mut("b").unwrap().spec_hash = Some("old".into());
    let p = run_plan(&d, obs, History::default(), 0);
    assert_eq!(
        p.actions.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        ["restart b (spec changed)"]
    );
}

/// The running instance of an older spec is stopped by its own stop timeout when the runtime
/// knows it (it may differ from the new spec's), else by the new spec's.
#[test]
fn a_restart_stops_the_old_instance_by_its_own_timeout() {
    let d = desired(vec![comp("a", RestartPolicy::Always, &[])]);
    let restart_timeout = |known: Option<Duration>| {
        let mut obs = Observation::from([running("a", 10)]);
        let a = obs.get_mut("a").unwrap();
        (a.spec_hash, a.stop_timeout) = (Some("old".into()), known);
        match &run_plan(&d, obs, History::default(), 0).actions[..] {
            [Action::Restart { run, stop_timeout }] if run.spec_hash == "hash-a" => *stop_timeout,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        restart_timeout(Some(Duration::from_secs(7))),
        Duration::from_secs(7)
    );
    assert_eq!(restart_timeout(None), Duration::from_secs(1));
}

#[test]
fn restart_policies_after_exit_zero_and_failure() {
    // (policy, exit code, expected action, expected status, expected reason)
    let cases = [
        (
            RestartPolicy::Always,
            0,
            true,
            ComponentState::Pending,
            "Starting",
        ),
        (
            RestartPolicy::Always,
            1,
            true,
            ComponentState::Pending,
            "Starting",
        ),
        (
            RestartPolicy::OnFailure,
            0,
            false,
            ComponentState::Stopped,
            "Completed",
        ),
        (
            RestartPolicy::OnFailure,
            1,
            true,
            ComponentState::Pending,
            "Starting",
        ),
        (
            RestartPolicy::Never,
            0,
            false,
            ComponentState::Stopped,
            "Completed",
        ),
        (
            RestartPolicy::Never,
            1,
            false,
            ComponentState::Error,
            "Failed",
        ),
    ];
    for (policy, code, restarts, state, reason) in cases {
        let d = desired(vec![comp("a", policy, &[])]);
        let hist = History {
            components: BTreeMap::from([exited_history("a", code, 0, 1)]),
            ..Default::default()
        };
        // one second later the first back-off (1 s) has passed
        let p = run_plan(&d, Observation::new(), hist, 1);
        assert_eq!(!p.actions.is_empty(), restarts, "{policy:?} {code}");
        assert_eq!(
            (
                p.components[0].status,
                p.components[0].reason.map(|r| r.to_string()).as_deref()
            ),
            (state, Some(reason)),
            "{policy:?} {code}"
        );
        assert_eq!(p.components[0].exit_code, Some(code));
    }
}

#[test]
fn backoff_waits_then_requeues_and_crash_loop_is_reported() {
    let d = desired(vec![comp("a", RestartPolicy::Always, &[])]);
    let hist = History {
        components: BTreeMap::from([exited_history("a", 1, 0, 2)]),
        ..Default::default()
    };
    let p = run_plan(&d, Observation::new(), hist.clone(), 0);
    assert!(p.actions.is_empty());
    assert_eq!(p.requeue_after, Some(Duration::from_secs(2)));
    assert_eq!(
        p.components[0].reason.map(|r| r.to_string()).as_deref(),
        Some("BackOff")
    );
    assert_eq!(p.errors[0].code, "DEP_E152");
    let hist = History {
        components: BTreeMap::from([exited_history("a", 1, 0, 4)]),
        ..Default::default()
    };
    let p = run_plan(&d, Observation::new(), hist.clone(), 0);
    assert_eq!(p.requeue_after, Some(Duration::from_secs(8)));
    assert_eq!(
        (
            p.components[0].status,
            p.components[0].reason.map(|r| r.to_string()).as_deref()
        ),
        (ComponentState::Error, Some("CrashLoopBackOff"))
    );
    assert_eq!(p.errors[0].code, "DEP_E163");
    assert_eq!(p.phase, Phase::FailedToStart);
    let p = run_plan(&d, Observation::new(), hist, 8);
    assert_eq!(p.actions.len(), 1);
}

#[test]
fn dependency_in_error_holds_dependents_back() {
    let d = desired(vec![
        comp("db", RestartPolicy::Never, &[]),
        comp("up", RestartPolicy::Always, &["db"]),
    ]);
    let hist = History {
        components: BTreeMap::from([exited_history("db", 3, 0, 1)]),
        ..Default::default()
    };
    let p = run_plan(&d, Observation::new(), hist, 5);
    assert!(p.actions.is_empty());
    assert_eq!(
        p.components[1].reason.map(|r| r.to_string()).as_deref(),
        Some("DependencyFailed")
    );
    assert!(
        p.errors
            .iter()
            .any(|e| e.code == "DEP_E156" && e.component.as_deref() == Some("up"))
    );
}

#[test]
fn executable_not_found_is_retried_unless_never() {
    let mut h = ComponentHistory::new("hash-a");
    h.start_failed("DEP_E161", "no such file".into(), t(0));
    let hist = History {
        components: BTreeMap::from([("a".to_string(), h)]),
        ..Default::default()
    };
    let d = desired(vec![comp("a", RestartPolicy::Never, &[])]);
    let p = run_plan(&d, Observation::new(), hist.clone(), 100);
    assert!(p.actions.is_empty());
    assert_eq!(p.errors[0].code, "DEP_E161");
    let d = desired(vec![comp("a", RestartPolicy::Always, &[])]);
    assert_eq!(
        run_plan(&d, Observation::new(), hist.clone(), 0).requeue_after,
        Some(Duration::from_secs(1))
    );
    // Retried when the back-off ends, and still reported with its code while it is: a
    // component is never in Error without an error entry (the field report: Error/Starting and
    // no code for 8 s).
    let retry = run_plan(&d, Observation::new(), hist, 1);
    assert_eq!(retry.actions.len(), 1);
    let c = &retry.components[0];
    assert_eq!(
        (c.status, c.reason.map(|r| r.to_string()).as_deref()),
        (ComponentState::Error, Some("ExecutableNotFound"))
    );
    assert_eq!(retry.errors.len(), 1);
    assert_eq!(retry.errors[0].code, "DEP_E161");
}

#[test]
fn no_component_is_ever_in_error_without_an_error_entry() {
    // Every history a component can have, every policy, every moment of its back-off.
    let histories: Vec<ComponentHistory> = {
        let mut failed = ComponentHistory::new("hash-a");
        failed.start_failed("DEP_E161", "gone".into(), t(0));
        let mut looping = exited_history("a", 1, 0, 5).1;
        looping.start_failed("DEP_E152", "spawn failed".into(), t(1));
        vec![
            failed,
            looping,
            exited_history("a", 1, 0, 1).1,
            exited_history("a", 1, 0, 9).1,
            exited_history("a", 0, 0, 1).1,
        ]
    };
    for policy in [
        RestartPolicy::Always,
        RestartPolicy::OnFailure,
        RestartPolicy::Never,
    ] {
        for h in &histories {
            for now in [0, 1, 2, 5, 60, 3600] {
                let hist = History {
                    components: BTreeMap::from([("a".to_string(), h.clone())]),
                    ..Default::default()
                };
                // Alone, and waiting for a dependency that is not running yet.
                let alone = desired(vec![comp("a", policy, &[])]);
                let waiting = desired(vec![comp("dep", policy, &[]), comp("a", policy, &["dep"])]);
                for d in [alone, waiting] {
                    let p = run_plan(&d, Observation::new(), hist.clone(), now);
                    for c in p
                        .components
                        .iter()
                        .filter(|c| c.status == ComponentState::Error)
                    {
                        assert!(
                            p.errors
                                .iter()
                                .any(|e| e.component.as_deref() == Some(c.name.as_str())),
                            "{policy:?} at {now}: {c:?} without an error entry ({:?})",
                            p.errors
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn stopped_state_stops_in_reverse_order_and_removed_components_go() {
    let mut d = desired(vec![
        comp("db", RestartPolicy::Always, &[]),
        comp("up", RestartPolicy::Always, &["db"]),
    ]);
    d.running = false;
    let obs = Observation::from([running("db", 1), running("up", 2), running("old", 3)]);
    let p = run_plan(&d, obs, History::default(), 0);
    let names: Vec<_> = p.actions.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        names,
        ["remove old (no longer in the file)", "stop up", "stop db"]
    );
    assert_eq!(p.phase, Phase::InProgress);
    let p = run_plan(&d, Observation::new(), History::default(), 0);
    assert_eq!(p.phase, Phase::Stopped);
}

#[test]
fn systemd_restarting_unit_is_not_an_error_and_operator_stop_is_respected() {
    let d = desired(vec![comp("a", RestartPolicy::Always, &[])]);
    let mut obs = Observation::from([running("a", 1)]);
    obs.get_mut("a").unwrap().state = ObservedState::Restarting { last_exit: None };
    obs.get_mut("a").unwrap().runtime_restarts = 2;
    let p = plan(&PlanInput {
        desired: &d,
        observed: &obs,
        history: &History::default(),
        stop_failures: &BTreeMap::new(),
        runtime_restarts_itself: true,
        builtins: &Default::default(),
        now: t(0),
    });
    assert!(p.actions.is_empty());
    assert_eq!(
        (p.components[0].status, p.components[0].restart_count),
        (ComponentState::Pending, 2)
    );
    obs.get_mut("a").unwrap().state = ObservedState::StoppedByOperator;
    let p = run_plan(&d, obs, History::default(), 0);
    assert!(p.actions.is_empty());
    assert_eq!(
        p.components[0].reason.map(|r| r.to_string()).as_deref(),
        Some("StoppedByOperator")
    );
    assert_eq!(p.phase, Phase::Succeeded);
}

#[test]
fn a_stop_that_failed_leaves_the_deployment_partially_deprovisioned() {
    let mut d = desired(vec![
        comp("a", RestartPolicy::Always, &[]),
        comp("b", RestartPolicy::Always, &[]),
    ]);
    d.running = false;
    let failures = BTreeMap::from([("a".to_string(), "did not exit after SIGKILL".to_string())]);
    let obs = Observation::from([running("a", 1)]);
    let p = plan(&PlanInput {
        desired: &d,
        observed: &obs,
        history: &History::default(),
        stop_failures: &failures,
        runtime_restarts_itself: false,
        builtins: &Default::default(),
        now: t(0),
    });
    assert_eq!(p.phase, Phase::PartiallyDeprovisioned);
    assert_eq!(
        p.components[0].reason.map(|r| r.to_string()).as_deref(),
        Some("StopFailed")
    );
    assert_eq!(p.components[1].status, ComponentState::Stopped);
    assert!(
        p.errors
            .iter()
            .any(|e| e.component.as_deref() == Some("a") && e.message.contains("SIGKILL"))
    );
    assert_eq!(
        p.actions.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        ["stop a"],
        "the stop is retried"
    );
}

#[test]
fn zero_initial_backoff_still_reports_and_slows_a_crash_loop() {
    let mut c = comp("a", RestartPolicy::Always, &[]);
    c.run.backoff.initial = HumanDuration::from_secs(0);
    let d = desired(vec![c]);
    let first = History {
        components: BTreeMap::from([exited_history("a", 1, 0, 1)]),
        ..Default::default()
    };
    let p = run_plan(&d, Observation::new(), first, 0);
    assert_eq!(p.actions.len(), 1, "the first crash restarts at once");
    let looping = History {
        components: BTreeMap::from([exited_history("a", 1, 0, 3)]),
        ..Default::default()
    };
    let p = run_plan(&d, Observation::new(), looping.clone(), 0);
    assert!(p.actions.is_empty());
    assert_eq!(p.requeue_after, Some(Duration::from_secs(1)));
    assert_eq!(
        p.components[0].reason.map(|r| r.to_string()).as_deref(),
        Some("CrashLoopBackOff")
    );
    let p = run_plan(&d, Observation::new(), looping, 1);
    assert_eq!(p.actions.len(), 1);
    assert_eq!(
        p.components[0].reason.map(|r| r.to_string()).as_deref(),
        Some("CrashLoopBackOff"),
        "restarting, still a loop"
    );
    assert_eq!(p.errors[0].code, "DEP_E163");
}

#[test]
fn user_and_sandbox_of_a_component_of_the_file() {
    let yaml = |extra: &str| {
        format!(
            "apiVersion: roost/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec:\n  components:\n    - name: up\n      command: [/bin/true]\n{extra}"
        )
    };
    let load = |extra: &str| {
        crate::spec::parse_str(std::path::Path::new("d.yaml"), &yaml(extra)).map(|d| {
            let c = &d.spec.components[0];
            (confinement_of(c), c.clone())
        })
    };
    let (none, _) = load("").unwrap();
    assert_eq!(
        none, None,
        "without user: or sandbox:, roost's own user, unconfined"
    );
    let (user_only, _) = load("      user: uploader\n").unwrap();
    let user_only = user_only.unwrap();
    assert_eq!(user_only.user.as_deref(), Some("uploader"));
    assert!(!user_only.hardened && user_only.network);
    let (boxed, _) = load("      sandbox: {writablePaths: [/srv/out], network: false}\n").unwrap();
    let boxed = boxed.unwrap();
    assert!(boxed.hardened && !boxed.network && boxed.user.is_none());
    // Its folders are written, never handed over (they are not roost's).
    assert!(boxed.writable.is_empty());
    assert_eq!(boxed.shared, vec![std::path::PathBuf::from("/srv/out")]);
    for bad in ["-x", "a b", "12345", "x\ny", ""] {
        assert!(
            load(&format!("      user: {bad:?}\n")).is_err(),
            "user {bad:?} accepted"
        );
    }
}

// --- roost run --dir: dependencies between deployments (plan::gate) ---

fn gated(holds: &[gate::Hold], observed: Observation) -> Plan {
    let d = desired(vec![
        comp("a", RestartPolicy::Always, &[]),
        comp("b", RestartPolicy::Always, &[]),
    ]);
    let mut p = run_plan(&d, observed, History::default(), 0);
    gate::gate(&mut p, "d", holds);
    p
}

fn codes(p: &Plan) -> Vec<&str> {
    p.errors.iter().map(|e| e.code.as_str()).collect()
}

#[test]
fn a_dependency_in_error_holds_every_start_and_says_dep_e156() {
    let hold = gate::Hold::InError {
        deployment: "rec".into(),
        why: "DEP_E311: no microphone".into(),
    };
    let p = gated(&[hold], Observation::new());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(codes(&p), ["DEP_E156"]);
    assert!(
        p.errors[0]
            .message
            .contains("dependent deployment \"rec\" is in error state")
    );
    assert!(p.errors[0].component.is_none());
    assert_eq!(p.phase, Phase::FailedToStart);
    for c in &p.components {
        assert_eq!(
            (c.status, c.reason),
            (ComponentState::Error, Some(Reason::DependencyFailed))
        );
    }
}

#[test]
fn what_runs_keeps_running_while_a_dependency_is_in_error() {
    let hold = gate::Hold::InError {
        deployment: "rec".into(),
        why: "x".into(),
    };
    // a runs; b has not started: only b waits, a is untouched, nothing is stopped.
    let p = gated(&[hold], Observation::from([running("a", 10)]));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.components[0].status, ComponentState::Running);
    assert_eq!(p.components[1].reason, Some(Reason::DependencyFailed));
    assert_eq!(codes(&p), ["DEP_E156"]);
    // Everything runs: the deployment stays Succeeded, and the document says Error (DEP_E156).
    let all = gated(
        &[gate::Hold::InError {
            deployment: "rec".into(),
            why: "x".into(),
        }],
        Observation::from([running("a", 10), running("b", 11)]),
    );
    assert_eq!(all.phase, Phase::Succeeded);
    assert!(crate::status::held_by_error(&all.errors));
}

#[test]
fn a_missing_dependency_waits_with_dep_e157_and_a_starting_one_with_dep_e158() {
    let missing = gated(
        &[gate::Hold::Missing {
            deployment: "nobody".into(),
        }],
        Observation::new(),
    );
    assert!(missing.actions.is_empty());
    assert_eq!(codes(&missing), ["DEP_E157"]);
    assert_eq!(missing.phase, Phase::Provisioning);
    assert_eq!(
        missing.components[0].reason,
        Some(Reason::WaitingForDependency)
    );
    assert!(!crate::status::held_by_error(&missing.errors));
    let starting = gate::Hold::NotReady {
        deployment: "rec".into(),
        state: "Provisioning/Pending".into(),
    };
    assert_eq!(
        codes(&gated(std::slice::from_ref(&starting), Observation::new())),
        ["DEP_E158"]
    );
    // Waiting is no news once everything runs (a dependency restarting).
    let all = gated(
        &[starting],
        Observation::from([running("a", 1), running("b", 2)]),
    );
    assert!(all.errors.is_empty(), "{:?}", all.errors);
    assert_eq!(all.phase, Phase::Succeeded);
}

#[test]
fn no_hold_leaves_the_plan_as_it_was() {
    let d = desired(vec![comp("a", RestartPolicy::Always, &[])]);
    let p = run_plan(&d, Observation::new(), History::default(), 0);
    let mut gated = p.clone();
    gate::gate(&mut gated, "d", &[]);
    assert_eq!(gated, p);
}

#[test]
fn bindings_reach_the_files_components_change_their_hash_and_never_override_their_own_env() {
    let mut d = desired(vec![
        comp("recorder", RestartPolicy::Always, &[]),
        comp("up", RestartPolicy::Always, &[]),
    ]);
    d.components[1]
        .run
        .env
        .insert("REC_PORT".into(), "own".into());
    let before = d.clone();
    gate::bind(&mut d, &BTreeMap::new(), &["up"]);
    assert_eq!(
        d, before,
        "no bindings: nothing changes (single-file hashes hold)"
    );
    let env = BTreeMap::from([
        ("REC_PORT".to_string(), "1".to_string()),
        ("REC_DIR".to_string(), "/x".to_string()),
    ]);
    gate::bind(&mut d, &env, &["up"]);
    assert_eq!(
        d.components[0], before.components[0],
        "a built-in takes nothing"
    );
    let up = &d.components[1].run;
    assert_eq!(up.env.get("REC_DIR").map(String::as_str), Some("/x"));
    assert_eq!(up.env.get("REC_PORT").map(String::as_str), Some("own"));
    assert_ne!(up.spec_hash, before.components[1].run.spec_hash);
    // Another value is another hash (the component restarts with it); the same is the same.
    let mut again = before.clone();
    gate::bind(&mut again, &env, &["up"]);
    assert_eq!(again.components[1].run.spec_hash, up.spec_hash);
    let mut other = before.clone();
    let env2 = BTreeMap::from([
        ("REC_PORT".to_string(), "1".to_string()),
        ("REC_DIR".to_string(), "/y".to_string()),
    ]);
    gate::bind(&mut other, &env2, &["up"]);
    assert_ne!(other.components[1].run.spec_hash, up.spec_hash);
}
