//! What roost makes of a unit's properties: the few values it reads, how `PropertiesChanged`
//! updates them, and the mapping to [`ObservedState`]. Pure: no D-Bus, no clock.

use std::collections::HashMap;

use jiff::Timestamp;
use zbus::OwnedVariant;

use crate::runtime::{ExitInfo, ObservedState};

/// `si_code` values systemd reports in `ExecMainCode`.
pub const CLD_EXITED: i32 = 1;
/// The main process was killed by a signal.
pub const CLD_KILLED: i32 = 2;
/// The main process was killed by a signal and dumped core.
pub const CLD_DUMPED: i32 = 3;
/// `ExecMainStatus` when systemd could not execute the program (EXIT_EXEC).
pub const EXIT_EXEC: i32 = 203;

/// A closed list of systemd's words for one property, parsed where the property is read. A
/// word the list does not know (a newer systemd) is kept as it was read, in `Other`.
macro_rules! systemd_words {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A word this list does not know, or none (`""`, nothing read yet).
            Other(String),
        }

        impl $name {
            /// Reads a word as systemd spells it; one this list does not know is kept in `Other`.
            pub fn parse(text: &str) -> Self {
                match text {
                    $($text => Self::$variant,)*
                    other => Self::Other(other.to_string()),
                }
            }

            /// The word as systemd spells it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Other(text) => text,
                }
            }
        }

        impl Default for $name {
            /// Nothing read yet: the empty word a missing string property gives.
            fn default() -> Self {
                Self::Other(String::new())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

systemd_words! {
    /// A unit's `ActiveState` (org.freedesktop.systemd1(5)).
    ActiveState {
        /// Started and running.
        Active = "active",
        /// Active and reloading its configuration.
        Reloading = "reloading",
        /// Not running, and the last run did not fail (or there was none).
        Inactive = "inactive",
        /// Not running after a failure (an exit code, a signal, a timeout, the start limit).
        Failed = "failed",
        /// On its way to active: starting, or waiting to be restarted.
        Activating = "activating",
        /// On its way to inactive: stopping.
        Deactivating = "deactivating",
        /// Cleaning up after the unit (`systemctl clean`).
        Maintenance = "maintenance",
        /// Refreshing extension images.
        Refreshing = "refreshing",
    }
}

systemd_words! {
    /// A service's `SubState` (systemd's service states; other unit types have other words).
    SubState {
        /// No process runs.
        Dead = "dead",
        /// `ExecCondition=` runs.
        Condition = "condition",
        /// `ExecStartPre=` runs.
        StartPre = "start-pre",
        /// The main process was started and is not yet reported up (forking or notify types).
        Start = "start",
        /// `ExecStartPost=` runs.
        StartPost = "start-post",
        /// The main process runs.
        Running = "running",
        /// The main process ended and the service stays active (`RemainAfterExit=yes`).
        Exited = "exited",
        /// `ExecReload=` runs.
        Reload = "reload",
        /// The reload signal was sent; waiting for the service to finish reloading.
        ReloadSignal = "reload-signal",
        /// The service said it is reloading; waiting for it to say it is ready again.
        ReloadNotify = "reload-notify",
        /// `ExecStop=` runs.
        Stop = "stop",
        /// The watchdog timed out during the stop and its signal was sent; waiting for the processes to
        /// end.
        StopWatchdog = "stop-watchdog",
        /// SIGTERM (or `KillSignal=`) was sent; waiting for the processes to end.
        StopSigterm = "stop-sigterm",
        /// SIGKILL was sent; waiting for the processes to end.
        StopSigkill = "stop-sigkill",
        /// `ExecStopPost=` runs.
        StopPost = "stop-post",
        /// After `ExecStopPost=`: the watchdog signal was sent to what remains.
        FinalWatchdog = "final-watchdog",
        /// After `ExecStopPost=`: SIGTERM was sent to what remains.
        FinalSigterm = "final-sigterm",
        /// After `ExecStopPost=`: SIGKILL was sent to what remains.
        FinalSigkill = "final-sigkill",
        /// The service ended in failure.
        Failed = "failed",
        /// No process runs, and systemd will restart it (systemd 254 and newer).
        DeadBeforeAutoRestart = "dead-before-auto-restart",
        /// The service failed, and systemd will restart it (systemd 254 and newer).
        FailedBeforeAutoRestart = "failed-before-auto-restart",
        /// No process runs, but resources such as stored file descriptors are kept.
        DeadResourcesPinned = "dead-resources-pinned",
        /// Waiting `RestartSec=` before systemd restarts the service.
        AutoRestart = "auto-restart",
        /// The restart job is queued (systemd 254 and newer).
        AutoRestartQueued = "auto-restart-queued",
        /// `systemctl clean` removes the service's folders.
        Cleaning = "cleaning",
    }
}

/// The properties of `org.freedesktop.systemd1.Unit` and `.Service` roost reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitProps {
    /// `LoadState`: whether the manager could load the unit (`loaded`, `not-found`, `masked`, ...).
    pub load_state: String,
    /// `ActiveState`.
    pub active_state: ActiveState,
    /// `SubState`.
    pub sub_state: SubState,
    /// `Result`: how the last run ended (`success`, `exit-code`, `signal`, `start-limit-hit`, ...).
    pub result: String,
    /// `always`, `on-failure`, `no`, ...
    pub restart: String,
    /// `MainPID`: the main process, 0 when there is none.
    pub main_pid: u32,
    /// `NRestarts`: automatic restarts systemd did since the unit was last started or stopped on
    /// request.
    pub n_restarts: u32,
    /// `ExecMainCode`: how the last main process ended: [`CLD_EXITED`], [`CLD_KILLED`] or
    /// [`CLD_DUMPED`]; 0 while none has ended.
    pub exec_main_code: i32,
    /// `ExecMainStatus`: the exit status of the last main process, or the signal that killed it.
    pub exec_main_status: i32,
    /// Microseconds since the epoch; 0 when unset.
    pub exec_main_start_us: u64,
    /// `ExecMainExitTimestamp`: when the last main process ended, in microseconds since the epoch;
    /// 0 when unset.
    pub exec_main_exit_us: u64,
    /// `ActiveEnterTimestamp`: when the unit last became active, in microseconds since the epoch; 0
    /// when unset.
    pub active_enter_us: u64,
    /// The file on disk changed since the manager loaded it.
    pub need_daemon_reload: bool,
}

/// Property names [`UnitProps::merge`] reads; an invalidation of one of them means "fetch again".
pub const READ_PROPERTIES: &[&str] = &[
    "LoadState",
    "ActiveState",
    "SubState",
    "Result",
    "Restart",
    "MainPID",
    "NRestarts",
    "ExecMainCode",
    "ExecMainStatus",
    "ExecMainStartTimestamp",
    "ExecMainExitTimestamp",
    "ActiveEnterTimestamp",
];

impl UnitProps {
    /// Takes every known property present in `values` (a `GetAll` reply or the changed
    /// properties of a signal); others stay as they were.
    pub fn merge(&mut self, values: &HashMap<String, OwnedVariant>) {
        fn text(v: &OwnedVariant) -> Option<String> {
            <&str>::try_from(v).ok().map(str::to_string)
        }
        for (key, value) in values {
            match key.as_str() {
                "LoadState" => self.load_state = text(value).unwrap_or_default(),
                "ActiveState" => {
                    self.active_state = ActiveState::parse(&text(value).unwrap_or_default())
                }
                "SubState" => self.sub_state = SubState::parse(&text(value).unwrap_or_default()),
                "Result" => self.result = text(value).unwrap_or_default(),
                "Restart" => self.restart = text(value).unwrap_or_default(),
                "MainPID" => self.main_pid = u32::try_from(value).unwrap_or_default(),
                "NRestarts" => self.n_restarts = u32::try_from(value).unwrap_or_default(),
                "ExecMainCode" => self.exec_main_code = i32::try_from(value).unwrap_or_default(),
                "ExecMainStatus" => {
                    self.exec_main_status = i32::try_from(value).unwrap_or_default()
                }
                "ExecMainStartTimestamp" => {
                    self.exec_main_start_us = u64::try_from(value).unwrap_or_default()
                }
                "ExecMainExitTimestamp" => {
                    self.exec_main_exit_us = u64::try_from(value).unwrap_or_default()
                }
                "ActiveEnterTimestamp" => {
                    self.active_enter_us = u64::try_from(value).unwrap_or_default()
                }
                "NeedDaemonReload" => {
                    self.need_daemon_reload = bool::try_from(value).unwrap_or_default()
                }
                _ => {}
            }
        }
    }

    /// How the last main process ended, if one ended since the last start.
    pub fn last_exit(&self) -> Option<ExitInfo> {
        if self.exec_main_exit_us == 0 && self.exec_main_code == 0 {
            return None;
        }
        let (code, signal) = match self.exec_main_code {
            CLD_EXITED => (Some(self.exec_main_status), None),
            CLD_KILLED | CLD_DUMPED => (None, Some(self.exec_main_status)),
            _ => (None, None),
        };
        Some(ExitInfo {
            code,
            signal,
            at: timestamp(self.exec_main_exit_us).unwrap_or_else(Timestamp::now),
        })
    }

    /// An exit that leaves nothing to tell: a failure with no main process result (e.g. the
    /// start limit was hit before anything ran).
    fn exit_or_failure(&self) -> ExitInfo {
        match self.last_exit() {
            Some(exit) if exit.code.is_some() || exit.signal.is_some() => exit,
            _ => ExitInfo {
                code: Some(if self.result == "success" { 0 } else { 1 }),
                signal: None,
                at: Timestamp::now(),
            },
        }
    }
}

/// What roost remembers of a unit that the properties cannot tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Roost stopped it (until roost starts it again).
    pub roost_stopped: bool,
    /// A stop roost did not ask for was seen (until roost starts it again or it runs again).
    pub operator_stopped: bool,
}

