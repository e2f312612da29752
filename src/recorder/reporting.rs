//! The recorder's report (`recorder-report.json`): state, error and counters, written when
//! they change and at least every heartbeat.

use crate::component::ReportFile;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use super::*;

impl<T: WavSample> Recorder<T> {
    /// Sets the state and the writer's own error; the report shows that error, or else rows
    /// owed to metadata.db for longer than [`registrar::OWED_GRACE`].
    pub(super) fn set_state(&mut self, state: RecorderState, error: Option<ReportError>) {
        self.own_error = error;
        let error = self.effective_error();
        if self.report.state != state || self.report.error != error {
            self.report.state = state;
            self.report.error = error;
            self.force_report();
        }
    }

    pub(super) fn effective_error(&self) -> Option<ReportError> {
        let stranded = (self.sink.stranded()).map(|(files, why)| health::Stranded { files, why });
        let owed = self.registrar.as_ref().map(Registrar::owed);
        health::effective_error(
            self.own_error.as_ref(),
            stranded,
            owed.as_ref(),
            self.now.mono,
        )
    }

    /// Copies what the registrar did into the report.
    pub(super) fn apply_view(&mut self, view: registrar::RegistrarView) {
        self.registrar_version = view.version;
        self.report.rows_owed = view.rows_owed;
        self.report.files_deleted = view.files_deleted;
        self.report.recently_deleted = view.recently_deleted.into_iter().collect();
        let salvaged = std::mem::take(&mut self.report.repair.salvaged);
        let quarantined_here: Vec<PathBuf> = self
            .report
            .repair
            .quarantined
            .iter()
            .filter(|p| !view.repair.quarantined.contains(p))
            .cloned()
            .collect();
        self.report.repair = view.repair;
        self.report.repair.salvaged = salvaged;
        self.report.repair.quarantined.extend(quarantined_here);
        self.report.repair.databases_set_aside = view.databases_set_aside;
    }

    pub(super) fn force_report(&mut self) {
        if let Err(e) = self.write_report() {
            tracing::warn!("{}", errors::chain(&e));
        }
    }

    /// Called between chunks: shows what the registrar did and rows owed too long, and
    /// refreshes the report at least every [`HEARTBEAT`].
    pub(super) fn heartbeat(&mut self) {
        self.watch_supply();
        self.retry_stranded(false);
        let mut changed = false;
        let owed_before = self.report.rows_owed;
        if let Some(view) = self
            .registrar
            .as_ref()
            .and_then(|r| r.changes(self.registrar_version))
        {
            // The registrar moves on with every row; only what the report shows is news.
            let shown = |r: &RecorderReport| {
                (
                    r.files_deleted,
                    r.recently_deleted.clone(),
                    r.repair.clone(),
                )
            };
            let before = shown(&self.report);
            self.apply_view(view);
            changed = shown(&self.report) != before;
        }
        if let Some(registrar) = &self.registrar {
            let shown = health::rows_shown(&registrar.owed(), self.now.mono, OWED_SHOWN_AFTER);
            changed |= shown != owed_before;
            self.report.rows_owed = shown;
        }
        let error = self.effective_error();
        if error != self.report.error {
            self.report.error = error;
            changed = true;
        }
        if changed || self.now.since(self.last_report_write) >= HEARTBEAT {
            self.force_report();
        }
    }

    pub(super) fn write_report(&mut self) -> Result<(), RecorderError> {
        self.report.warnings = health::warnings(&self.report, self.now.wall);
        self.report.warnings.extend(self.supply.warnings());
        // The report says when it was written, not when the chunk was read.
        let now = Now::read();
        self.report.updated_at = now.wall;
        self.last_report_write = now.mono;
        self.written_due = self.report.expected_file_by;
        self.report
            .write(&self.state_dir)
            .map_err(|source| RecorderError::Report {
                path: RecorderReport::path(&self.state_dir),
                source,
            })
    }
}

/// The report of a recorder that has just started.
pub(super) fn initial_report(
    config: &RecordConfig,
    format: &WavFormat,
    storage_root: &Path,
    now: Timestamp,
) -> RecorderReport {
    RecorderReport {
        pid: std::process::id(),
        state: RecorderState::Starting,
        deployment: config.deployment.clone(),
        device: config.recorder.device.to_string(),
        sample_rate: format.sample_rate,
        channels: format.channels,
        sample_format: format.sample_format.to_string(),
        storage: storage_root.to_path_buf(),
        started_at: now,
        files_written: 0,
        last_file: None,
        last_file_at: None,
        samples_captured: 0,
        samples_dropped: 0,
        samples_discarded: 0,
        overruns: 0,
        files_discarded: 0,
        expected_file_by: None,
        next_window_at: None,
        next_window_from: None,
        error: None,
        repair: Default::default(),
        rows_owed: 0,
        files_deleted: 0,
        recently_deleted: Vec::new(),
        time_overlaps: 0,
        clock_synchronized: clock::synchronized(),
        warnings: Vec::new(),
        power: None,
        updated_at: now,
    }
}
