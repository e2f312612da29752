//! The connector's loop: one task that owns the outbox and wakes on a status change
//! (inotify on status.json), the heartbeat timer, an MQTT event, an MQTT retry, an HTTP
//! answer or a stop; everything else waits. Messages are queued first and sent from the
//! outbox, in order, at least once.

use crate::component::{ConfigFile, ReportFile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rumqttc::{Event, Incoming, Outgoing, QoS};
use serde_json::Value;
use tokio::time::Instant;

use super::link::{Link, MAX_BACKOFF, Publish};
use super::messages::{self, Facts};
use super::mqtt::{self, IN_FLIGHT, Session, SessionEvent};
use super::outbox::{Limits, Message, NewMessage, Outbox, Sink};
use super::report::{ConnectReport, Problem};
use super::{ConnectConfig, ConnectError, http, prometheus};
use crate::errors;
use crate::spec::connect::MqttSpec;
use crate::status::StatusDoc;

/// How far back the first start queues past model outputs: a day's findings catch a field
/// engineer up, months of them would stall the start and the link.
const CATCH_UP: SignedDuration = SignedDuration::from_hours(24);
/// The report is rewritten at least this often (fresh outbox figures for status.json).
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Runs the connector until SIGTERM or SIGINT.
pub fn run(config_path: &Path, state_dir: &Path) -> Result<(), ConnectError> {
    let cfg = ConnectConfig::load(config_path)?;
    // The same stop as every component process: a thread takes the signals (blocked before the
    // runtime's threads exist) and the loop wakes on the channel.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let on_stop = move || {
        let _ = stop_tx.send(true);
    };
    crate::component::stop_on_signals(on_stop, None).map_err(ConnectError::Runtime)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ConnectError::Runtime)?;
    rt.block_on(async {
        let mut connector = Connector::open(cfg, state_dir)?;
        connector.run(stop).await
    })
}

/// Whether a message of `bytes` can never be carried (over
/// [`messages::MAX_MESSAGE_BYTES`]); such a one is counted in `report` and logged (DEP_E508).
fn oversized(report: &mut ConnectReport, topic: &str, bytes: usize) -> bool {
    if bytes <= messages::MAX_MESSAGE_BYTES {
        return false;
    }
    report.oversized += 1;
    report.last_oversized = Some(format!("{topic} ({bytes} bytes)"));
    tracing::warn!(
        code = errors::MESSAGE_TOO_LARGE.code,
        topic,
        bytes,
        "a message too large to send was let go"
    );
    true
}

/// The MQTT side: its settings, the session while there is one, and the link's state
/// ([`Link`]: window, stall, back-off, cursor).
struct MqttLink {
    spec: MqttSpec,
    session: Option<Session>,
    link: Link,
}

impl MqttLink {
    /// When the publishes in flight count as stalled, if any wait.
    fn stall_deadline(&self) -> Option<Instant> {
        self.link.stall_deadline()
    }
}

/// The HTTP side's state.
struct HttpLink {
    sink: http::HttpSink,
    job: Option<tokio::task::JoinHandle<(i64, Result<(), Problem>)>>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// What woke the loop.
enum Wake {
    Stop,
    Status,
    Heartbeat,
    Mqtt(Option<SessionEvent>),
    MqttRetry,
    Http(Option<(i64, Result<(), Problem>)>),
    HttpRetry,
    ReportDue,
    MqttStalled,
}

struct Connector {
    cfg: ConnectConfig,
    state_dir: PathBuf,
    outbox: Outbox,
    report: ConnectReport,
    report_dirty: bool,
    status: Option<StatusDoc>,
    /// What the sinks already have, remembered in the outbox across restarts (a start queues
    /// only what changed).
    sent: Remembered,
    counter: u64,
    to_ack: Vec<i64>,
    mqtt: Option<MqttLink>,
    http: Option<HttpLink>,
    /// The roost that wrote status.json: its exit wakes the loop.
    roost: super::roost_watch::RoostWatch,
    /// When the status read last becomes out of date if nothing rewrites it (a file was due).
    recheck_at: Option<Instant>,
}

impl Connector {
    fn open(cfg: ConnectConfig, state_dir: &Path) -> Result<Self, ConnectError> {
        let limits = Limits {
            max_bytes: cfg.connect.outbox.max_bytes.bytes(),
            max_age: SignedDuration::try_from(cfg.connect.outbox.max_age.as_std())
                .unwrap_or(SignedDuration::MAX),
        };
        let (mut outbox, aside) =
            Outbox::open(&state_dir.join(super::outbox::OUTBOX_FILE), limits)?;
        forget_foreign(&mut outbox, &cfg);
        let mut report = ConnectReport {
            pid: std::process::id(),
            device_id: cfg.device_id.clone(),
            ..ConnectReport::default()
        };
        report.outboxes_set_aside.extend(aside);
        report.dropped_before = outbox.stats().map(|s| s.dropped).unwrap_or(0);
        let mqtt = cfg.connect.mqtt.clone().map(open_mqtt);
        let http = cfg.connect.http.clone().map(|spec| HttpLink {
            sink: http::HttpSink::new(&spec, &mut report),
            job: None,
            retry_at: None,
            backoff: Duration::from_secs(1),
        });
        report.mqtt.configured = mqtt.is_some();
        report.http.configured = http.is_some();
        let sent = Remembered::read(&outbox, &cfg);
        Ok(Self {
            cfg,
            state_dir: state_dir.to_path_buf(),
            outbox,
            report,
            report_dirty: true,
            status: None,
            sent,
            counter: 0,
            to_ack: Vec::new(),
            mqtt,
            http,
            roost: Default::default(),
            recheck_at: None,
        })
    }

