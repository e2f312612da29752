//! Taking a message, applying a version at its moment, the health gate's steps, a revert, and
//! the report.

use super::*;

impl Remote {
    /// Checks a message and accepts, defers or refuses it.
    pub(super) fn take_message(&mut self, payload: &[u8]) {
        let Some(link) = self.link.clone() else {
            return;
        };
        if payload.is_empty() {
            return; // the retained message was cleared
        }
        let doc = match self.verify(payload, &link) {
            Ok(doc) => doc,
            Err(r) => return self.refuse(r, None),
        };
        if self.already_taken(&doc) {
            return;
        }
        if let Some(of) = doc.revert_of {
            return self.take_revert(&doc, of);
        }
        if let Err(refused) = self.validate(&doc) {
            let (r, spec_error) = *refused;
            return self.refuse(r, spec_error);
        }
        tracing::info!(version = doc.version, at = ?doc.apply.at, "remote desired state: version accepted");
        self.ledger.highest = doc.version;
        self.ledger.desired = Some(doc.version);
        self.ledger.rollout = doc.rollout.clone();
        self.ledger.refused_last = false;
        self.save();
        let files_at_arrival = self.status_doc().and_then(|d| recorder_files(&d));
        self.pending = Some(Pending {
            deadline: Instant::now() + doc.apply.max_wait.as_std(),
            doc,
            files_at_arrival,
        });
    }

    fn verify(&self, payload: &[u8], link: &Link) -> Result<Document, Refusal> {
        let dir = link.desired.trusted_keys.as_path();
        let keys = match signed::load_keys(dir) {
            Ok((keys, bad)) => {
                if !bad.is_empty() {
                    tracing::warn!(files = ?bad, "remote desired state: not minisign public keys, skipped");
                }
                keys
            }
            Err(e) => {
                return Err(Refusal {
                    code: &errors::DESIRED_UNTRUSTED_KEY,
                    reason: format!("trustedKeys {}: {e}", dir.display()),
                    version: None,
                });
            }
        };
        signed::verify(payload, &keys, &link.device, self.ledger.highest)
    }

    /// A message seen before: the retained one delivered again at each connection.
    fn already_taken(&self, doc: &Document) -> bool {
        let v = doc.version;
        let waiting = self.pending.as_ref().is_some_and(|p| p.doc.version == v);
        let reverted = self
            .ledger
            .reverted
            .as_ref()
            .is_some_and(|r| r.version == v);
        let revert_done = doc.revert_of.is_some() && self.ledger.highest >= v;
        waiting || reverted || revert_done || self.ledger.applied == Some(v)
    }

    fn validate(
        &self,
        doc: &Document,
    ) -> Result<(), Box<(Refusal, Option<crate::status::SpecError>)>> {
        let refusal = |reason: String| Refusal {
            code: &errors::DESIRED_INVALID,
            reason,
            version: Some(doc.version),
        };
        if matches!(self.target, Target::File(_)) && doc.files.len() != 1 {
            let why = format!(
                "version {} carries {} files; `roost run --file` takes one",
                doc.version,
                doc.files.len()
            );
            return Err(Box::new((refusal(why), None)));
        }
        for (name, text) in &doc.files {
            if !ledger::writable_name(name) {
                let why = format!(
                    "{name:?} is not a deployment file name (NAME.yaml, no '/', not hidden)"
                );
                return Err(Box::new((refusal(why), None)));
            }
            let d = match crate::spec::parse_str(Path::new(name), text) {
                Ok(d) => d,
                Err(e) => {
                    let spec_error = crate::status::SpecError::from(&e);
                    return Err(Box::new((
                        refusal(format!("version {}: {e}", doc.version)),
                        Some(spec_error),
                    )));
                }
            };
            if let Some(why) = self.claims_another_id(&d) {
                return Err(Box::new((
                    refusal(format!("version {}: {name}: {why}", doc.version)),
                    None,
                )));
            }
        }
        Ok(())
    }

    /// A file that would give this device another device's id (a file meant for the whole
    /// fleet that names one device): every device taking it would impersonate that one.
    fn claims_another_id(&self, d: &crate::spec::Deployment) -> Option<String> {
        let named = d.spec.connect.as_ref()?.device_id.as_ref()?.to_string();
        let me = self.link.as_ref()?.device.clone();
        (named != me).then(|| format!(
            "spec.connect.deviceId is {named:?}, this device is {me:?}: leave deviceId out of a file sent to several devices (each takes its id from ROOST_DEVICE_ID or /etc/machine-id)"
        ))
    }

    /// A refusal found outside a message's checks (the session's own limit).
    pub(super) fn take_refusal(&mut self, r: Refusal) {
        self.refuse(r, None);
    }

    fn refuse(&mut self, r: Refusal, spec_error: Option<crate::status::SpecError>) {
        let refused = RemoteRefused {
            version: r.version,
            code: r.code.code.to_string(),
            reason: r.reason,
            spec_error,
        };
        if self.ledger.refused_last && self.ledger.refused.as_ref() == Some(&refused) {
            return; // the same message again: nothing new to say or to write to the card
        }
        tracing::warn!(code = %refused.code, reason = %refused.reason, "remote desired state: message refused");
        self.ledger.refused = Some(refused);
        self.ledger.refused_last = true;
        self.save();
    }

