//! Measurements for docs/PERFORMANCE.md ("## systemd runtime"), run by `benches/systemd.sh`:
//! `cargo test --test systemd_bench -- --ignored --nocapture --test-threads=1`. Ignored by
//! default: they take a while and print figures rather than assert tight bounds. Needs root.

#[path = "support/systemd_sandbox.rs"]
mod sandbox;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use roost::runtime::systemd::{SystemdRuntime, dbus};
use roost::runtime::{ComponentRun, ObservedState, Runtime};
use roost::spec::{Backoff, Command, ComponentName, HumanDuration, RestartPolicy};
use sandbox::Sandbox;

const DEPLOYMENT: &str = "bench";
const ROUNDS: usize = 10;

fn sleeper(name: &str) -> ComponentRun {
    ComponentRun {
        deployment: DEPLOYMENT.into(),
        name: ComponentName::try_from(name).unwrap(),
        spec_hash: "bench-1".into(),
        command: Command::try_from(vec!["/bin/sleep".to_string(), "100000".to_string()]).unwrap(),
        env: BTreeMap::new(),
        working_dir: None,
        restart_policy: RestartPolicy::OnFailure,
        backoff: Backoff {
            initial: HumanDuration::from_millis(100),
            max: HumanDuration::from_secs(1),
            reset_after: HumanDuration::from_secs(10),
        },
        stop_timeout: Duration::from_secs(5),
        confinement: None,
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn summary(label: &str, mut values: Vec<Duration>) {
    values.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label}: n={} min={:.1} ms median={:.1} ms max={:.1} ms",
        values.len(),
        ms(values[0]),
        ms(values[values.len() / 2]),
        ms(values[values.len() - 1])
    );
}

async fn running_pid(rt: &mut SystemdRuntime, name: &str, not: Option<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let observed = rt.observe(DEPLOYMENT).await.unwrap();
        if let Some(ObservedState::Running { pid: Some(pid), .. }) =
            observed.get(name).map(|c| &c.state)
            && Some(*pid) != not
        {
            return *pid;
        }
        assert!(
            Instant::now() < deadline,
            "{name} not running: {observed:?}"
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), rt.next_event()).await;
    }
}

#[tokio::test]
#[ignore = "benchmark: run by benches/systemd.sh"]
async fn bench_kill_9_to_running_again() {
    let sandbox = Sandbox::start().await;
    let mut rt = SystemdRuntime::connect(sandbox.target()).await.unwrap();
    rt.start(&sleeper("rec")).await.unwrap();
    let unit = SystemdRuntime::unit_name(DEPLOYMENT, "rec");
    let conn = rt.connection().unwrap();
    let manager = dbus::manager_proxy(&conn).await.unwrap();
    let path = manager.load_unit(&unit).await.unwrap();
    let unit_proxy = dbus::unit_proxy(&conn, path).await.unwrap();

    let mut pid = running_pid(&mut rt, "rec", None).await;
    let mut systemd_own = Vec::new();
    let mut roost_runtime = Vec::new();
    for _ in 0..ROUNDS {
        let killed_us = now_us();
        let killed = Instant::now();
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let new_pid = running_pid(&mut rt, "rec", Some(pid)).await;
        roost_runtime.push(killed.elapsed());
        let active_us = unit_proxy.active_enter_timestamp().await.unwrap();
        systemd_own.push(Duration::from_micros(active_us.saturating_sub(killed_us)));
        pid = new_pid;
        // Let the next round start from a settled unit, and keep the start limit (5 in 10 s)
        // out of the measurement.
        tokio::time::sleep(Duration::from_millis(300)).await;
        manager.reset_failed_unit(&unit).await.unwrap();
    }
    println!("RestartSec=100ms, Restart=on-failure, /bin/sleep, {ROUNDS} rounds");
    summary(
        "systemd's own: kill -9 -> ActiveEnterTimestamp of the new process",
        systemd_own,
    );
    summary(
        "roost runtime: kill -9 -> observe() shows Running with the new pid (event-driven)",
        roost_runtime,
    );
}