    async fn run(
        &mut self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), ConnectError> {
        let status_path = crate::state_dir::StateDir::new(self.state_dir.clone()).device_status();
        // The watcher debounces in a task of its own: a change is never lost to another
        // branch of the select below winning during its settle time.
        let mut watcher = crate::watch::FileWatcher::new(&status_path)?;
        let (status_tx, mut status_changes) = tokio::sync::mpsc::channel::<()>(1);
        tokio::spawn(async move {
            loop {
                watcher.changed().await;
                if status_tx.send(()).await.is_err() {
                    return;
                }
            }
        });
        let mut heartbeat = tokio::time::interval(self.cfg.connect.heartbeat.interval.as_std());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut report_due = tokio::time::interval(REPORT_EVERY);
        self.on_status();
        self.queue_detections();
        if let Some(m) = &mut self.mqtt {
            m.link.retry_now(Instant::now());
        }
        loop {
            self.fill_mqtt();
            self.start_http();
            self.flush_acks();
            self.write_report_if(false);
            let wake = self
                .wait(
                    &mut stop,
                    &mut status_changes,
                    &mut heartbeat,
                    &mut report_due,
                )
                .await;
            match wake {
                Wake::Stop => break,
                Wake::Status => {
                    self.on_status();
                    self.queue_detections();
                }
                Wake::Heartbeat => self.on_heartbeat(),
                Wake::Mqtt(event) => self.on_mqtt_events(event),
                Wake::MqttRetry => self.connect_mqtt(),
                Wake::Http(result) => self.on_http(result),
                Wake::HttpRetry => {
                    if let Some(h) = &mut self.http {
                        h.retry_at = None;
                    }
                }
                Wake::MqttStalled => self.mqtt_stalled(),
                Wake::ReportDue => {
                    self.on_status();
                    self.write_report_if(true);
                }
            }
        }
        self.stop().await;
        Ok(())
    }

    async fn wait(
        &mut self,
        stop: &mut tokio::sync::watch::Receiver<bool>,
        status_changes: &mut tokio::sync::mpsc::Receiver<()>,
        heartbeat: &mut tokio::time::Interval,
        report_due: &mut tokio::time::Interval,
    ) -> Wake {
        let mqtt_retry = self.mqtt.as_ref().and_then(|m| m.link.retry_at());
        let stalled = self.mqtt.as_ref().and_then(MqttLink::stall_deadline);
        let http_retry = self.http.as_ref().and_then(|h| h.retry_at);
        let events = self
            .mqtt
            .as_mut()
            .and_then(|m| m.session.as_mut())
            .map(|s| &mut s.events);
        let http_job = self.http.as_mut().and_then(|h| h.job.as_mut());
        let roost = &mut self.roost;
        let recheck = self.recheck_at;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => Wake::Stop,
            Some(()) = status_changes.recv() => Wake::Status,
            Some(_) = roost.exited() => Wake::Status,
            _ = at(recheck) => Wake::Status,
            _ = at(stalled) => Wake::MqttStalled,
            _ = heartbeat.tick() => Wake::Heartbeat,
            event = recv(events) => Wake::Mqtt(event),
            _ = at(mqtt_retry) => Wake::MqttRetry,
            result = join(http_job) => Wake::Http(result),
            _ = at(http_retry) => Wake::HttpRetry,
            _ = report_due.tick() => Wake::ReportDue,
        }
    }

    fn next_id(&mut self, now: Timestamp) -> String {
        self.counter += 1;
        format!(
            "{}-{}-{}",
            self.cfg.device_id,
            now.as_millisecond(),
            self.counter
        )
    }

    fn prefix(&self) -> Option<String> {
        self.mqtt.as_ref().map(|m| m.spec.topic_prefix.to_string())
    }

    /// Queues `messages`, remembering `remember` with them; false when the outbox cannot take
    /// them (reported as DEP_E506 until a write works again).
    fn enqueue(
        &mut self,
        mut messages: Vec<NewMessage>,
        mut remember: Vec<(String, String)>,
    ) -> bool {
        // A message that could never be carried is counted and said, never queued: it
        // would block every message behind it.
        let report = &mut self.report;
        messages.retain(|m| !oversized(report, &m.topic, m.payload.len()));
        if messages.is_empty() {
            return true;
        }
        // The report's outbox figures change either way (depth, drops, the write error).
        self.report_dirty = true;
        if !remember.is_empty() {
            remember.push((DESTINATION.to_string(), self.sent.destination.clone()));
        }
        match self
            .outbox
            .push_remembering(&messages, &remember, Timestamp::now())
        {
            Ok(_) => {
                self.report.outbox_error = None;
                true
            }
            Err(e) => {
                let why = errors::chain(&e);
                tracing::error!(error = %why, "cannot queue messages");
                self.report.outbox_error = Some(Problem::new(
                    errors::OUTBOX_UNREADABLE,
                    format!("messages cannot be queued: {why}; they are built again when it works"),
                ));
                false
            }
        }
    }

