//! Files and storage as the recorder drives them: a file opened where the schedule says, written,
//! finished or ended early by a fault, placed through [`super::sink`] and handed to the
//! registrar; storage faults and low space reported and retried.

use std::path::{Path, PathBuf};

use jiff::Timestamp;

use super::*;
use crate::power::Conditions;

impl<T: WavSample> Recorder<T> {
    /// Makes the storage ready for a file (mounted if required, folders present); on failure the
    /// error is in the report and nothing was created.
    pub(super) fn prepare_storage(&mut self) -> bool {
        match self.sink.folders().prepare() {
            Ok(()) => {
                // Partial files are looked for before every file, not once: a storage back from
                // a fault (remounted, its journal replayed) may bring some back.
                self.salvage_partials();
                true
            }
            Err(e) => {
                self.storage_failed(&e);
                false
            }
        }
    }

    pub(super) fn storage_failed(&mut self, e: &StorageError) {
        let message = errors::chain(e);
        // Once per fault, not once per retry: SD cards and journals wear.
        if self.report.state != RecorderState::StorageError
            || self.own_error.as_ref().map(|e| e.code.as_str()) != Some(e.code().code)
        {
            tracing::error!(code = e.code().code, "{message}; retrying every second");
        }
        self.release_storage();
        self.report.expected_file_by = None;
        self.set_state(
            RecorderState::StorageError,
            Some(ReportError::new(e.code(), message)),
        );
    }

    /// A failing storage is let go of: metadata.db is closed until the next file's row.
    pub(super) fn release_storage(&mut self) {
        if let Some(registrar) = &self.registrar {
            registrar.release();
        }
    }

    /// Completes the partial files a crash left (file system only: the registrar registers
    /// them with the other files found without a row). Everything done goes to the log and the
    /// report.
    pub(super) fn salvage_partials(&mut self) {
        let config = &self.config;
        let outcomes = self.sink.salvage_partials(|start| guano_of(config, start));
        for outcome in outcomes {
            match outcome {
                Salvage::Completed(file, placed) => {
                    if let Some(target) = self.after_placed(&file, placed) {
                        tracing::warn!(path = %target.display(), frames = file.frames, "repair: completed a recording interrupted by a crash or a storage fault");
                        self.report.repair.salvaged.push(target);
                    }
                }
                Salvage::Empty(temp) => {
                    tracing::warn!(path = %temp.display(), "repair: removed a partial file that holds no audio");
                }
                Salvage::Quarantined { from, to, why } => match to {
                    Ok(to) => {
                        tracing::error!(path = %from.display(), to = %to.display(), "repair: cannot salvage a partial file ({why}); quarantined it");
                        self.report.repair.quarantined.push(to);
                    }
                    Err(e) => tracing::error!("{e}"),
                },
                Salvage::Later => {}
            }
        }
    }

    /// While no file is written (outside the windows, say), a card pulled or unmounted is
    /// reported within a minute, not only when the next window opens; and one that came back
    /// clears the error.
    pub(super) fn check_storage_while_idle(&mut self) {
        if self.index < self.next_storage_check {
            return;
        }
        self.next_storage_check =
            self.index + IDLE_STORAGE_CHECK.as_secs() * u64::from(self.format.sample_rate);
        let usable = self.prepare_storage();
        if usable && self.report.state == RecorderState::StorageError {
            let due = self.expected_by_wall_clock();
            self.report.expected_file_by = due;
            self.set_state(RecorderState::Waiting, None);
        }
    }

    /// Skips a little audio before trying a storage that failed again.
    pub(super) fn retry_storage_soon(&mut self, end_index: u64) {
        let frames = STORAGE_RETRY.as_secs() * u64::from(self.format.sample_rate);
        self.skip_until = end_index.min(self.index + frames.max(1));
        self.discarding = true;
    }