#[tokio::test]
#[ignore = "benchmark: run by benches/systemd.sh"]
async fn bench_dbus_calls_per_observe() {
    let sandbox = Sandbox::start().await;
    let mut rt = SystemdRuntime::connect(sandbox.target()).await.unwrap();
    let names = ["a", "b", "c", "d", "e"];
    for name in names {
        rt.start(&sleeper(name)).await.unwrap();
    }
    let pid = running_pid(&mut rt, "a", None).await;
    while tokio::time::timeout(Duration::from_millis(300), rt.next_event())
        .await
        .is_ok()
    {}
    let before = rt.dbus_calls();
    let first = rt.observe(DEPLOYMENT).await.unwrap();
    assert_eq!(first.len(), names.len());
    let settle = rt.dbus_calls() - before;

    let before = rt.dbus_calls();
    let started = Instant::now();
    for _ in 0..100 {
        rt.observe(DEPLOYMENT).await.unwrap();
    }
    let per_observe_time = started.elapsed() / 100;
    let idle = rt.dbus_calls() - before;

    // One unit changes: only it is read again.
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let mut events = 0;
    while tokio::time::timeout(Duration::from_millis(500), rt.next_event())
        .await
        .is_ok()
    {
        events += 1;
    }
    let before = rt.dbus_calls();
    let observed = rt.observe(DEPLOYMENT).await.unwrap();
    let after_change = rt.dbus_calls() - before;
    assert!(
        matches!(observed["a"].state, ObservedState::Running { pid: Some(p), .. } if p != pid),
        "{observed:?}"
    );

    println!("{} units", names.len());
    println!("D-Bus calls, first observe after settling: {settle}");
    println!(
        "D-Bus calls per observe, nothing changed: {:.2} (100 observes: {idle}); wall time per observe {per_observe_time:?}",
        idle as f64 / 100.0
    );
    println!(
        "D-Bus calls, first observe after one unit was killed and restarted ({events} events): {after_change}"
    );
    assert_eq!(idle, 0);
}

/// The full loop: the reconciler of `roost run` with the systemd runtime on the sandbox manager
/// (in this process: the same `reconcile::run` the binary calls), then kill -9 of the
/// component's main process until status.json shows it Running with a new pid; and an atomic
/// replace of deployment.yaml adding a component until it is Running there.
#[tokio::test]
#[ignore = "benchmark: run by benches/systemd.sh"]
async fn bench_status_json() {
    tokio::task::LocalSet::new().run_until(status_json()).await;
}

async fn status_json() {
    let sandbox = Sandbox::start().await;
    let file = sandbox.dir().join("deployment.yaml");
    let base = "apiVersion: roost/v1\nkind: Deployment\nmetadata: {name: bench}\nspec:\n  restartPolicy: OnFailure\n  backoff: {initial: 100ms, max: 1s, resetAfter: 10s}\n  components:\n    - name: rec\n      command: [\"/bin/sleep\", \"100000\"]\n";
    let replace = |text: &str| {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    replace(base);
    let state = sandbox.dir().join("state");
    let runtime = SystemdRuntime::connect(sandbox.target()).await.unwrap();
    let cfg = roost::reconcile::Config {
        file: file.clone(),
        state_dir: state.clone(),
        exe: env!("CARGO_BIN_EXE_roost").into(),
    };
    let reconciler = tokio::task::spawn_local(async move {
        let _ = roost::reconcile::run(cfg, runtime, std::future::pending(), || {}).await;
    });
    let status_path = state.join("status.json");
    let read_pid = |name: &str| -> Option<u32> {
        let doc: roost::status::StatusDoc =
            serde_json::from_slice(&std::fs::read(&status_path).ok()?).ok()?;
        let c = doc.components.iter().find(|c| c.name == name)?;
        (c.status == roost::status::ComponentState::Running)
            .then_some(c.pid)
            .flatten()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut pid = loop {
        if let Some(pid) = read_pid("rec") {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "status.json never showed rec Running"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let manager = dbus::manager_proxy(
        &SystemdRuntime::connect(sandbox.target())
            .await
            .unwrap()
            .connection()
            .unwrap(),
    )
    .await
    .unwrap();
    let unit = SystemdRuntime::unit_name(DEPLOYMENT, "rec");
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let killed = Instant::now();
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let new_pid = loop {
            match read_pid("rec") {
                Some(p) if p != pid => break p,
                _ => {}
            }
            assert!(
                killed.elapsed() < Duration::from_secs(10),
                "status.json never showed a new pid"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        rounds.push(killed.elapsed());
        pid = new_pid;
        tokio::time::sleep(Duration::from_millis(300)).await;
        manager.reset_failed_unit(&unit).await.unwrap();
    }
    summary(
        "roost: kill -9 -> status.json shows Running with the new pid",
        rounds,
    );

    let mut adds = Vec::new();
    let mut text = base.to_string();
    for i in 0..ROUNDS {
        let name = format!("added{i}");
        text.push_str(&format!(
            "    - name: {name}\n      command: [\"/bin/sleep\", \"100000\"]\n"
        ));
        let replaced = Instant::now();
        replace(&text);
        while read_pid(&name).is_none() {
            assert!(
                replaced.elapsed() < Duration::from_secs(10),
                "{name} never Running"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        adds.push(replaced.elapsed());
    }
    summary(
        "roost: atomic replace of deployment.yaml adding a component -> unit active and Running in status.json",
        adds,
    );
    reconciler.abort();
}