    /// A JSON message for every configured sink (`what` names it for HTTP).
    /// Where acoupi's form of a message of `message_type` (`heartbeat`, `detection`) goes:
    /// acoupi's one topic `<acoupiTopic>/<deviceId>`, or with `acoupiMessageType` its
    /// `/<message_type>` below it; `None` when `acoupiTopic` is not set.
    fn acoupi_topic(&self, message_type: &str) -> Option<String> {
        let spec = &self.mqtt.as_ref()?.spec;
        let base = format!("{}/{}", spec.acoupi_topic.as_ref()?, self.cfg.device_id);
        Some(if spec.acoupi_message_type {
            format!("{base}/{message_type}")
        } else {
            base
        })
    }

    fn to_sinks(
        &self,
        topic: Option<String>,
        what: &str,
        payload: &Value,
        retain: bool,
    ) -> Vec<NewMessage> {
        let bytes = payload.to_string().into_bytes();
        let mut out = Vec::new();
        if let Some(topic) = topic.filter(|_| self.mqtt.is_some()) {
            out.push(NewMessage {
                sink: Sink::Mqtt,
                topic,
                payload: bytes.clone(),
                retain,
                recording: None,
            });
        }
        if self.http.is_some() {
            out.push(NewMessage {
                sink: Sink::Http,
                topic: what.to_string(),
                payload: bytes,
                retain: false,
                recording: None,
            });
        }
        out
    }

    fn facts(&self) -> Facts {
        let now = Timestamp::now();
        Facts {
            files_last_hour: messages::files_last_hour(&self.cfg.storage, now),
            free_bytes: messages::free_bytes(&self.cfg.storage),
            outbox: self.outbox.stats().unwrap_or_default(),
        }
    }

    /// status.json changed: queue it when it says something new (the connector's own output
    /// aside), with the Home Assistant states that changed, and refresh the Prometheus file.
    fn on_status(&mut self) {
        let path = crate::state_dir::StateDir::new(self.state_dir.clone()).device_status();
        // Set again below from what is read; a status that cannot be read promises nothing
        // (a past instant kept here would wake the loop at once, for ever).
        self.recheck_at = None;
        let Ok(doc) = crate::status::read(&path) else {
            return;
        };
        let now = Timestamp::now();
        if doc.status != crate::status::OverallStatus::Stopped {
            self.roost.follow(doc.reconciler.pid);
        }
        // Looked at again when it would become out of date, if nothing rewrites it first.
        self.recheck_at = crate::status_seen::stale_at(&doc)
            .filter(|t| *t > now)
            .map(|t| Instant::now() + t.duration_since(now).unsigned_abs());
        // What the broker gets is what a reader must take it for: roost gone, or a status
        // out of date, is Unknown with its reason, never the green it last said.
        let (_, doc) = crate::status_seen::look(&doc, &self.state_dir, now);
        // An older roost's status.json was not redacted: the broker never gets a credential.
        let doc = crate::redact::typed(&doc);
        let comparable = messages::comparable(&doc);
        self.status = Some(doc);
        if self.sent.status.as_ref() == Some(&comparable) {
            return;
        }
        let now = Timestamp::now();
        let id = self.next_id(now);
        let doc = self.status.clone().expect("just read");
        let payload = messages::status(&doc, &self.cfg.device_id, &id);
        let topic = self
            .prefix()
            .map(|p| format!("{p}/{}/status", self.cfg.device_id));
        let mut out = self.to_sinks(topic, "status", &payload, true);
        let (states, sent_states) = self.state_messages(&self.facts(), false);
        out.extend(states);
        let mut remember = self.sent.states_changed(&sent_states);
        remember.push(("status".to_string(), comparable.to_string()));
        // Only what reached the outbox counts as sent: a failed write is queued again at the
        // next wake-up (heartbeat or report), not forgotten.
        if self.enqueue(out, remember) {
            self.sent.status = Some(comparable);
            self.sent.states = sent_states;
        }
        self.write_prometheus();
    }

    /// The Home Assistant entity states that changed since last published, and the states
    /// published once they are queued.
    /// `counters`: also the entities that count (files, bytes), which change with every
    /// recording: sent with heartbeats only.
    fn state_messages(
        &self,
        facts: &Facts,
        counters: bool,
    ) -> (Vec<NewMessage>, BTreeMap<String, String>) {
        let mut sent = self.sent.states.clone();
        let (Some(doc), Some(m)) = (&self.status, &self.mqtt) else {
            return (Vec::new(), sent);
        };
        if !m.spec.home_assistant {
            return (Vec::new(), sent);
        }
        let prefix = m.spec.topic_prefix.to_string();

        let mut out = Vec::new();
        for (entity, value) in messages::entity_states(doc, facts) {
            let counter = messages::COUNTER_ENTITIES.contains(&entity);
            let absent = value == "unknown" && messages::BOARD_ENTITIES.contains(&entity);
            if sent.get(entity) == Some(&value) || (counter && !counters) || absent {
                continue;
            }
            out.push(NewMessage {
                sink: Sink::Mqtt,
                topic: messages::state_topic(&prefix, &self.cfg.device_id, entity),
                payload: value.clone().into_bytes(),
                retain: true,
                recording: None,
            });
            sent.insert(entity.to_string(), value);
        }
        (out, sent)
    }