    pub(super) fn open_file(&mut self, end_index: u64) {
        if !self.prepare_storage() {
            self.retry_storage_soon(end_index);
            return;
        }
        let start = self.time_of(self.index);
        let duration_ns = self.config.recorder.duration.as_std().as_nanos() as i128;
        if start.as_nanosecond() - self.now.wall.as_nanosecond() > duration_ns.max(1_000_000_000) {
            self.enter_fast_input(
                "a file would start more than one file duration ahead of the wall clock",
            );
            return;
        }
        let frames_wanted = end_index - self.index;
        let bytes_wanted = frames_wanted * self.format.bytes_per_frame() + wav::RESERVE_EXTRA;
        if !self.space_allows(bytes_wanted, end_index) {
            return;
        }
        // Reserve the file's space now; if the disk cannot hold all of it, record what fits.
        let free = self.sink.folders().free_bytes().unwrap_or(0);
        let (bpf, rate) = (self.format.bytes_per_frame(), self.format.sample_rate);
        let Some(frames) = space::frames_that_fit(free, frames_wanted, bpf, rate) else {
            self.disk_full(
                end_index,
                format!("the disk is full ({free} bytes free); not recording"),
            );
            return;
        };
        match self.create_part(start, frames) {
            Ok((wav, temp)) => {
                let overlap_s = self.overlap_with_earlier(start);
                self.file = Some(OpenFile {
                    wav,
                    temp,
                    start,
                    end_index: self.index + frames,
                    cut_by_disk_full: frames < frames_wanted,
                    dropped_at_start: self.report.samples_dropped,
                    overlap_s,
                    clock_synchronized: self.report.clock_synchronized,
                    power_seen: self.supply.conditions(None),
                    boot_power_at_open: self.supply.since_boot(),
                });
                self.report.expected_file_by = Some(self.time_of(end_index));
                let error = match &self.own_error {
                    // Errors about the stream itself stay until a file proves them gone.
                    Some(e) if e.code == errors::SAMPLES_DROPPED.code => Some(e.clone()),
                    _ => None,
                };
                self.set_state(RecorderState::Recording, error);
                // The due time readers judge by is always the next file's: a report still
                // naming the one just met would read as overdue before the next heartbeat.
                if self.written_due != self.report.expected_file_by {
                    self.force_report();
                }
            }
            Err((e, _)) if storage::is_disk_full(&e) => {
                self.disk_full(
                    end_index,
                    format!("the disk is full ({free} bytes free); not recording"),
                );
            }
            Err((e, temp)) => {
                self.retry_storage_soon(end_index);
                let err = StorageError::Unusable {
                    path: temp,
                    action: "create a recording",
                    source: e,
                };
                self.storage_failed(&err);
            }
        }
    }

    /// Creates `.partial/<start>.wav.part`, never reusing an existing name; reads the clock's
    /// synchronisation for the file's GUANO.
    pub(super) fn create_part(
        &mut self,
        start: Timestamp,
        frames: u64,
    ) -> Result<(WavFile<T>, PathBuf), (std::io::Error, PathBuf)> {
        self.report.clock_synchronized = clock::synchronized();
        let sync = self.config.recorder.effective_sync_interval();
        self.sink.create::<T>(start, self.format, frames, sync)
    }

    /// Seconds by which a file starting at `start` overlaps the newest earlier file, counted and
    /// logged; `None` when it does not.
    ///
    /// Compared with the file before it (this run's previous file; at a start, the newest
    /// registered one), not with the latest end ever: after a clock stepped ahead and back,
    /// the step is told once, not again for every file until the clock catches up with the
    /// files made while it was ahead. Two instants derived from sample counts and rounded
    /// separately may differ by up to one sample: that is no overlap.
    pub(super) fn overlap_with_earlier(&mut self, start: Timestamp) -> Option<f64> {
        let latest = self
            .last_file_end
            .or_else(|| self.registrar.as_ref().and_then(|r| r.view_latest_end()))?;
        let overlap = timeline::overlap_s(latest, start, self.format.sample_rate)?;
        self.report.time_overlaps += 1;
        tracing::warn!(
            code = errors::TIME_OVERLAP.code,
            overlap_s = overlap,
            "a file starts {overlap:.3} s before the end of an earlier one (the wall clock was stepped back, or the sound card's clock drifted and was corrected); both are kept"
        );
        Some(overlap)
    }

    /// Whether a file of `bytes` may be written now under minFreeSpace and onLowSpace.
    pub(super) fn space_allows(&mut self, bytes: u64, end_index: u64) -> bool {
        let folders = self.sink.folders();
        let free = match folders.free_bytes() {
            Ok(free) => free,
            Err(e) => {
                self.retry_storage_soon(end_index);
                self.storage_failed(&e);
                return false;
            }
        };
        let (min, on_low) = (folders.spec().min_free_space, folders.spec().on_low_space);
        let message = match space::verdict(free, min, on_low, bytes) {
            space::Verdict::Room => {
                self.low_space_since_request = None;
                return true;
            }
            space::Verdict::Refuse(message) => message,
            space::Verdict::MakeRoom { wanted_free } => {
                // The registrar deletes; until it finds, in this low-space episode, that it
                // cannot help, minFreeSpace's margin takes this file (the reservation below
                // still cuts it at a truly full disk).
                let Some(registrar) = self.registrar.as_ref() else {
                    return true;
                };
                let seq = registrar.make_room(wanted_free);
                let first = *self.low_space_since_request.get_or_insert(seq);
                match registrar.cannot_make_room(first) {
                    None => return true,
                    Some(why) => space::low_space_message(
                        free,
                        min,
                        &format!("deleteOldest: {why}; not recording"),
                    ),
                }
            }
        };
        if self.report.state != RecorderState::LowSpace {
            tracing::warn!(code = errors::LOW_DISK_SPACE.code, "{message}");
        }
        self.report.files_discarded += 1;
        self.skip_until = end_index;
        self.discarding = true;
        self.report.expected_file_by = None;
        self.set_state(
            RecorderState::LowSpace,
            Some(ReportError::new(errors::LOW_DISK_SPACE, message)),
        );
        false
    }

