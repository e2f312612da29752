//! The board's supply and heat as the recorder watches them: looked at from the loop's own
//! wake-ups (at most every [`LOOK_EVERY`]), shown in the report, noted in each file's GUANO
//! (what the firmware said while it was made), and the energy policy's stop applied: the file
//! being written is finished and kept, the stream closed, and recording resumes by itself once
//! power is back past the hysteresis.

use std::time::Duration;

use super::*;
use crate::power::{Conditions, PowerOutput, Reading, Saving, Sensors};
use crate::spec::power::{PowerSpec, SavingLevel};

/// Least time between two looks at the board (a handful of small sysfs reads).
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// Least time between two searches for sensors the board did not show (yet).
const FIND_EVERY: Duration = Duration::from_secs(60);

/// What the recorder knows of the board's power.
pub(super) struct Supply {
    spec: PowerSpec,
    sensors: Sensors,
    last_look: Option<Duration>,
    /// When the sensors were last looked for.
    last_find: Option<Duration>,
    /// Sensors found before disappeared (a tree unmounted, a driver unbound): looked for at
    /// every look until some are back, not once a minute.
    searching: bool,
    reading: Reading,
    saving: Saving,
    /// The warnings and level as last shown: only their change rewrites the report.
    shown: (Vec<ReportError>, SavingLevel),
}

impl Supply {
    /// Finds the board's sensors under `spec.sysfsRoot` and says once which it has.
    pub(super) fn new(spec: Option<PowerSpec>) -> Self {
        let spec = spec.unwrap_or_default();
        let sensors = Sensors::find(spec.sysfs_root.as_path());
        let reading = sensors.read();
        let has = reading.interfaces();
        if has.is_empty() {
            tracing::info!(root = %spec.sysfs_root.as_path().display(), "this board reports no power or temperature sensors; power is not watched");
        } else {
            tracing::info!(sensors = %has.join(", "), "watching the board's power and temperature");
        }
        // The policy's level from the first look: a recorder started under `stop` never
        // opens the device.
        let saving = Saving::default().next(&reading, &spec, crate::power::mono_now());
        Self {
            spec,
            sensors,
            last_look: None,
            last_find: None,
            searching: false,
            reading,
            saving,
            shown: (Vec::new(), SavingLevel::None),
        }
    }

    /// Looks again if [`LOOK_EVERY`] has passed at monotonic `mono` (or `force`); returns
    /// `None` when it did not look, else whether the warnings or the policy's level changed.
    pub(super) fn look(&mut self, mono: Duration, force: bool) -> Option<bool> {
        if !force
            && self
                .last_look
                .is_some_and(|t| mono.saturating_sub(t) < LOOK_EVERY)
        {
            return None;
        }
        self.last_look = Some(mono);
        // A sensor gone, or one missing that may appear late (a HAT's fuel gauge whose driver
        // binds after roost started): looked for again, at most once a minute.
        let due = self
            .last_find
            .is_none_or(|t| mono.saturating_sub(t) >= FIND_EVERY);
        if self.sensors.lost() && !self.searching {
            tracing::warn!(root = %self.sensors.root().display(), "the board's power sensors disappeared; looking for them again");
            self.searching = true;
        }
        if self.searching || (due && self.sensors.incomplete()) {
            self.sensors = Sensors::find(self.sensors.root());
            self.last_find = Some(mono);
        }
        self.reading = self.sensors.read();
        if self.searching && !self.reading.interfaces().is_empty() {
            tracing::info!("the board's power sensors are back");
            self.searching = false;
        }
        self.saving = self.saving.next(&self.reading, &self.spec, mono);
        let now = (self.warnings(), self.saving.level);
        if now == self.shown {
            return Some(false);
        }
        if now.1 != self.shown.1 {
            tracing::warn!(level = ?now.1, "the energy policy changed what runs");
        }
        self.shown = now;
        Some(true)
    }