    fn on_heartbeat(&mut self) {
        let now = Timestamp::now();
        let facts = self.facts();
        let id = self.next_id(now);
        let doc = self.status.as_ref();
        let interval = self.cfg.connect.heartbeat.interval.as_std();
        let beat = messages::heartbeat(doc, &facts, (&self.cfg.device_id, &id), interval, now);
        let topic = self
            .prefix()
            .map(|p| format!("{p}/{}/heartbeat", self.cfg.device_id));
        let mut out = self.to_sinks(topic, "heartbeat", &beat, true);
        if let Some(topic) = self.acoupi_topic("heartbeat") {
            let payload = messages::acoupi_heartbeat(doc, &facts, &self.cfg.device_id, now);
            out.push(NewMessage {
                sink: Sink::Mqtt,
                topic,
                payload: payload.to_string().into_bytes(),
                retain: false,
                recording: None,
            });
        }
        let (states, sent_states) = self.state_messages(&facts, true);
        out.extend(states);
        let remember = self.sent.states_changed(&sent_states);
        if self.enqueue(out, remember) {
            self.sent.states = sent_states;
        }
        // A status whose queueing failed earlier is queued now.
        self.on_status();
        self.queue_summary(now);
        self.write_prometheus();
        self.report_dirty = true;
    }

    /// New model outputs in metadata.db become messages (those with a detection at or above
    /// their detector's sendMinScore, or file-level tags); the cursor moves in the same outbox
    /// transaction, so each is queued exactly once. The first time (spec.connect added to a
    /// device with months of outputs) only the last [`CATCH_UP`] of them are.
    fn queue_detections(&mut self) {
        const CURSOR: &str = super::outbox::MODEL_OUTPUT_CURSOR;
        if !self.outbox.has_counter(CURSOR) {
            let since = Timestamp::now() - CATCH_UP;
            let Some(start) = super::detections::catch_up_from(&self.cfg.storage, since) else {
                return;
            };
            tracing::info!(since = %since, "first start beside past model outputs: queueing only the recent ones");
            if let Err(e) = self
                .outbox
                .push_marked(&[], (CURSOR, start), Timestamp::now())
            {
                tracing::error!(error = %errors::chain(&e), "cannot set the detections' cursor");
                return;
            }
        }
        loop {
            let after = self.outbox.counter(CURSOR);
            let Some(batch) =
                super::detections::after(&self.cfg.storage, after, 200, &self.cfg.send_min_scores)
            else {
                return;
            };
            let Some(last) = batch.last().map(|o| o.rowid) else {
                return;
            };
            let now = Timestamp::now();
            let mut out = Vec::new();
            for output in batch.iter().filter(|o| o.detections > 0) {
                let id = self.next_id(now);
                let mut body = output.body.clone();
                body["messageId"] = Value::from(id);
                body["deviceId"] = Value::from(self.cfg.device_id.clone());
                let topic = self
                    .prefix()
                    .map(|p| format!("{p}/{}/detections", self.cfg.device_id));
                let recording = output.body["recording"]["id"].as_str().map(str::to_string);
                let mut messages = self.to_sinks(topic, "model_output", &body, false);
                if let Some(topic) = self.acoupi_topic("detection") {
                    // acoupi's consumers take the ModelOutput itself (no envelope).
                    messages.push(NewMessage {
                        sink: Sink::Mqtt,
                        topic,
                        payload: output.body.to_string().into_bytes(),
                        retain: false,
                        recording: None,
                    });
                }
                out.extend(messages.into_iter().map(|m| NewMessage {
                    recording: recording.clone(),
                    ..m
                }));
            }
            self.report_dirty |= !out.is_empty();
            if let Err(e) = self.outbox.push_marked(&out, (CURSOR, last), now) {
                tracing::error!(error = %errors::chain(&e), "cannot queue detections; trying again at the next change");
                return;
            }
        }
    }

    /// Every heartbeat: counts and scores per tag since the last summary.
    fn queue_summary(&mut self, now: Timestamp) {
        const CURSOR: &str = "summary_until_ms";
        let from_ms = self.outbox.counter(CURSOR);
        let from = match from_ms {
            0 => {
                now - SignedDuration::try_from(self.cfg.connect.heartbeat.interval.as_std())
                    .unwrap_or(SignedDuration::ZERO)
            }
            ms => Timestamp::from_millisecond(ms).unwrap_or(now),
        };
        let mut out = Vec::new();
        if let Some(mut body) = super::detections::summary(&self.cfg.storage, from, now) {
            body["messageId"] = Value::from(self.next_id(now));
            body["deviceId"] = Value::from(self.cfg.device_id.clone());
            let topic = self
                .prefix()
                .map(|p| format!("{p}/{}/summary", self.cfg.device_id));
            out = self.to_sinks(topic, "summary", &body, false);
        }
        if let Err(e) = self
            .outbox
            .push_marked(&out, (CURSOR, now.as_millisecond()), now)
        {
            tracing::error!(error = %errors::chain(&e), "cannot queue the detection summary");
        }
    }

    fn write_prometheus(&mut self) {
        let Some(p) = self.cfg.connect.prometheus.clone() else {
            return;
        };
        let facts = self.facts();
        let text = prometheus::render(
            self.status.as_ref(),
            &facts,
            &self.report,
            &self.cfg.device_id,
        );
        // Read by node_exporter, another user: 0644 (nothing in it is secret).
        if let Err(e) = crate::fsutil::replace_public(p.textfile.as_path(), text.as_bytes()) {
            tracing::warn!(error = %e, file = %p.textfile.as_path().display(), "cannot write the Prometheus text file");
        }
    }

    // --- MQTT -------------------------------------------------------------------------------