    pub(super) fn disk_full(&mut self, end_index: u64, message: String) {
        if self.report.state != RecorderState::StorageError {
            tracing::error!(code = errors::DISK_FULL.code, "{message}");
        }
        self.skip_until = end_index;
        self.discarding = true;
        self.report.files_discarded += 1;
        self.report.expected_file_by = None;
        self.set_state(
            RecorderState::StorageError,
            Some(ReportError::new(errors::DISK_FULL, message)),
        );
    }

    /// A write failed mid-file: keep what reached the disk, register it, report.
    pub(super) fn write_failed(&mut self, e: std::io::Error) {
        let Some(file) = self.file.take() else { return };
        let end_index = file.end_index;
        file.wav.abandon();
        let code = if storage::is_disk_full(&e) {
            errors::DISK_FULL
        } else {
            errors::STORAGE_UNUSABLE
        };
        let message = format!(
            "writing {} failed: {e}; the file was ended early",
            file.temp.display()
        );
        tracing::error!(code = code.code, "{message}");
        self.salvage_after_error(&file.temp, file.start, file.overlap_s, file.power_seen);
        self.release_storage();
        if code == errors::DISK_FULL {
            self.skip_until = end_index;
            self.discarding = true;
        } else {
            self.retry_storage_soon(end_index);
        }
        self.report.files_discarded += 1;
        self.report.expected_file_by = None;
        self.set_state(
            RecorderState::StorageError,
            Some(ReportError::new(code, message)),
        );
    }

    /// Keeps what a file that failed holds (checkpointed frames), registered.
    pub(super) fn salvage_after_error(
        &mut self,
        temp: &Path,
        start: Timestamp,
        overlap_s: Option<f64>,
        power: Conditions,
    ) {
        let guano = self.guano(start, self.report.clock_synchronized, overlap_s, power);
        let name = storage::recording_file_name(start);
        match wav::salvage(temp, &guano, &name) {
            Ok(Some((frames, _))) => self.place_and_register(temp, start, frames),
            Ok(None) => {
                let _ = std::fs::remove_file(temp);
            }
            // Kept in .partial/: salvaged (or quarantined) once the storage works again.
            Err(e) => {
                tracing::error!(path = %temp.display(), error = %e, "cannot complete the file now; it stays in .partial/ and is salvaged later");
            }
        }
    }

    pub(super) fn guano(
        &self,
        start: Timestamp,
        clock_synchronized: Option<bool>,
        overlap_s: Option<f64>,
        power: Conditions,
    ) -> Guano {
        Guano {
            clock_synchronized,
            time_overlap_s: overlap_s,
            power: power.any().then(|| power.names().join(", ")),
            ..guano_of(&self.config, start)
        }
    }

    /// Ends the open file where it is (stop, device loss, a gap), keeping it if it holds audio.
    pub(super) fn end_file(&mut self) {
        if let Some(file) = self.file.as_mut() {
            file.end_index = self.index;
            if file.wav.frames() == 0 {
                let file = self.file.take().expect("checked above");
                file.wav.abandon();
                let _ = std::fs::remove_file(&file.temp);
            } else {
                self.finish_file();
            }
        }
    }

