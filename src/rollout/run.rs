//! The controller's I/O: one MQTT session (re-made when the broker goes away), the devices'
//! retained reports, publishing each batch and waiting for its verdicts.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, QoS, SubscribeFilter};
use serde_json::Value;
use tokio::time::Instant;

use super::*;
use crate::remote::signed;

/// How long no message may arrive before the retained ones are taken as all there is.
const QUIET: Duration = Duration::from_secs(1);

/// A new rollout.
pub fn start(req: RolloutRequest, run: &RolloutRun) -> RolloutOutcome {
    block(run, |mut b, sk| async move {
        b.gather().await?;
        let progress = b.new_progress(req)?;
        b.drive(progress, &sk, run).await
    })
}

/// Carries on the rollout `id` from its retained record.
pub fn resume(id: &str, run: &RolloutRun) -> RolloutOutcome {
    let id = id.to_string();
    block(run, |mut b, sk| async move {
        b.gather().await?;
        let topic = progress_topic(&b.prefix, &id);
        let record = b.retained.get(&topic).cloned().ok_or_else(|| {
            format!("no rollout {id:?} on the broker ({topic} holds no retained record)")
        })?;
        // The record is on the broker: only one this key signed is carried on (someone who
        // can write the topic must not get files signed for the fleet).
        let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|e| e.to_string())?;
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        let text = signed::open_record(&bytes, &pk).map_err(|e| format!("{topic}: {e}"))?;
        let progress: Progress = serde_json::from_str(&text)
            .map_err(|e| format!("{topic}: not a rollout record: {e}"))?;
        b.drive(progress, &sk, run).await
    })
}

fn block<F, Fut>(run: &RolloutRun, body: F) -> RolloutOutcome
where
    F: FnOnce(Broker, minisign::SecretKey) -> Fut,
    Fut: std::future::Future<Output = Result<Progress, String>>,
{
    let failed = |error: String| RolloutOutcome {
        progress: None,
        exit_code: 2,
        error: Some(error),
    };
    let sk = match signed::load_secret_key(&run.key, run.key_password.clone()) {
        Ok(sk) => sk,
        Err(e) => return failed(format!("--key: {e}")),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return failed(format!("cannot start a runtime: {e}")),
    };
    let result = rt.block_on(async {
        let broker = Broker::connect(&run.broker).await?;
        body(broker, sk).await
    });
    match result {
        Ok(p) => RolloutOutcome {
            exit_code: u8::from(p.state != "done"),
            progress: Some(p),
            error: None,
        },
        Err(e) => failed(e),
    }
}

struct Broker {
    options: FleetOptions,
    client: AsyncClient,
    events: EventLoop,
    prefix: String,
    /// Retained and live messages by topic: reports and rollout records.
    retained: BTreeMap<String, Value>,
    reconnected: bool,
    /// Publishes queued and acknowledged (QoS 1), to know when the last ones are out.
    published: u64,
    acked: u64,
    /// Devices asked to drop or revert the version at a halt (sent again after a reconnection).
    revert_to: Vec<String>,
}

impl Broker {
    async fn connect(options: &FleetOptions) -> Result<Self, String> {
        let o = crate::fleet::broker_options(options, "rollout").map_err(|p| p.message)?;
        let (client, events) = AsyncClient::new(o, 256);
        let mut b = Self {
            options: options.clone(),
            client,
            events,
            prefix: options.prefix.to_string(),
            retained: BTreeMap::new(),
            reconnected: false,
            published: 0,
            acked: 0,
            revert_to: Vec::new(),
        };
        b.subscribe().await?;
        Ok(b)
    }