    fn connect_mqtt(&mut self) {
        let device_id = self.cfg.device_id.clone();
        let Some(m) = &mut self.mqtt else { return };
        let mut problems = Vec::new();
        let secrets = secrets(&m.spec, &mut problems);
        // Secret problems are warnings of this attempt: fixed files clear them.
        let secret_code = errors::SECRET_UNREADABLE.code;
        self.report.warnings.retain(|w| w.code != secret_code);
        self.report
            .warnings
            .extend(problems.into_iter().filter(|p| p.code == secret_code));
        self.report_dirty = true;
        match secrets {
            Ok((password, tls)) => {
                let options = mqtt::options(&m.spec, &device_id, password, tls);
                m.session = Some(Session::start(options));
                m.link.session_started();
            }
            Err(problem) => {
                // No TLS settings at all: wait, never connect in clear.
                self.report.mqtt.last_error = Some(problem);
                m.link.not_started(Instant::now());
            }
        }
    }

    /// Handles an event and every other one already waiting, so that acknowledgements are
    /// committed in batches.
    fn on_mqtt_events(&mut self, first: Option<SessionEvent>) {
        let mut next = first;
        loop {
            match next {
                Some(Ok(event)) => self.on_mqtt_event(event),
                Some(Err(e)) => {
                    self.mqtt_failed(Some(e));
                    return;
                }
                None => {
                    self.mqtt_failed(None);
                    return;
                }
            }
            let more = self
                .mqtt
                .as_mut()
                .and_then(|m| m.session.as_mut())
                .map(|s| s.events.try_recv());
            next = match more {
                Some(Ok(event)) => Some(event),
                _ => return,
            };
        }
    }