    /// `revertOf`: the version goes back if it is in force, and is dropped if it waits.
    fn take_revert(&mut self, doc: &Document, of: u64) {
        self.ledger.highest = doc.version;
        self.ledger.refused_last = false;
        self.ledger.rollout = doc.rollout.clone();
        let reason = format!(
            "asked by version {} (rollout {})",
            doc.version,
            doc.rollout.as_deref().unwrap_or("-")
        );
        if self.pending.as_ref().is_some_and(|p| p.doc.version == of) {
            self.pending = None;
            self.ledger.reverted = Some(RemoteReverted {
                version: of,
                codes: vec![],
                reason: format!("{reason}, before it was applied"),
            });
            self.save();
        } else if self.ledger.applied == Some(of) {
            self.revert(of, vec![], reason);
        } else {
            self.save();
        }
    }

    /// Applies the waiting version when its moment has come.
    pub(super) fn run_pending(&mut self) {
        if self.doc.is_none() {
            return; // the gate needs the loop's own view of the health before the version
        }
        let Some(mut p) = self.pending.take() else {
            return;
        };
        let due = Instant::now() >= p.deadline
            || match p.doc.apply.at {
                ApplyAt::Now => true,
                ApplyAt::FileBoundary => self.file_closed(&p),
                ApplyAt::WindowClosed => self.window_closed(&mut p),
            };
        self.pending = Some(p);
        if due && let Some(p) = self.pending.take() {
            self.apply(&p.doc);
        }
    }

    fn file_closed(&self, p: &Pending) -> bool {
        let now = self.status_doc().and_then(|d| recorder_files(&d));
        match (p.files_at_arrival, now) {
            (Some(before), Some(now)) => now > before,
            // No recorder, or none reporting: no file to cut.
            (None, _) | (_, None) => true,
        }
    }

    fn window_closed(&self, p: &mut Pending) -> bool {
        let files = self.target.read();
        let schedule = files.iter().find_map(|(name, text)| {
            let d = crate::spec::parse_str(Path::new(name), text).ok()?;
            let r = d.spec.recorder.as_ref()?;
            (!r.windows.is_empty())
                .then(|| crate::schedule::Schedule::new(r, d.spec.location.as_ref()))
        });
        let Some(schedule) = schedule else {
            // Always recording (or no recorder): no window closes; a file boundary is next best.
            return self.file_closed(p);
        };
        let now = jiff::Timestamp::now();
        match schedule.window_end(now).filter(|_| schedule.in_window(now)) {
            None => true,
            Some(end) => {
                let left = end.duration_since(now).unsigned_abs();
                let at = Instant::now() + left + Duration::from_secs(1);
                p.deadline = p.deadline.min(at);
                false
            }
        }
    }

    /// Writes the version's files and opens (or carries on) the health gate. The ledger says
    /// `applying` before the files are written, so a crash in between is settled at the next
    /// start ([`Remote::settle_applying`]); a write that fails puts the last files that passed
    /// back ([`Remote::fall_back`]).
    pub(super) fn apply(&mut self, doc: &Document) {
        let current = self.target.read();
        let new = self.target.as_written(&doc.files);
        // The files before an unproven version stay the ones to go back to.
        if self.ledger.gate.is_none() {
            if let Err(e) = ledger::save_previous(&self.state_dir, &current) {
                return self.not_applied(doc, format!("cannot keep the files before it: {e}"));
            }
            self.ledger.previous = self.applied_now(&current);
        }
        let changes = ledger::hash(&current) != ledger::hash(&new);
        self.gen_at_apply = (self.doc.as_ref())
            .filter(|_| changes)
            .map(|d| d.generation);
        self.ledger.gate = Some(self.open_gate(doc));
        self.ledger.applying = Some((doc.version, ledger::hash(&new)));
        self.save();
        if let Err(e) = self.target.write(&doc.files) {
            self.fall_back();
            return self.not_applied(doc, format!("cannot write the deployment files: {e}"));
        }
        self.ledger.applying = None;
        self.ledger.applied = Some(doc.version);
        self.ledger.written_hash = Some(ledger::hash(&new));
        self.worse_since = None;
        self.connected_in_gate = false;
        self.save();
        tracing::info!(
            version = doc.version,
            "remote desired state: version applied; health gate open"
        );
        // The version's own settings (trusted keys, broker, labels) from now on.
        self.follow_files();
    }