    /// Waits for the connection and the subscription (10 s at most).
    async fn subscribe(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.poll())
                .await
                .map_err(|_| {
                    format!(
                        "the broker {} did not answer within 10 s",
                        self.options.broker
                    )
                })?
                .map_err(|e| {
                    crate::connect::mqtt::classify(&e, &self.options.broker.to_string()).message
                })?;
            match ev {
                Event::Incoming(Incoming::ConnAck(_)) => {
                    let filters = [
                        format!("{}/+/desired/report", self.prefix),
                        format!("{}/_rollouts/+", self.prefix),
                    ]
                    .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
                    let _ = self.client.try_subscribe_many(filters);
                }
                Event::Incoming(Incoming::SubAck(_)) => return Ok(()),
                other => self.take(&other),
            }
        }
    }

    fn take(&mut self, ev: &Event) {
        if let Event::Incoming(Incoming::Publish(p)) = ev {
            match serde_json::from_slice::<Value>(&p.payload) {
                Ok(v) if v.is_object() => {
                    self.retained.insert(p.topic.clone(), v);
                }
                _ => {
                    self.retained.remove(&p.topic);
                }
            }
        }
    }

    /// Reads until no message came for [`QUIET`].
    async fn gather(&mut self) -> Result<(), String> {
        loop {
            match tokio::time::timeout(QUIET, self.events.poll()).await {
                Err(_) => return Ok(()),
                Ok(Ok(ev)) => self.take(&ev),
                Ok(Err(e)) => {
                    return Err(crate::connect::mqtt::classify(
                        &e,
                        &self.options.broker.to_string(),
                    )
                    .message);
                }
            }
        }
    }

    /// Handles events until `until`; a lost connection is made again (the broker may restart
    /// between batches) and said by `reconnected`.
    async fn pump(&mut self, until: Instant) {
        while Instant::now() < until {
            match tokio::time::timeout_at(until, self.events.poll()).await {
                Err(_) => return,
                Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {
                    self.reconnected = true;
                    let filters = [
                        format!("{}/+/desired/report", self.prefix),
                        format!("{}/_rollouts/+", self.prefix),
                    ]
                    .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
                    let _ = self.client.try_subscribe_many(filters);
                }
                Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => self.acked += 1,
                Ok(Ok(ev)) => self.take(&ev),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "rollout: broker link lost; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn report(&self, device: &str) -> Option<&Value> {
        self.retained
            .get(&crate::remote::report_topic(&self.prefix, device))
    }

    fn reports(&self) -> BTreeMap<String, Value> {
        let suffix = "/desired/report";
        (self.retained.iter())
            .filter_map(|(t, v)| {
                let device = t
                    .strip_prefix(&format!("{}/", self.prefix))?
                    .strip_suffix(suffix)?;
                (!device.contains('/')).then(|| (device.to_string(), v.clone()))
            })
            .collect()
    }

    fn new_progress(&self, req: RolloutRequest) -> Result<Progress, String> {
        let reports = self.reports();
        let mut devices = req.devices.clone();
        if let Some((label, value)) = &req.select {
            devices = select(&reports, label, value);
        }
        devices.sort();
        devices.dedup();
        if devices.is_empty() {
            return Err(
                "no device chosen: --devices names none, or no device reports the --select label"
                    .into(),
            );
        }
        if req.files.is_empty() {
            return Err("no deployment file to send (--file or --dir)".into());
        }
        let sample = Document {
            device: devices[0].clone(),
            version: u64::MAX,
            files: req.files.clone(),
            revert_of: None,
            apply: req.apply,
            gate: Some(req.gate),
            rollout: Some("x".repeat(40)),
        };
        let size = serde_json::to_string(&sample).map_or(0, |t| t.len()) * 2 + 1024;
        if size > signed::MAX_MESSAGE {
            return Err(format!(
                "the files are too large for one message (about {size} bytes signed; devices take {})",
                signed::MAX_MESSAGE
            ));
        }
        // The record keeps the files and each device's outcome (a failure's reason: ~250 B).
        let record =
            req.files.values().map(|t| t.len() * 2).sum::<usize>() + devices.len() * 300 + 4096;
        if record > signed::MAX_MESSAGE {
            return Err(format!(
                "{} devices and these files make a rollout record of about {record} bytes, over the {} a broker message here takes: split the rollout (--select, --devices)",
                devices.len(),
                signed::MAX_MESSAGE
            ));
        }
        if devices.len() > 1
            && let Some(name) = names_one_device(&req.files)
        {
            return Err(format!(
                "{name} sets spec.connect.deviceId: every device would take that one id; leave it out (each device takes its id from ROOST_DEVICE_ID or /etc/machine-id)"
            ));
        }
        let version = req
            .version
            // Over the whole fleet, so a number names one rollout wherever it is read.
            .or_else(|| next_version(reports.values()))
            .ok_or("a device reports the highest version there is; give --version")?;
        let id = format!(
            "{}-v{version}",
            jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
        );
        Ok(Progress {
            id,
            version,
            files: req.files,
            apply: req.apply,
            gate: req.gate,
            max_failed: req.max_failed,
            batches: plan_batches(&devices, &req.batches),
            batch: 0,
            devices: devices
                .iter()
                .map(|d| (d.clone(), DeviceOutcome::Queued))
                .collect(),
            state: "running".into(),
        })
    }

    /// Queues a retained publish; while the queue is full, the event loop runs to drain it.
    async fn publish(&mut self, topic: String, payload: Vec<u8>) {
        self.published += 1;
        while let Err(rumqttc::ClientError::TryRequest(_)) =
            self.client
                .try_publish(topic.clone(), QoS::AtLeastOnce, true, payload.clone())
        {
            self.pump(Instant::now() + Duration::from_millis(50)).await;
        }
    }

    async fn save(&mut self, p: &Progress, sk: &minisign::SecretKey) {
        let text = serde_json::to_string(p).unwrap_or_default();
        match signed::seal_record(&text, sk) {
            Ok(bytes) => {
                self.publish(progress_topic(&self.prefix, &p.id), bytes)
                    .await
            }
            Err(e) => tracing::warn!(error = %e, "rollout: cannot sign its record"),
        }
    }

    async fn send(
        &mut self,
        p: &Progress,
        device: &str,
        sk: &minisign::SecretKey,
    ) -> Result<(), String> {
        let payload = signed::seal(&document(p, device), sk)?;
        self.publish(crate::remote::desired_topic(&self.prefix, device), payload)
            .await;
        Ok(())
    }

    /// Works through the batches from `p.batch`.
    async fn drive(
        &mut self,
        mut p: Progress,
        sk: &minisign::SecretKey,
        run: &RolloutRun,
    ) -> Result<Progress, String> {
        while p.batch < p.batches.len() && p.state == "running" {
            let batch = p.batches[p.batch].clone();
            for d in &batch {
                if p.devices.get(d) == Some(&DeviceOutcome::Queued) {
                    self.send(&p, d, sk).await?;
                    p.devices.insert(d.clone(), DeviceOutcome::Sent);
                }
            }
            self.save(&p, sk).await;
            say_progress(&p, run.json);
            self.wait_batch(&mut p, &batch, sk, run).await?;
            p.batch += 1;
            if p.failed().len() > p.max_failed {
                p.state = "halted".into();
                self.take_back(&mut p, run.revert_on_halt);
            }
            self.save(&p, sk).await;
        }
        if p.state == "running" {
            p.state = "done".into();
        }
        self.finish(&p, sk).await?;
        Ok(p)
    }

    /// Sends the last messages (the take-backs of a halt, the final record) and waits for the
    /// broker to acknowledge them, sending them again after a reconnection (a clean session
    /// drops what was queued), for at most 30 s.
    async fn finish(&mut self, p: &Progress, sk: &minisign::SecretKey) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.reconnected = false;
            for d in self.revert_to.clone() {
                self.send_revert(p, &d, sk).await?;
            }
            self.save(p, sk).await;
            while self.acked < self.published && !self.reconnected && Instant::now() < deadline {
                self.pump(Instant::now() + Duration::from_millis(200)).await;
            }
            if !self.reconnected || Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    /// At a halt: the devices that were sent the version and did not pass it (still waiting,
    /// or silent: a slow or deferred device would apply it later, with nobody watching) are
    /// asked to drop or revert it; with `--revert`, those that passed too.
    fn take_back(&mut self, p: &mut Progress, also_passed: bool) {
        let back: Vec<String> = (p.devices.iter())
            .filter(|(_, o)| match o {
                DeviceOutcome::Sent => true,
                DeviceOutcome::Failed { silent, .. } => *silent,
                DeviceOutcome::Passed => also_passed,
                _ => false,
            })
            .map(|(d, _)| d.clone())
            .collect();
        for d in back {
            if p.devices.get(&d) == Some(&DeviceOutcome::Passed) {
                p.devices.insert(d.clone(), DeviceOutcome::Reverted);
            }
            self.revert_to.push(d);
        }
    }

    async fn wait_batch(
        &mut self,
        p: &mut Progress,
        batch: &[String],
        sk: &minisign::SecretKey,
        run: &RolloutRun,
    ) -> Result<(), String> {
        let deferred = p.apply.at != signed::ApplyAt::Now;
        let patience = p.gate.as_std()
            + run.timeout
            + if deferred {
                p.apply.max_wait.as_std()
            } else {
                Duration::ZERO
            };
        let deadline = Instant::now() + patience;
        loop {
            let mut changed = false;
            for d in batch {
                if p.devices.get(d) != Some(&DeviceOutcome::Sent) {
                    continue;
                }
                if let Some(o) = self.report(d).and_then(|r| outcome_of(r, p.version)) {
                    p.devices.insert(d.clone(), o);
                    changed = true;
                }
            }
            if changed {
                self.save(p, sk).await;
                say_progress(p, run.json);
            }
            let open = batch
                .iter()
                .any(|d| p.devices.get(d) == Some(&DeviceOutcome::Sent));
            if !open {
                return Ok(());
            }
            if Instant::now() >= deadline {
                for d in batch {
                    if p.devices.get(d) == Some(&DeviceOutcome::Sent) {
                        let reason = format!(
                            "no report of version {} within {}s",
                            p.version,
                            patience.as_secs()
                        );
                        p.devices.insert(
                            d.clone(),
                            DeviceOutcome::Failed {
                                reason,
                                silent: true,
                            },
                        );
                    }
                }
                return Ok(());
            }
            self.pump((Instant::now() + Duration::from_millis(500)).min(deadline))
                .await;
            if std::mem::take(&mut self.reconnected) {
                // A broker restarted without persistence may have lost the retained messages.
                for d in batch {
                    if p.devices.get(d) == Some(&DeviceOutcome::Sent) {
                        self.send(p, d, sk).await?;
                    }
                }
                self.save(p, sk).await;
            }
        }
    }

    /// A `revertOf` message for `device`: one version above the rollout's.
    async fn send_revert(
        &mut self,
        p: &Progress,
        device: &str,
        sk: &minisign::SecretKey,
    ) -> Result<(), String> {
        let doc = Document {
            device: device.to_string(),
            version: p
                .version
                .checked_add(1)
                .ok_or("no version above the rollout's")?,
            files: Files::new(),
            revert_of: Some(p.version),
            apply: ApplyOptions::default(),
            gate: None,
            rollout: Some(p.id.clone()),
        };
        let payload = signed::seal(&doc, sk)?;
        self.publish(crate::remote::desired_topic(&self.prefix, device), payload)
            .await;
        Ok(())
    }
}

/// The first file that names a device id (`spec.connect.deviceId`).
fn names_one_device(files: &Files) -> Option<String> {
    files.iter().find_map(|(name, text)| {
        let d = crate::spec::parse_str(std::path::Path::new(name), text).ok()?;
        d.spec
            .connect
            .as_ref()?
            .device_id
            .as_ref()
            .map(|_| name.clone())
    })
}