    fn on_mqtt_event(&mut self, event: Event) {
        let Some(m) = &mut self.mqtt else { return };
        match event {
            Event::Incoming(Incoming::ConnAck(ack))
                if ack.code == rumqttc::ConnectReturnCode::Success =>
            {
                m.link.connected();
                self.report.mqtt.connected = true;
                self.report.mqtt.since = Some(Timestamp::now());
                self.report.mqtt.last_error = None;
                self.report_dirty = true;
                tracing::info!(broker = %m.spec.url, "connected to the MQTT broker");
                self.announce();
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => m.link.written(pkid, Instant::now()),
            Event::Incoming(Incoming::PubAck(ack)) => {
                match m.link.acknowledged(ack.pkid, Instant::now()) {
                    Some(Publish::Queued(seq)) => {
                        self.to_ack.push(seq);
                        self.report.mqtt.delivered += 1;
                    }
                    Some(Publish::Discovery(config)) => self.discovery_acknowledged(config),
                    Some(Publish::Direct) | None => {}
                }
            }
            Event::Incoming(Incoming::Publish(p)) => {
                let ha_status = format!("{}/status", m.spec.discovery_prefix);
                if p.topic == ha_status && p.payload.as_ref() == b"online" {
                    tracing::info!("Home Assistant announced itself; publishing discovery again");
                    self.announce_discovery(true);
                }
            }
            _ => {}
        }
    }

    /// On each connect: `online` on the availability topic, and Home Assistant discovery.
    fn announce(&mut self) {
        let device_id = self.cfg.device_id.clone();
        let Some(m) = &mut self.mqtt else { return };
        let Some(s) = &m.session else { return };
        let topic = messages::availability_topic(m.spec.topic_prefix.as_str(), &device_id);
        if s.client
            .try_publish(topic, QoS::AtLeastOnce, true, "online")
            .is_ok()
        {
            m.link.handed(Publish::Direct);
        }
        if m.spec.home_assistant {
            let ha_status = format!("{}/status", m.spec.discovery_prefix);
            let _ = s.client.try_subscribe(ha_status, QoS::AtLeastOnce);
        }
        self.announce_discovery(false);
    }

    /// Publishes Home Assistant's discovery config when it differs from the one the broker
    /// last acknowledged (retained there), or `always` (Home Assistant started and asks).
    fn announce_discovery(&mut self, always: bool) {
        let device_id = self.cfg.device_id.clone();
        let deployment = self.cfg.deployment.clone();
        let Some(m) = &mut self.mqtt else { return };
        let Some(s) = &m.session else { return };
        if !m.spec.home_assistant {
            return;
        }
        let (topic, config) = messages::discovery(
            m.spec.topic_prefix.as_str(),
            m.spec.discovery_prefix.as_str(),
            &device_id,
            Some(&deployment),
        );
        let config = config.to_string();
        if !always && self.sent.discovery.as_ref() == Some(&config) {
            return;
        }
        if s.client
            .try_publish(topic, QoS::AtLeastOnce, true, config.clone())
            .is_ok()
        {
            m.link.handed(Publish::Discovery(config));
        }
    }

    fn discovery_acknowledged(&mut self, config: String) {
        let remember = [
            ("discovery".to_string(), config.clone()),
            (DESTINATION.to_string(), self.sent.destination.clone()),
        ];
        match self
            .outbox
            .push_remembering(&[], &remember, Timestamp::now())
        {
            Ok(_) => self.sent.discovery = Some(config),
            Err(e) => {
                tracing::warn!(error = %errors::chain(&e), "cannot note the discovery config as sent")
            }
        }
    }

    /// Publishes waited [`MqttLink::stall_after`] without one acknowledgement: the session is dropped and
    /// tried again with back-off, and the link reported down with why.
    fn mqtt_stalled(&mut self) {
        let Some(m) = &self.mqtt else { return };
        let problem = Problem::new(
            errors::LINK_DOWN,
            format!(
                "the broker {} accepted the connection but acknowledged none of {} messages for {} s; connecting again",
                m.spec.url,
                m.link.in_flight(),
                m.link.stall_after().as_secs()
            ),
        );
        self.mqtt_failed_with(problem);
    }

    fn mqtt_failed(&mut self, e: Option<rumqttc::ConnectionError>) {
        let Some(m) = &self.mqtt else { return };
        let problem = match &e {
            Some(e) => mqtt::classify(e, &m.spec.url.to_string()),
            None => Problem::new(errors::LINK_DOWN, "the MQTT session ended"),
        };
        self.mqtt_failed_with(problem);
    }

    fn mqtt_failed_with(&mut self, problem: Problem) {
        let Some(m) = &mut self.mqtt else { return };
        if self.report.mqtt.last_error.as_ref() != Some(&problem) {
            tracing::warn!(code = %problem.code, "{}", problem.message);
        }
        if self.report.mqtt.connected || self.report.mqtt.since.is_none() {
            self.report.mqtt.since = Some(Timestamp::now());
        }
        self.report.mqtt.connected = false;
        self.report.mqtt.last_error = Some(problem);
        self.report_dirty = true;
        m.session = None;
        m.link.failed(Instant::now());
    }

    /// Hands the session the next queued messages, keeping [`IN_FLIGHT`] of them in flight.
    fn fill_mqtt(&mut self) {
        let Some(m) = &mut self.mqtt else { return };
        let Some(s) = &m.session else { return };
        let room = m.link.room();
        if room == 0 {
            return;
        }
        let batch = match self.outbox.next(Sink::Mqtt, m.link.cursor(), room) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %errors::chain(&e), "cannot read the outbox");
                return;
            }
        };
        // Queued by an older roost, or otherwise too large to ever carry: let go.
        let report = &mut self.report;
        let too_large = |msg: &Message| oversized(report, &msg.topic, msg.payload.len());
        let let_go = m.link.fill(batch, s, too_large);
        self.to_ack.extend(let_go);
    }

    fn flush_acks(&mut self) {
        if self.to_ack.is_empty() {
            return;
        }
        let seqs = std::mem::take(&mut self.to_ack);
        if let Err(e) = self.outbox.ack(&seqs, Timestamp::now()) {
            tracing::error!(error = %errors::chain(&e), "cannot remove delivered messages from the outbox");
            return;
        }
        // A figure that moves with every delivery waits for the periodic report (a report per
        // batch of acknowledgements rewrote status.json as often); an emptied queue is said at
        // once, or status.json shows a queue that is gone.
        if self.outbox.stats().is_ok_and(|s| s.depth == 0) {
            self.report_dirty = true;
        }
        if let Err(e) = self.outbox.shrink() {
            tracing::warn!(error = %errors::chain(&e), "cannot give back the outbox's free space");
        }
    }

    // --- HTTP -------------------------------------------------------------------------------

    fn start_http(&mut self) {
        let Some(h) = &mut self.http else { return };
        if h.job.is_some() || h.retry_at.is_some() {
            return;
        }
        // The first message that can be carried; those too large are let go on the way.
        let mut after = 0;
        let msg = loop {
            let next = match self.outbox.next(Sink::Http, after, 1) {
                Ok(mut b) => b.pop(),
                Err(_) => None,
            };
            let Some(msg) = next else { return };
            if !oversized(&mut self.report, &msg.topic, msg.payload.len()) {
                break msg;
            }
            self.to_ack.push(msg.seq);
            after = msg.seq;
        };
        let sink = h.sink.clone();
        h.job = Some(tokio::task::spawn_blocking(move || {
            (msg.seq, sink.post(&msg.payload))
        }));
    }

    fn on_http(&mut self, result: Option<(i64, Result<(), Problem>)>) {
        let Some(h) = &mut self.http else { return };
        h.job = None;
        let outcome = result.unwrap_or((
            0,
            Err(Problem::new(
                errors::INTERNAL,
                "the HTTP request task failed",
            )),
        ));
        match outcome {
            (seq, Ok(())) => {
                self.to_ack.push(seq);
                h.backoff = Duration::from_secs(1);
                self.report.http.delivered += 1;
                if !self.report.http.connected {
                    self.report.http.connected = true;
                    self.report.http.since = Some(Timestamp::now());
                    self.report.http.last_error = None;
                    self.report_dirty = true;
                }
            }
            (_, Err(problem)) => {
                if self.report.http.last_error.as_ref() != Some(&problem) {
                    tracing::warn!(code = %problem.code, "{}", problem.message);
                    self.report_dirty = true;
                }
                if self.report.http.connected || self.report.http.since.is_none() {
                    self.report.http.since = Some(Timestamp::now());
                }
                self.report.http.connected = false;
                self.report.http.last_error = Some(problem);
                h.retry_at = Some(Instant::now() + h.backoff);
                h.backoff = (h.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    // --- report -----------------------------------------------------------------------------

    fn write_report_if(&mut self, due: bool) {
        if !due && !self.report_dirty {
            return;
        }
        self.report.outbox = self.outbox.stats().unwrap_or_default();
        self.report.warnings = warnings(&self.report, &self.cfg, Timestamp::now());
        self.report.updated_at = Some(Timestamp::now());
        if let Err(e) = self.report.write(&self.state_dir) {
            tracing::warn!(error = %e, "cannot write the connector report");
        }
        self.report_dirty = false;
    }

    /// A clean stop: `offline` on the availability topic (the last will covers the rest).
    async fn stop(&mut self) {
        self.flush_acks();
        let device_id = self.cfg.device_id.clone();
        if let Some(m) = &mut self.mqtt
            && let Some(s) = &m.session
            && self.report.mqtt.connected
        {
            let topic = messages::availability_topic(m.spec.topic_prefix.as_str(), &device_id);
            let _ = s
                .client
                .try_publish(topic, QoS::AtLeastOnce, true, "offline");
            let _ = s.client.try_disconnect();
            // Let the event loop write them out.
            let deadline = Instant::now() + Duration::from_secs(2);
            if let Some(s) = &mut m.session {
                while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, s.events.recv()).await
                {
                }
            }
        }
        self.report.mqtt.connected = false;
        self.report_dirty = true;
        self.write_report_if(true);
    }
}

/// The name under which the sinks' identity is remembered with what they were sent.
const DESTINATION: &str = "destination";

/// What the sinks already have, as remembered in the outbox: the status's meaning, the Home
/// Assistant states and discovery config. Forgotten when the destination (device id, broker,
/// prefixes, endpoint) changed: a new broker gets everything once.
#[derive(Clone, Debug, Default)]
struct Remembered {
    /// The device id, broker, prefixes and endpoint these were sent to.
    destination: String,
    /// The comparable form of the last status queued.
    status: Option<Value>,
    /// Home Assistant entity -> its last state queued.
    states: BTreeMap<String, String>,
    /// The last discovery config the broker acknowledged.
    discovery: Option<String>,
}

impl Remembered {
    fn read(outbox: &Outbox, cfg: &ConnectConfig) -> Self {
        let http = cfg.connect.http.as_ref().map(|h| h.url.as_str());
        let mqtt = cfg.connect.mqtt.as_ref().map(|m| {
            let ha = m.home_assistant.then_some(m.discovery_prefix.as_str());
            (m.url.to_string(), m.topic_prefix.to_string(), ha)
        });
        let destination = serde_json::json!([cfg.device_id, mqtt, http]).to_string();
        let sent = outbox.sent();
        if sent.get(DESTINATION) != Some(&destination) {
            return Self {
                destination,
                ..Self::default()
            };
        }
        let states = (sent.iter())
            .filter_map(|(k, v)| Some((k.strip_prefix("state/")?.to_string(), v.clone())))
            .collect();
        Self {
            destination,
            status: sent
                .get("status")
                .and_then(|s| serde_json::from_str(s).ok()),
            states,
            discovery: sent.get("discovery").cloned(),
        }
    }

    /// The entries of `states` that differ from those remembered, to remember with them.
    fn states_changed(&self, states: &BTreeMap<String, String>) -> Vec<(String, String)> {
        (states.iter())
            .filter(|(k, v)| self.states.get(*k) != Some(v))
            .map(|(k, v)| (format!("state/{k}"), v.clone()))
            .collect()
    }
}

/// Messages queued for a sink that is gone, or for another device id or topic prefix, are
/// dropped at start (logged and counted).
fn forget_foreign(outbox: &mut Outbox, cfg: &ConnectConfig) {
    let id = &cfg.device_id;
    let mqtt_keep: Vec<String> = match &cfg.connect.mqtt {
        Some(m) => [
            Some(format!("{}/{id}/", m.topic_prefix)),
            m.acoupi_topic.as_ref().map(|a| format!("{a}/{id}")),
        ]
        .into_iter()
        .flatten()
        .collect(),
        None => Vec::new(),
    };
    let http_keep = vec![String::new()];
    for (sink, keep) in [
        (Sink::Mqtt, mqtt_keep),
        (
            Sink::Http,
            if cfg.connect.http.is_some() {
                http_keep
            } else {
                Vec::new()
            },
        ),
    ] {
        match outbox.drop_foreign(sink, &keep) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                dropped = n,
                ?sink,
                "dropped queued messages of a sink or identity no longer configured"
            ),
            Err(e) => {
                tracing::warn!(error = %errors::chain(&e), "cannot drop queued messages of an old configuration")
            }
        }
    }
}