    /// The gate for `doc`: the baseline of an open gate is kept (the health before the last
    /// proven version), else the health now; its length is bounded to 5 s..24 h.
    fn open_gate(&self, doc: &Document) -> GateRecord {
        let baseline = match &self.ledger.gate {
            Some(g) => g.baseline.clone(),
            None => self
                .status_doc()
                .map(|d| Health::of(&d))
                .unwrap_or_default(),
        };
        let default = self
            .link
            .as_ref()
            .map_or(600, |l| l.desired.gate.as_std().as_secs());
        let length = doc
            .gate
            .map_or(Duration::from_secs(default), |g| g.as_std());
        let length = length.clamp(Duration::from_secs(5), Duration::from_secs(86_400));
        GateRecord {
            version: doc.version,
            boot_id: ledger::boot_id(),
            opened_ms: ledger::boot_ms(),
            length_ms: length.as_millis() as u64,
            baseline,
            link_before: self.link.as_ref().map(fingerprint),
        }
    }

    /// At start: a version whose files were being written when roost stopped is applied if
    /// they are all in place; otherwise the last files that passed come back (the retained
    /// message brings the version again).
    pub(super) fn settle_applying(&mut self) {
        let Some((version, hash)) = self.ledger.applying.take() else {
            return;
        };
        if ledger::hash(&self.target.read()) == hash {
            self.ledger.applied = Some(version);
            self.ledger.written_hash = Some(hash);
            self.save();
        } else {
            self.fall_back();
        }
    }

    /// Whatever a failed or cut write left, the files kept before the first unproven version
    /// (the last that passed) come back, and no gate is open.
    fn fall_back(&mut self) {
        if let Some(previous) = ledger::load_previous(&self.state_dir) {
            match self.target.write(&previous) {
                Ok(()) => {
                    let back = self.target.as_written(&previous);
                    self.ledger.written_hash = Some(ledger::hash(&back));
                    self.ledger.applied = self.ledger.previous;
                }
                Err(e) => {
                    tracing::error!(error = %e, "remote desired state: cannot put the files before the version back")
                }
            }
        }
        self.ledger.applying = None;
        self.ledger.gate = None;
        self.gate_next = None;
        self.gen_at_apply = None;
        self.save();
    }

    /// The remote version whose files `current` are, if they are (not a local edit).
    fn applied_now(&self, current: &Files) -> Option<u64> {
        let same = self.ledger.written_hash == Some(ledger::hash(current));
        self.ledger.applied.filter(|_| same)
    }

    fn not_applied(&mut self, doc: &Document, why: String) {
        let r = Refusal {
            code: &errors::DESIRED_NOT_APPLIED,
            reason: format!("version {}: {why}", doc.version),
            version: Some(doc.version),
        };
        self.refuse(r, None);
    }

    /// Hands the report to the loop (into status.json) and publishes it when it says something
    /// new.
    pub(super) fn report(&mut self) {
        let status = self.remote_status();
        let mut same = status.clone();
        same.gate_left_s = self.reported.as_ref().and_then(|r| r.gate_left_s);
        if self.reported.as_ref() == Some(&same) {
            return;
        }
        if self.link.is_none() && self.ledger == Ledger::default() {
            // Never asked for: the status stays as it was without the feature.
            self.reported = Some(same);
            return;
        }
        self.report_tx.send_replace(Some(status.clone()));
        self.publish_report(&status);
        self.reported = Some(status);
    }

    pub(super) fn remote_status(&self) -> RemoteStatus {
        let l = &self.ledger;
        let latest_reverted = l
            .reverted
            .as_ref()
            .is_some_and(|r| Some(r.version) == l.desired);
        let state = match () {
            _ if self.pending.is_some() => RemoteState::Waiting,
            _ if l.gate.is_some() => RemoteState::Gating,
            _ if l.refused_last => RemoteState::Refused,
            _ if latest_reverted => RemoteState::Reverted,
            _ if l.applied.is_some() => RemoteState::Passed,
            _ => RemoteState::None,
        };
        let remote = l.applied.is_some() && l.written_hash == Some(self.files_hash);
        RemoteStatus {
            device: (self.link.as_ref())
                .map_or_else(crate::connect::default_device_id, |k| k.device.clone()),
            state,
            desired_version: l.desired,
            applied_version: l.applied.filter(|_| remote),
            applied_by: if remote {
                AppliedBy::Remote
            } else {
                AppliedBy::Local
            },
            highest_version: l.highest,
            gate_left_s: l.gate.as_ref().map(|g| {
                let elapsed = ledger::boot_ms().saturating_sub(g.opened_ms);
                g.length_ms.saturating_sub(elapsed).div_ceil(1000)
            }),
            reverted: l.reverted.clone(),
            refused: l.refused.clone(),
            rollout: l.rollout.clone(),
            labels: self
                .link
                .as_ref()
                .map(|k| k.labels.clone())
                .unwrap_or_default(),
        }
    }
}

/// The recorder's count of files written, from its output in the status document.
fn recorder_files(doc: &StatusDoc) -> Option<u64> {
    let all = doc
        .components
        .iter()
        .chain(doc.deployments.iter().flat_map(|d| d.components.iter()));
    all.filter(|c| c.name == crate::spec::recorder::RECORDER_COMPONENT)
        .find_map(|c| {
            Some(
                c.output_as::<crate::recorder::RecorderOutput>()?
                    .files_written,
            )
        })
}