    /// Completes the open file: header, GUANO, fsync, rename into recordings/, then hands its
    /// row to the registrar.
    pub(super) fn finish_file(&mut self) {
        let Some(file) = self.file.take() else { return };
        let name = storage::recording_file_name(file.start);
        let guano = self.guano(
            file.start,
            file.clock_synchronized,
            file.overlap_s,
            file.power_seen,
        );
        let dropped = self.report.samples_dropped - file.dropped_at_start;
        match file.wav.finish(&guano, &name) {
            Ok(frames) => self.place_and_register(&file.temp, file.start, frames),
            Err(e) => {
                let code = if storage::is_disk_full(&e) {
                    errors::DISK_FULL
                } else {
                    errors::STORAGE_UNUSABLE
                };
                let message = format!("cannot complete {}: {e}", file.temp.display());
                tracing::error!(code = code.code, "{message}");
                self.salvage_after_error(&file.temp, file.start, file.overlap_s, file.power_seen);
                self.set_state(
                    RecorderState::StorageError,
                    Some(ReportError::new(code, message)),
                );
                return;
            }
        }
        if self.report.state == RecorderState::StorageError && !file.cut_by_disk_full {
            // Placing the file failed: that error stays in the report.
            return;
        }
        let error = if file.cut_by_disk_full {
            Some(ReportError::new(
                errors::DISK_FULL,
                format!("the disk filled: {name} was ended early and registered"),
            ))
        } else if dropped > 0 {
            Some(ReportError::new(
                errors::SAMPLES_DROPPED,
                format!(
                    "{dropped} frames were dropped while {name} was recorded; the file was split at the gap"
                ),
            ))
        } else {
            None
        };
        let state = if file.cut_by_disk_full {
            RecorderState::StorageError
        } else {
            self.report.state
        };
        self.set_state(state, error);
    }

    /// Moves a finished file into recordings/ (never over another file) and hands its row to
    /// the registrar; a file that cannot be moved yet is kept and retried (see [`Sink::place`]).
    pub(super) fn place_and_register(&mut self, temp: &Path, start: Timestamp, frames: u64) {
        let file = Finished {
            temp: temp.to_path_buf(),
            start,
            frames,
            sample_rate: self.format.sample_rate,
            channels: self.format.channels,
        };
        let placed = self.sink.place(file.clone());
        if self.after_placed(&file, placed).is_some() {
            self.force_report();
        }
    }

    /// Registers and counts a placed file, counts one lost with its storage, logs the first
    /// kept; the path when it is in recordings/.
    pub(super) fn after_placed(&mut self, file: &Finished, placed: Placed) -> Option<PathBuf> {
        match placed {
            Placed::Moved(target) => {
                self.registered(file, target.clone());
                Some(target)
            }
            Placed::Gone { frames, why } => {
                // Removed with its storage (rm -rf): nothing left to keep, but counted.
                tracing::error!(code = errors::STORAGE_UNUSABLE.code, path = %file.temp.display(), "{why}; the file was removed with its storage");
                self.report.files_discarded += 1;
                self.report.samples_discarded += frames;
                None
            }
            Placed::Kept { first, why } => {
                if first {
                    tracing::error!(
                        code = errors::STORAGE_UNUSABLE.code,
                        "{why}; the file stays in .partial/ and is moved every second until it can be"
                    );
                }
                None
            }
        }
    }

    /// Hands a placed file's row to the registrar and counts it.
    pub(super) fn registered(&mut self, file: &Finished, target: PathBuf) {
        let duration_s = file.frames as f64 / f64::from(file.sample_rate);
        let end = crate::storage::end_of(file.start, duration_s).unwrap_or(file.start);
        self.last_file_end = Some(end);
        if let Some(registrar) = &self.registrar {
            registrar.register(NewRecording {
                path: target.clone(),
                datetime: file.start,
                duration_s,
                samplerate_hz: file.sample_rate,
                audio_channels: file.channels,
            });
        }
        self.report.files_written += 1;
        self.report.last_file = Some(target);
        // A fact for the report, like updatedAt: when the file was placed, not when its last
        // chunk was read.
        self.report.last_file_at = Some(Now::read().wall);
    }

    /// Tries the files kept in `.partial/` again: once a second at most, or now (`force`).
    pub(super) fn retry_stranded(&mut self, force: bool) {
        let Some((count, _)) = self.sink.stranded() else {
            return;
        };
        let (moved, gone) = self.sink.retry((!force).then_some(self.now.mono));
        for file in &gone {
            tracing::error!(path = %file.temp.display(), "a recording kept in .partial/ was removed before it could be moved");
        }
        let changed = !moved.is_empty() || !gone.is_empty();
        for (file, target) in moved {
            self.registered(&file, target);
        }
        if self.sink.stranded().is_none() {
            tracing::info!(
                count,
                "the recordings kept in .partial/ are in recordings/ now"
            );
        }
        if changed {
            self.force_report();
        }
    }
}

/// The GUANO metadata of a file of this recorder starting at `start`.
pub(super) fn guano_of(config: &RecordConfig, start: Timestamp) -> Guano {
    Guano {
        start,
        deployment: config.deployment.clone(),
        device: config.recorder.device.to_string(),
        latitude_longitude: config
            .location
            .map(|l| (l.latitude.value(), l.longitude.value())),
        clock_synchronized: None,
        time_overlap_s: None,
        power: None,
    }
}
