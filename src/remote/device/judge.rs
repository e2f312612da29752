//! The health gate's looks and the revert.

use super::*;

/// How long a failed revert waits before it is tried again.
const REVERT_RETRY: Duration = Duration::from_secs(5);

impl Remote {
    /// One look of the health gate, at the loop's newest document. No decision is taken on a
    /// document older than the version (the loop has not taken its files yet) or without a
    /// document of this roost's loop (status.json of a roost that stopped says Stopped).
    pub(super) fn run_gate(&mut self) {
        let Some(g) = self.ledger.gate.clone() else {
            self.gate_next = None;
            return;
        };
        let Some(doc) = self.doc.clone() else {
            return; // the loop's first document wakes this again
        };
        let length = Duration::from_millis(g.length_ms);
        let elapsed = match g.boot_id == ledger::boot_id() {
            true => Duration::from_millis(ledger::boot_ms().saturating_sub(g.opened_ms)),
            false => {
                // Another boot: the time before it is unknown, so the gate starts again whole.
                self.reopen_gate(&g);
                Duration::ZERO
            }
        };
        if !self.loop_took_version(&doc) {
            return self.wait_for_loop(&g, elapsed, length);
        }
        let now = Health::of(&doc);
        let worse = gate::worse(&g.baseline, &now, false).is_some();
        self.worse_since = match worse {
            true => self.worse_since.or(Some(elapsed)),
            false => None,
        };
        match gate::judge(&g.baseline, &now, elapsed, length, self.worse_since) {
            Verdict::Wait { next } => {
                self.gate_next = Some(Instant::now() + next.saturating_sub(elapsed));
            }
            Verdict::Pass if self.link_lost_by(&g) => {
                let reason = "its spec.connect reaches no broker: the device could not be changed from afar again".to_string();
                self.revert(g.version, vec![errors::LINK_DOWN.code.to_string()], reason);
            }
            Verdict::Pass => {
                tracing::info!(
                    version = g.version,
                    "remote desired state: through the health gate"
                );
                self.ledger.gate = None;
                self.gate_next = None;
                self.save();
            }
            Verdict::Revert(codes) => {
                let reason = format!(
                    "worse than before it within the health gate ({}s after applying): {}",
                    elapsed.as_secs(),
                    codes.join(", ")
                );
                self.revert(g.version, codes, reason);
            }
        }
    }

    /// Whether `doc` reflects the version's files: a new generation, or the file refused.
    fn loop_took_version(&mut self, doc: &StatusDoc) -> bool {
        let took = self
            .gen_at_apply
            .is_none_or(|g| doc.generation != g || doc.spec_error.is_some());
        if took {
            self.gen_at_apply = None;
        }
        took
    }

    /// The loop has not taken the version yet: look again soon; past the gate and its settle
    /// time, the version goes back (a loop that cannot take it says nothing about it).
    fn wait_for_loop(&mut self, g: &GateRecord, elapsed: Duration, length: Duration) {
        if elapsed >= length + gate::settle(length) {
            let reason = "the deployment files of the version were never taken up by roost's loop within the gate".to_string();
            return self.revert(
                g.version,
                vec![errors::DESIRED_REVERTED.code.to_string()],
                reason,
            );
        }
        self.gate_next = Some(Instant::now() + Duration::from_secs(1));
    }

    fn reopen_gate(&mut self, g: &GateRecord) {
        let mut g = g.clone();
        g.boot_id = ledger::boot_id();
        g.opened_ms = ledger::boot_ms();
        self.ledger.gate = Some(g);
        self.save();
    }

    /// Puts the files before `version` back. A write that fails keeps the gate open and is
    /// tried again; with nothing kept to go back to, the version stays and the report says so.
    pub(super) fn revert(&mut self, version: u64, codes: Vec<String>, reason: String) {
        let Some(previous) = ledger::load_previous(&self.state_dir) else {
            tracing::error!(
                version,
                "remote desired state: nothing kept to go back to; the version stays"
            );
            self.close_gate();
            self.ledger.reverted = Some(RemoteReverted {
                version,
                codes,
                reason: format!(
                    "{reason}; nothing was kept to go back to, so its files stay in force"
                ),
            });
            return self.save();
        };
        let back = ledger::hash(&self.target.as_written(&previous));
        let reverted = RemoteReverted {
            version,
            codes,
            reason,
        };
        self.ledger.reverting = Some((back, reverted.clone()));
        self.save();
        if let Err(e) = self.target.write(&previous) {
            tracing::error!(version, error = %e, "remote desired state: cannot write the files to go back to; trying again");
            self.ledger.reverting = None;
            self.save();
            self.gate_next = Some(Instant::now() + REVERT_RETRY);
            return;
        }
        self.finish_revert(back, reverted);
        self.follow_files();
    }

    /// The files before the version are back (`back` their hash): the ledger says so.
    fn finish_revert(&mut self, back: u64, reverted: RemoteReverted) {
        tracing::warn!(version = reverted.version, codes = ?reverted.codes, reason = %reverted.reason, "remote desired state: version reverted");
        self.close_gate();
        self.ledger.reverting = None;
        self.ledger.applied = self.ledger.previous;
        self.ledger.written_hash = Some(back);
        self.ledger.reverted = Some(reverted);
        self.save();
    }

