//! The recorder's pace: input far faster than real time is discarded (DEP_E315) until it keeps
//! time again, and between files the stream follows the wall clock when it stepped or drifted.
//! The rules are [`super::timeline`]'s; this applies them to the recorder's state.

use super::*;

impl<T: WavSample> Recorder<T> {
    /// Wall-clock time of frame `index` of the current stream.
    pub(super) fn time_of(&self, index: u64) -> Timestamp {
        self.timeline.time_of(index, self.now.wall)
    }

    /// The first frame index at or after instant `t`.
    pub(super) fn index_of(&self, t: Timestamp) -> u64 {
        self.timeline.index_of(t, self.now.wall)
    }

    pub(super) fn pace(&self) -> Pace {
        self.timeline.pace(self.now, self.report.samples_captured)
    }

    /// Stops recording input that is not real time: the open file (if any) ends, every sample is
    /// discarded and counted, and the error says why until input is real time again.
    pub(super) fn enter_fast_input(&mut self, why: &str) {
        self.end_file();
        self.pacing = Pacing::Discarding {
            seen_on_stream_at: Some(self.now.mono),
        };
        let (samples_s, in_s) =
            (self.timeline).window_seconds(self.now, self.report.samples_captured);
        let message = format!(
            "{why} ({samples_s} s of samples in {in_s:.1} s); they cannot be given true times and are not recorded"
        );
        tracing::error!(code = errors::INPUT_NOT_REAL_TIME.code, "{message}");
        self.restart_pace_window();
        self.report.expected_file_by = None;
        self.set_state(
            RecorderState::InputNotRealTime,
            Some(ReportError::new(errors::INPUT_NOT_REAL_TIME, message)),
        );
    }

    pub(super) fn restart_pace_window(&mut self) {
        self.timeline
            .restart_pace_window(self.now, self.report.samples_captured);
    }

    /// Every two seconds of discarding, looks at the pace again; real time again means a new
    /// anchor on the wall clock, and recording resumes.
    pub(super) fn leave_fast_input_when_real_time(&mut self) {
        let captured = self.report.samples_captured;
        match self.timeline.recovery(self.now, captured) {
            Recovery::Wait => {}
            Recovery::StillOff => {
                // Only input still far too fast (not one merely out of step) closes the stream.
                if self.pace() == Pace::Fast
                    && let Pacing::Discarding {
                        seen_on_stream_at: seen @ None,
                    } = &mut self.pacing
                {
                    *seen = Some(self.now.mono);
                }
                self.restart_pace_window();
            }
            Recovery::Resume => {
                tracing::info!("samples arrive in real time again; recording resumes");
                self.pacing = Pacing::Recording;
                self.timeline.re_anchor(self.index, self.now, captured);
                self.skip_until = self.index;
                self.set_state(RecorderState::Starting, None);
            }
        }
    }

    /// Between files, moves the anchor when sample time and the wall clock differ by a second or
    /// more (see [`Timeline::drift_to_follow`]). Returns whether it moved.
    pub(super) fn follow_wall_clock(&mut self) -> bool {
        let captured = self.report.samples_captured;
        let Some(drift) = self
            .timeline
            .drift_to_follow(self.index, self.now, captured)
        else {
            return false;
        };
        tracing::info!(
            drift_s = drift as f64 / 1e9,
            "the wall clock moved against the sound card (drift or a clock step); re-anchoring between files"
        );
        self.timeline.re_anchor(self.index, self.now, captured);
        true
    }
}