/// Classifies a unit, then matches exhaustively.
pub fn classify(props: &UnitProps, memory: Memory) -> ObservedState {
    let since = || {
        timestamp(props.exec_main_start_us)
            .or_else(|| timestamp(props.active_enter_us))
            .unwrap_or_else(Timestamp::now)
    };
    let pid = (props.main_pid != 0).then_some(props.main_pid);
    match &props.active_state {
        ActiveState::Active | ActiveState::Reloading => ObservedState::Running {
            pid,
            since: since(),
        },
        ActiveState::Activating => ObservedState::Restarting {
            last_exit: props.last_exit(),
        },
        ActiveState::Deactivating if memory.operator_stopped => ObservedState::StoppedByOperator,
        // Still alive while it stops.
        ActiveState::Deactivating => ObservedState::Running {
            pid,
            since: since(),
        },
        ActiveState::Failed if memory.roost_stopped => ObservedState::Inactive,
        ActiveState::Failed if memory.operator_stopped => ObservedState::StoppedByOperator,
        // Final: a property read never sees the `failed` that precedes an auto-restart (systemd
        // passes through it inside one call; only the signals show it, and the watcher re-reads
        // a unit whose signal says `failed`). Hitting the start limit leaves `Result=exit-code`
        // on 252, not `start-limit-hit`.
        ActiveState::Failed => ObservedState::Exited {
            exit: props.exit_or_failure(),
        },
        ActiveState::Inactive => classify_inactive(props, memory),
        ActiveState::Maintenance | ActiveState::Refreshing | ActiveState::Other(_) => {
            ObservedState::Inactive
        }
    }
}

