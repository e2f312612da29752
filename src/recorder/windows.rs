//! The schedule applied: at each decision point, a file is opened or the frames until the next
//! window are skipped, and the report says when the next file or window is due.

use jiff::Timestamp;

use super::*;

impl<T: WavSample> Recorder<T> {
    /// A new decision at frame `self.index`: open a file, or skip to the next window.
    pub(super) fn decide(&mut self) {
        // Skipping from here on is waiting, unless a fault says otherwise.
        self.discarding = false;
        // The energy policy stops recording once the current file is finished: no next file,
        // and the stream closes at the next chunk.
        if self.supply.stops_recording() {
            self.skip_until = u64::MAX;
            return;
        }
        self.follow_wall_clock();
        let t = self.time_of(self.index);
        match self.schedule.segment_at(t) {
            Segment::Record { end, .. } => {
                let end_index = self.index_of(end).max(self.index + 1);
                (self.report.next_window_at, self.report.next_window_from) = (None, None);
                self.open_file(end_index);
            }
            Segment::Idle { until } => {
                self.skip_until = until
                    .map_or(u64::MAX, |u| self.index_of(u))
                    .max(self.index + 1);
                self.report.expected_file_by = self.expected_after(until);
                self.note_next_window(t, until);
                if matches!(
                    self.report.state,
                    RecorderState::Recording | RecorderState::Starting
                ) {
                    self.set_state(RecorderState::Waiting, self.own_error.clone());
                }
            }
        }
    }

    /// Outside the windows (not merely between two files of a window): when the next window
    /// opens and what that was computed from, so that a technician installing a dawn recorder
    /// at noon sees that it will record tomorrow.
    pub(super) fn note_next_window(&mut self, t: Timestamp, until: Option<Timestamp>) {
        if self.schedule.in_window(t) {
            (self.report.next_window_at, self.report.next_window_from) = (None, None);
            return;
        }
        let spec = &self.config.recorder;
        let windows: Vec<String> = (spec.windows.iter())
            .map(|w| format!("{}-{}", w.start, w.end))
            .collect();
        let solar = windows.iter().any(|w| w.contains("sun"));
        // Never the coordinates themselves: this report reaches status.json, the page and the
        // broker, and a site's location can reveal an endangered species.
        let place = match (&self.config.location, solar) {
            (Some(_), true) => "; sunrise and sunset at spec.location",
            (None, true) => "; sunrise and sunset need spec.location",
            _ => "",
        };
        self.report.next_window_at = until;
        self.report.next_window_from = Some(format!(
            "windows {} ({}){place}",
            windows.join(", "),
            self.schedule
                .time_zone()
                .iana_name()
                .unwrap_or("local time")
        ));
    }

    /// When the first file after an idle period ending at `until` should be complete; `None`
    /// when that is outside every window.
    pub(super) fn expected_after(&self, until: Option<Timestamp>) -> Option<Timestamp> {
        match self.schedule.segment_at(until?) {
            Segment::Record { end, .. } => Some(end),
            Segment::Idle { .. } => None,
        }
    }

    /// Like [`Self::expected_after`], judged from the wall clock (when no samples arrive).
    pub(super) fn expected_by_wall_clock(&self) -> Option<Timestamp> {
        match self.schedule.segment_at(self.now.wall) {
            Segment::Record { end, .. } => Some(end),
            Segment::Idle { until } => self.expected_after(until),
        }
    }
}