    /// At start: a revert cut by a crash is finished when its files are in place; otherwise
    /// its gate is still open and judges again.
    pub(super) fn settle_reverting(&mut self) {
        let Some((back, reverted)) = self.ledger.reverting.take() else {
            return;
        };
        match ledger::hash(&self.target.read()) == back {
            true => self.finish_revert(back, reverted),
            false => self.save(),
        }
    }

    fn close_gate(&mut self) {
        self.ledger.gate = None;
        self.gate_next = None;
        self.worse_since = None;
        self.gen_at_apply = None;
    }

    /// A version that changed the link's settings and never connected with them during its
    /// gate: it would cut the device off from the next version.
    fn link_lost_by(&self, g: &GateRecord) -> bool {
        let now = self.link.as_ref().map(fingerprint);
        g.link_before.is_some() && now.is_some() && now != g.link_before && !self.connected_in_gate
    }
}

/// The settings of a link, as a number: a gate knows whether its version changed them.
pub(super) fn fingerprint(link: &Link) -> u64 {
    let text = format!("{:?} {}", link.mqtt, link.device);
    ledger::hash(&Files::from([(String::new(), text)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device whose deployment file holds `text`, its ledger `ledger`, and `previous`
    /// kept as the files before the version.
    fn device(dir: &Path, text: &str, previous: &str, ledger: Ledger) -> Remote {
        let file = dir.join("deployment.yaml");
        std::fs::write(&file, text).unwrap();
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        ledger::save_previous(
            &state,
            &Files::from([("deployment.yaml".into(), previous.into())]),
        )
        .unwrap();
        ledger.save(&state).unwrap();
        let (tx, _rx) = tokio::sync::watch::channel(None);
        Remote::new(Target::File(file), state, tx)
    }

    fn gate(version: u64) -> GateRecord {
        GateRecord {
            version,
            boot_id: ledger::boot_id(),
            opened_ms: ledger::boot_ms(),
            length_ms: 10_000,
            baseline: Health::default(),
            link_before: None,
        }
    }

    fn named(text: &str) -> u64 {
        ledger::hash(&Files::from([("deployment.yaml".into(), text.into())]))
    }

    fn reverted(version: u64) -> RemoteReverted {
        RemoteReverted {
            version,
            codes: vec!["DEP_E161".into()],
            reason: "worse".into(),
        }
    }

    #[test]
    fn a_revert_cut_by_a_crash_is_finished_or_judged_again_never_taken_for_a_local_edit() {
        // (files on disk at restart, the revert is finished?)
        for (on_disk, finished) in [("old", true), ("bad", false)] {
            let tmp = tempfile::tempdir().unwrap();
            let ledger = Ledger {
                highest: 2,
                desired: Some(2),
                applied: Some(2),
                written_hash: Some(named("bad")),
                previous: Some(1),
                gate: Some(gate(2)),
                reverting: Some((named("old"), reverted(2))),
                ..Ledger::default()
            };
            let mut r = device(tmp.path(), on_disk, "old", ledger);
            r.settle_applying();
            r.settle_reverting();
            r.follow_files();
            let l = Ledger::load(tmp.path().join("state").as_path());
            assert_eq!(l.reverting, None, "{on_disk}");
            match finished {
                true => {
                    assert_eq!((l.applied, l.gate.is_none()), (Some(1), true), "{on_disk}");
                    assert_eq!(l.reverted.as_ref().map(|r| r.version), Some(2));
                    assert_eq!(r.remote_status().state, RemoteState::Reverted);
                }
                false => {
                    // The write never happened: the gate is still open and decides again.
                    assert_eq!(
                        (l.applied, l.gate.map(|g| g.version)),
                        (Some(2), Some(2)),
                        "{on_disk}"
                    );
                    assert_eq!(l.reverted, None);
                    assert_eq!(r.remote_status().state, RemoteState::Gating);
                }
            }
        }
    }

    #[test]
    fn an_apply_cut_by_a_crash_is_kept_whole_or_the_files_before_it_come_back() {
        // (files on disk at restart, what the file holds after, applied version)
        for (on_disk, after, applied) in [
            ("new", "new", Some(2)),
            ("old", "old", Some(1)),
            ("half", "old", Some(1)),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let ledger = Ledger {
                highest: 2,
                desired: Some(2),
                applied: Some(1),
                written_hash: Some(named("old")),
                previous: Some(1),
                gate: Some(gate(2)),
                applying: Some((2, named("new"))),
                ..Ledger::default()
            };
            let mut r = device(tmp.path(), on_disk, "old", ledger);
            r.settle_applying();
            let l = Ledger::load(tmp.path().join("state").as_path());
            let text = std::fs::read_to_string(tmp.path().join("deployment.yaml")).unwrap();
            assert_eq!(
                (text.as_str(), l.applied, l.applying),
                (after, applied, None),
                "{on_disk}"
            );
            assert_eq!(
                l.gate.is_some(),
                on_disk == "new",
                "{on_disk}: a gate only for a version in place"
            );
        }
    }
}
