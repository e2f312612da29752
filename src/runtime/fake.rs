//! A recording fake runtime for in-process tests of the loop's logic on tokio's paused clock:
//! it keeps components in memory, plays each one's scripted behaviour (runs, exits after a
//! while, fails to start, takes its time to stop) on tokio's timers, and records every call
//! with the wall time of the clock it was given. It never replaces the real runtimes in
//! end-to-end tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::{
    ComponentRun, ExitInfo, Observation, ObservedComponent, ObservedState, Runtime, RuntimeError,
    RuntimeEvent,
};
use crate::clock::Clock;

/// What a component does once started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Runs until stopped.
    #[default]
    RunsForever,
    /// Exits by itself `after` its start with exit status `code`.
    ExitsAfter {
        /// How long it runs.
        after: Duration,
        /// Its exit status.
        code: i32,
    },
    /// Its start fails: the program is missing (DEP_E161).
    FailsToStart,
}

/// A call the loop made, with the wall time it was made at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `observe`.
    Observe(Timestamp),
    /// `start` of a component.
    Start(String, Timestamp),
    /// `stop` of a component.
    Stop(String, Timestamp),
    /// `remove` of a component.
    Remove(String, Timestamp),
}

#[derive(Default)]
struct Shared {
    behaviours: BTreeMap<String, Behaviour>,
    /// How long the next stop of a component takes (bounded by the stop's timeout).
    slow_stops: BTreeMap<String, Duration>,
    /// Components being stopped: their scripted exits do not happen.
    stopping: BTreeSet<String>,
    components: BTreeMap<String, ObservedComponent>,
    calls: Vec<Call>,
    /// Every run started, with when.
    runs: Vec<(ComponentRun, Timestamp)>,
    next_pid: u32,
}

/// The test's side of a [`FakeRuntime`]: scripts behaviours and reads the calls.
#[derive(Clone)]
pub struct FakeHandle {
    shared: Arc<Mutex<Shared>>,
}

impl FakeHandle {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets what `component` does on its next starts.
    pub fn script(&self, component: &str, behaviour: Behaviour) {
        self.lock()
            .behaviours
            .insert(component.to_string(), behaviour);
    }

    /// The next stop (or removal) of `component` takes `takes`, or its stop timeout if that is
    /// shorter (then it is killed); it runs meanwhile.
    pub fn slow_stop(&self, component: &str, takes: Duration) {
        self.lock().slow_stops.insert(component.to_string(), takes);
    }

    /// The runs of `component` started so far, with when.
    pub fn runs(&self, component: &str) -> Vec<(ComponentRun, Timestamp)> {
        (self.lock().runs.iter())
            .filter(|(run, _)| run.name.as_str() == component)
            .cloned()
            .collect()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The wall times `component` was started at.
    pub fn starts(&self, component: &str) -> Vec<Timestamp> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Start(name, at) if name == component => Some(at),
                _ => None,
            })
            .collect()
    }
}

/// An in-memory runtime that does not restart anything itself (like the process runtime).
pub struct FakeRuntime {
    shared: Arc<Mutex<Shared>>,
    clock: Arc<dyn Clock>,
    events_tx: UnboundedSender<RuntimeEvent>,
    events: UnboundedReceiver<RuntimeEvent>,
}

impl FakeRuntime {
    /// A fake reading wall time from `clock`, and its test-side handle.
    pub fn new(clock: Arc<dyn Clock>) -> (Self, FakeHandle) {
        let shared = Arc::new(Mutex::new(Shared {
            next_pid: 1000,
            ..Shared::default()
        }));
        let (events_tx, events) = unbounded_channel();
        let handle = FakeHandle {
            shared: shared.clone(),
        };
        let runtime = Self {
            shared,
            clock,
            events_tx,
            events,
        };
        (runtime, handle)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops `name`, taking the time scripted for it (at most `timeout`); it runs meanwhile.
    async fn stop_taking_its_time(&self, name: &str, timeout: Duration) {
        let takes = {
            let mut s = self.lock();
            s.stopping.insert(name.to_string());
            s.slow_stops.remove(name).unwrap_or_default().min(timeout)
        };
        if !takes.is_zero() {
            tokio::time::sleep(takes).await;
        }
        let mut s = self.lock();
        s.stopping.remove(name);
        s.components.remove(name);
    }

    /// Plays an exit after `after`: the component is Exited and the loop gets the event.
    fn exit_later(&self, name: String, pid: u32, after: Duration, code: i32) {
        let (shared, clock, tx) = (
            self.shared.clone(),
            self.clock.clone(),
            self.events_tx.clone(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let exit = ExitInfo {
                code: Some(code),
                signal: None,
                at: clock.now(),
            };
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
            if s.stopping.contains(&name) {
                return;
            }
            let Some(c) = s.components.get_mut(&name) else {
                return;
            };
            // Only the instance that was started exits (not one started after a stop).
            if !matches!(c.state, ObservedState::Running { pid: Some(p), .. } if p == pid) {
                return;
            }
            c.state = ObservedState::Exited { exit };
            let _ = tx.send(RuntimeEvent::Exited { name, exit });
        });
    }
}

impl Runtime for FakeRuntime {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn restarts_itself(&self) -> bool {
        false
    }

    async fn observe(&mut self, _deployment: &str) -> Result<Observation, RuntimeError> {
        let now = self.clock.now();
        let mut s = self.lock();
        s.calls.push(Call::Observe(now));
        Ok(s.components.clone())
    }

    async fn start(&mut self, run: &ComponentRun) -> Result<(), RuntimeError> {
        let name = run.name.to_string();
        let now = self.clock.now();
        let (behaviour, pid) = {
            let mut s = self.lock();
            s.calls.push(Call::Start(name.clone(), now));
            let behaviour = s.behaviours.get(&name).copied().unwrap_or_default();
            if behaviour == Behaviour::FailsToStart {
                return Err(RuntimeError::ExecutableNotFound {
                    program: run.command.program().to_string(),
                    reason: "scripted to fail".into(),
                });
            }
            s.next_pid += 1;
            let pid = s.next_pid;
            let observed = ObservedComponent {
                state: ObservedState::Running {
                    pid: Some(pid),
                    since: now,
                },
                spec_hash: Some(run.spec_hash.clone()),
                runtime_restarts: 0,
                stop_timeout: Some(run.stop_timeout),
            };
            s.components.insert(name.clone(), observed);
            s.runs.push((run.clone(), now));
            (behaviour, pid)
        };
        if let Behaviour::ExitsAfter { after, code } = behaviour {
            self.exit_later(name, pid, after, code);
        }
        Ok(())
    }

    async fn stop(&mut self, _: &str, name: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let now = self.clock.now();
        self.lock().calls.push(Call::Stop(name.to_string(), now));
        self.stop_taking_its_time(name, timeout).await;
        Ok(())
    }

    async fn remove(&mut self, _: &str, name: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let now = self.clock.now();
        self.lock().calls.push(Call::Remove(name.to_string(), now));
        self.stop_taking_its_time(name, timeout).await;
        Ok(())
    }

    async fn next_event(&mut self) -> RuntimeEvent {
        match self.events.recv().await {
            Some(event) => event,
            None => std::future::pending().await,
        }
    }
}