    /// The firmware's conditions now, with those newly set since boot (a dip between looks).
    pub(super) fn conditions(&self, boot_before: Option<Conditions>) -> Conditions {
        let now = self.reading.now.unwrap_or_default();
        let boot = self.reading.since_boot.unwrap_or_default();
        let before = boot_before.unwrap_or(boot);
        let new_since = Conditions {
            undervoltage: boot.undervoltage && !before.undervoltage,
            frequency_capped: boot.frequency_capped && !before.frequency_capped,
            throttled: boot.throttled && !before.throttled,
            soft_temperature_limit: boot.soft_temperature_limit && !before.soft_temperature_limit,
        };
        now.or(new_since)
    }

    /// The firmware's since-boot conditions now (to tell a dip between two looks).
    pub(super) fn since_boot(&self) -> Option<Conditions> {
        self.reading.since_boot
    }

    /// Whether the energy policy stops recording now.
    pub(super) fn stops_recording(&self) -> bool {
        self.saving.level == SavingLevel::Stop
    }

    /// How often a recorder stopped by the policy looks again.
    pub(super) fn check_every(&self) -> Duration {
        (self.spec.saving.as_ref()).map_or(Duration::from_secs(60), |s| s.check_every.as_std())
    }

    /// The power warnings (DEP_E901..E905) and, while the policy pauses something but
    /// recording, DEP_E906.
    pub(super) fn warnings(&self) -> Vec<ReportError> {
        let mut out = crate::power::warnings(&self.reading, &self.spec, &self.shown.0);
        if self.saving.level == SavingLevel::Reduce {
            out.extend(self.saving.problem(&self.reading));
        }
        out
    }

    /// DEP_E906 as the recorder's error while the policy stops recording.
    pub(super) fn stop_error(&self) -> Option<ReportError> {
        self.saving.problem(&self.reading)
    }

    /// What the report shows: the temperature in whole degrees (its tenths jitter, and each
    /// change would rewrite status.json at the next heartbeat for nothing).
    pub(super) fn output(&self) -> Option<PowerOutput> {
        let mut reading = self.reading.clone();
        reading.temperature_c = reading.temperature_c.map(f64::round);
        (reading != Reading::default()).then_some(PowerOutput {
            reading,
            saving: self.saving.level,
        })
    }
}

impl<T: WavSample> Recorder<T> {
    /// Looks at the board's power (at most every [`LOOK_EVERY`]): notes what the firmware says
    /// in the open file's record, rewrites the report when a warning or the level changed, and
    /// closes the stream when the policy stops recording.
    pub(super) fn watch_supply(&mut self) {
        let Some(changed) = self.supply.look(self.now.mono, false) else {
            return;
        };
        if let Some(file) = self.file.as_mut() {
            let seen = self.supply.conditions(file.boot_power_at_open);
            file.power_seen = file.power_seen.or(seen);
            file.boot_power_at_open = self.supply.since_boot().or(file.boot_power_at_open);
        }
        // Fresh figures ride with the next report; a changed warning or level is said at once.
        self.report.power = self.supply.output();
        if changed {
            self.force_report();
        }
    }

    /// While the policy stops recording: state PowerSaving with DEP_E906, nothing expected,
    /// a look every `checkEvery` (and at a stop request), until power is back.
    pub(super) fn rest_for_power(&mut self) {
        tracing::warn!(
            code = errors::POWER_SAVING.code,
            "recording stops to save power; the last file was finished and kept"
        );
        self.report.expected_file_by = None;
        let error = self.supply.stop_error();
        self.set_state(RecorderState::PowerSaving, error);
        while !self.stopping() && self.supply.stops_recording() {
            std::thread::park_timeout(self.supply.check_every().min(HEARTBEAT));
            self.tick();
            let changed = self.supply.look(self.now.mono, true);
            self.report.power = self.supply.output();
            if changed == Some(true) {
                self.force_report();
            }
            self.heartbeat();
        }
        if !self.stopping() {
            tracing::info!("power is back; recording resumes");
            self.set_state(RecorderState::Starting, None);
        }
    }
}