fn open_mqtt(spec: MqttSpec) -> MqttLink {
    let stall_after = Link::stall_after_for(spec.keep_alive.as_std());
    MqttLink {
        spec,
        session: None,
        link: Link::new(usize::from(IN_FLIGHT), stall_after),
    }
}

/// The password and TLS settings of `spec`, read afresh (a secret fixed on the device is used
/// at the next attempt). An `mqtts` url whose CA file cannot be read still gets TLS with the
/// system's roots (the problem is reported), never a connection in clear.
fn secrets(
    spec: &MqttSpec,
    problems: &mut Vec<Problem>,
) -> Result<(Option<String>, Option<Arc<rustls::ClientConfig>>), Problem> {
    if let Some(p) = &spec.password_file
        && let Some(why) = crate::secret_file::exposed("passwordFile", p.as_path())
    {
        problems.push(Problem::new(errors::SECRET_EXPOSED, why));
    }
    let password = match &spec.password_file {
        Some(p) => match crate::secret_file::first_line(p.as_path()) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(Problem::new(
                    errors::SECRET_UNREADABLE,
                    format!("passwordFile {}: {e}", p.as_path().display()),
                ));
                None
            }
        },
        None => None,
    };
    if !spec.url.tls {
        return Ok((password, None));
    }
    let tls = match mqtt::tls_config(spec.ca_file.as_ref().map(|p| p.as_path())) {
        Ok(c) => c,
        Err(problem) => {
            problems.push(problem);
            mqtt::tls_config(None)?
        }
    };
    Ok((password, Some(tls)))
}