fn classify_inactive(props: &UnitProps, memory: Memory) -> ObservedState {
    let never_ran = props.exec_main_start_us == 0 && props.exec_main_exit_us == 0;
    let clean_exit = props.exec_main_code == CLD_EXITED && props.exec_main_status == 0;
    if memory.roost_stopped {
        ObservedState::Inactive
    } else if memory.operator_stopped {
        // Before `never_ran`: systemd may have unloaded the stopped unit and forgotten its run.
        ObservedState::StoppedByOperator
    } else if never_ran {
        ObservedState::Inactive
    } else if props.result != "success" {
        ObservedState::Exited {
            exit: props.exit_or_failure(),
        }
    } else if clean_exit && props.restart != "always" {
        // Exit 0 under on-failure/no: done.
        ObservedState::Exited {
            exit: props.exit_or_failure(),
        }
    } else {
        // Nobody roost knows of stopped it, yet systemd did not restart it: Restart=always would
        // have, and a death by SIGTERM/SIGINT/SIGHUP/SIGPIPE counts as clean only for a stop.
        ObservedState::StoppedByOperator
    }
}

fn timestamp(usec: u64) -> Option<Timestamp> {
    (usec != 0)
        .then(|| Timestamp::from_microsecond(i64::try_from(usec).ok()?).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(active: &str, sub: &str, result: &str, restart: &str) -> UnitProps {
        UnitProps {
            load_state: "loaded".into(),
            active_state: ActiveState::parse(active),
            sub_state: SubState::parse(sub),
            result: result.into(),
            restart: restart.into(),
            exec_main_start_us: 1_700_000_000_000_000,
            ..UnitProps::default()
        }
    }

    fn exited(mut p: UnitProps, code: i32, status: i32) -> UnitProps {
        p.exec_main_code = code;
        p.exec_main_status = status;
        p.exec_main_exit_us = 1_700_000_001_000_000;
        p
    }

    const NONE: Memory = Memory {
        roost_stopped: false,
        operator_stopped: false,
    };

    #[test]
    fn running_carries_pid_and_start_time() {
        let mut p = props("active", "running", "success", "always");
        p.main_pid = 42;
        let ObservedState::Running { pid, since } = classify(&p, NONE) else {
            panic!()
        };
        assert_eq!(pid, Some(42));
        assert_eq!(since.as_microsecond(), 1_700_000_000_000_000);
    }

    #[test]
    fn a_crash_being_restarted_is_restarting_with_the_signal() {
        let p = exited(
            props("activating", "auto-restart", "signal", "on-failure"),
            CLD_KILLED,
            9,
        );
        let ObservedState::Restarting {
            last_exit: Some(exit),
        } = classify(&p, NONE)
        else {
            panic!()
        };
        assert_eq!((exit.code, exit.signal), (None, Some(9)));
        // A read never sees the transient `failed` before an auto-restart: `failed` is final.
        let p = exited(
            props("failed", "failed", "signal", "on-failure"),
            CLD_KILLED,
            9,
        );
        assert!(matches!(
            classify(&p, NONE),
            ObservedState::Exited { exit } if exit.signal == Some(9)
        ));
    }

    #[test]
    fn final_failures_are_exits() {
        let p = exited(props("failed", "failed", "exit-code", "no"), CLD_EXITED, 3);
        assert!(
            matches!(classify(&p, NONE), ObservedState::Exited { exit } if exit.code == Some(3))
        );
        let p = exited(
            props("failed", "failed", "start-limit-hit", "always"),
            CLD_EXITED,
            1,
        );
        assert!(
            matches!(classify(&p, NONE), ObservedState::Exited { exit } if exit.code == Some(1))
        );
        let p = exited(props("failed", "failed", "core-dump", "no"), CLD_DUMPED, 11);
        assert!(
            matches!(classify(&p, NONE), ObservedState::Exited { exit } if exit.signal == Some(11))
        );
    }

    #[test]
    fn a_clean_exit_is_exit_zero() {
        let p = exited(
            props("inactive", "dead", "success", "on-failure"),
            CLD_EXITED,
            0,
        );
        assert!(matches!(classify(&p, NONE), ObservedState::Exited { exit } if exit.succeeded()));
    }

    #[test]
    fn stops_are_told_apart_by_memory_and_evidence() {
        let stopped = exited(
            props("inactive", "dead", "success", "on-failure"),
            CLD_KILLED,
            15,
        );
        assert_eq!(classify(&stopped, NONE), ObservedState::StoppedByOperator);
        let roost = Memory {
            roost_stopped: true,
            ..NONE
        };
        assert_eq!(classify(&stopped, roost), ObservedState::Inactive);
        // A program that exits 0 on SIGTERM: only memory tells, except under Restart=always.
        let clean = exited(
            props("inactive", "dead", "success", "on-failure"),
            CLD_EXITED,
            0,
        );
        let operator = Memory {
            operator_stopped: true,
            ..NONE
        };
        assert_eq!(classify(&clean, operator), ObservedState::StoppedByOperator);
        let always = exited(
            props("inactive", "dead", "success", "always"),
            CLD_EXITED,
            0,
        );
        assert_eq!(classify(&always, NONE), ObservedState::StoppedByOperator);
        let mut never_ran = props("inactive", "dead", "success", "always");
        never_ran.exec_main_start_us = 0;
        assert_eq!(classify(&never_ran, NONE), ObservedState::Inactive);
    }

    #[test]
    fn merge_reads_signal_values() {
        let mut p = UnitProps::default();
        let mut values = HashMap::new();
        values.insert(
            "ActiveState".to_string(),
            OwnedVariant::from(zbus::Str::from("failed")),
        );
        values.insert("MainPID".to_string(), OwnedVariant::from(7u32));
        values.insert("ExecMainCode".to_string(), OwnedVariant::from(2i32));
        values.insert(
            "ExecMainExitTimestamp".to_string(),
            OwnedVariant::from(5u64),
        );
        values.insert("Unrelated".to_string(), OwnedVariant::from(true));
        p.merge(&values);
        assert_eq!(
            (
                &p.active_state,
                p.main_pid,
                p.exec_main_code,
                p.exec_main_exit_us
            ),
            (&ActiveState::Failed, 7, 2, 5)
        );
    }

    #[test]
    fn words_read_back_as_read() {
        for word in [
            "active",
            "activating",
            "maintenance",
            "",
            "some-future-state",
        ] {
            assert_eq!(ActiveState::parse(word).to_string(), word);
        }
        for word in ["running", "auto-restart-queued", "stop-sigterm", "mounting"] {
            assert_eq!(SubState::parse(word).as_str(), word);
        }
        assert_eq!(ActiveState::parse("failed"), ActiveState::Failed);
        assert_eq!(SubState::parse("auto-restart"), SubState::AutoRestart);
        assert_eq!(ActiveState::default(), ActiveState::Other(String::new()));
    }
}