/// Warnings now: a link down longer than warnAfter (DEP_E501), refused credentials or an
/// untrusted certificate at once (they will not mend themselves), an HTTP endpoint failing,
/// messages dropped, outboxes set aside, secrets that cannot be read.
fn warnings(r: &ConnectReport, cfg: &ConnectConfig, now: Timestamp) -> Vec<Problem> {
    let warn_after = SignedDuration::try_from(cfg.connect.outbox.warn_after.as_std())
        .unwrap_or(SignedDuration::MAX);
    let mut out = Vec::new();
    for link in [&r.mqtt, &r.http] {
        let Some(problem) = &link.last_error else {
            continue;
        };
        let down_long = link
            .since
            .is_some_and(|s| now.duration_since(s) >= warn_after);
        let lasting = problem.code != errors::LINK_DOWN.code
            && problem.code != errors::HTTP_ENDPOINT_FAILING.code;
        if link.configured && !link.connected && (lasting || down_long) {
            out.push(problem.clone());
        }
    }
    // Judged by delivery: messages waiting longer than warnAfter mean nothing is being carried,
    // connected or not (a broker that never acknowledges, an endpoint that never answers).
    let oldest_waits = r
        .outbox
        .oldest_at
        .is_some_and(|t| now.duration_since(t) >= warn_after);
    if oldest_waits && !out.iter().any(|p| p.code == errors::LINK_DOWN.code) {
        out.push(Problem::new(errors::LINK_DOWN,
            format!(
                "{} messages wait, the oldest since {}: nothing has been delivered for longer than warnAfter{}",
                r.outbox.depth,
                r.outbox.oldest_at.map(|t| t.to_string()).unwrap_or_default(),
                if r.mqtt.connected { " although the broker is connected" } else { "" }
            ),
        ));
    }
    if r.oversized > 0 {
        out.push(Problem::new(errors::MESSAGE_TOO_LARGE,
            format!(
                "{} messages too large to ever send were dropped since the connector started (the newest: {})",
                r.oversized,
                r.last_oversized.as_deref().unwrap_or("?")
            ),
        ));
    }
    out.extend(r.outbox_error.clone());
    if r.outbox.dropped > r.dropped_before {
        out.push(Problem::new(errors::OUTBOX_FULL,
            format!(
                "{} messages dropped since the connector started, to keep the outbox within maxBytes and maxAge",
                r.outbox.dropped - r.dropped_before
            ),
        ));
    }
    for aside in &r.outboxes_set_aside {
        out.push(Problem::new(
            errors::OUTBOX_UNREADABLE,
            format!(
                "the outbox could not be read and was set aside as {}",
                aside.display()
            ),
        ));
    }
    out.extend(
        r.warnings
            .iter()
            .filter(|w| w.code == errors::SECRET_UNREADABLE.code)
            .cloned(),
    );
    out.dedup();
    out
}

async fn recv<T>(rx: Option<&mut tokio::sync::mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn at(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn join<T>(job: Option<&mut tokio::task::JoinHandle<T>>) -> Option<T> {
    match job {
        Some(job) => job.await.ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(storage: &Path, broker: &str) -> ConnectConfig {
        serde_json::from_value(serde_json::json!({
            "deployment": "t", "deviceId": "dev-1", "storage": storage,
            "connect": {"mqtt": {"url": broker}, "heartbeat": {"interval": "10m"}}
        }))
        .unwrap()
    }

    fn write_status(state: &Path) {
        let doc: StatusDoc = serde_json::from_value(serde_json::json!({
            "apiVersion": "roost/v1", "kind": "DeploymentStatus", "generation": 1,
            "observedGeneration": 1, "phase": "Succeeded", "status": "Running",
            "reconciler": {"pid": std::process::id(), "version": "0", "runtime": "process"},
            "updatedAt": Timestamp::now().to_string()
        }))
        .unwrap();
        let path = crate::state_dir::StateDir::new(state.to_path_buf()).status();
        crate::status::write(&path, &doc).unwrap();
    }

    /// Messages queued by a start: status, Home Assistant states, detections and a heartbeat.
    fn start(state: &Path, cfg: ConnectConfig) -> (u64, u64) {
        let mut c = Connector::open(cfg, state).unwrap();
        let before = c.outbox.counter_of_messages();
        c.on_status();
        c.queue_detections();
        let after_status = c.outbox.counter_of_messages();
        c.on_heartbeat();
        (
            after_status - before,
            c.outbox.counter_of_messages() - after_status,
        )
    }

    /// Issue 22: each start queued a burst again; the first one, every past model output.
    #[tokio::test]
    async fn a_start_queues_only_what_the_sinks_do_not_have() {
        let state = tempfile::tempdir().unwrap();
        let storage = state.path().join("storage");
        let now = Timestamp::now();
        super::super::detections::tests::metadata(&storage, 3 * 24 * 60, 1, now);
        write_status(state.path());
        let cfg = config(&storage, "mqtt://127.0.0.1:9");
        let (first, _) = start(state.path(), cfg.clone());
        // Status, 4 Home Assistant states, a day of detections (the 3 days before it are not).
        assert_eq!(first, 1 + 4 + 24 * 60);
        let (again, beat) = start(state.path(), cfg.clone());
        assert_eq!(again, 0, "nothing changed, nothing queued");
        // The heartbeat and the counters that moved (its own depth, free space).
        assert!(
            beat <= 1 + messages::COUNTER_ENTITIES.len() as u64,
            "{beat}"
        );
        let (moved, _) = start(state.path(), config(&storage, "mqtt://127.0.0.2:9"));
        assert_eq!(moved, 1 + 4, "another broker gets the status again");
    }
}
