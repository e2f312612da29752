//! The MQTT session of the desired state: its own client id (`roost-<deviceId>-desired`, no
//! last will: availability is the connector's), the subscription, the report, the back-off.

use super::*;

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How long a session must last before the back-off starts over.
const STEADY: Duration = Duration::from_secs(30);

impl Remote {
    /// Starts a session when one is due and the deployment asks for it.
    pub(super) fn connect_if_due(&mut self) {
        let Some(link) = &self.link else {
            self.reconnect_at = None;
            return;
        };
        if self.session.is_some() || self.reconnect_at.is_some_and(|t| t > Instant::now()) {
            return;
        }
        self.reconnect_at = None;
        match options(link) {
            Ok(o) => self.session = Some(Session::start(o)),
            Err(why) => {
                tracing::warn!(%why, "remote desired state: cannot connect");
                self.retry_later();
            }
        }
    }

    /// Drops the session and tries again after the back-off. The back-off starts over only
    /// after a session that stayed up [`STEADY`]: a broker that takes the connection and then
    /// drops it (another client with the same id, a message too large) is not retried every
    /// second.
    fn retry_later(&mut self) {
        if self
            .connected_at
            .take()
            .is_some_and(|t| t.elapsed() >= STEADY)
        {
            self.backoff = Duration::from_secs(1);
        }
        self.session = None;
        self.reconnect_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// One event of the session.
    pub(super) async fn on_event(&mut self, ev: Option<crate::connect::mqtt::SessionEvent>) {
        let Some(link) = self.link.clone() else {
            return;
        };
        match ev {
            Some(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {
                self.connected_at = Some(Instant::now());
                self.connected_in_gate = true;
                if let Some(s) = &self.session {
                    let _ = s
                        .client
                        .try_subscribe(desired_topic(&link), QoS::AtLeastOnce);
                }
                // Say where the device stands to whoever looks now.
                if let Some(status) = self.reported.clone() {
                    self.publish_report(&status);
                }
                self.step(None).await;
            }
            Some(Ok(Event::Incoming(Incoming::Publish(p)))) if p.topic == desired_topic(&link) => {
                self.step(Some(&p.payload)).await;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                if let rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                    rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(size),
                )) = &e
                {
                    // Larger than the session takes: it ended the session, and would again at
                    // each connection; said as the refusal it is.
                    let r = Refusal {
                        code: &errors::DESIRED_TOO_LARGE,
                        reason: format!(
                            "a message of {size} bytes on the desired topic, over the {} bytes a device takes",
                            signed::MAX_MESSAGE
                        ),
                        version: None,
                    };
                    self.take_refusal(r);
                }
                let problem = crate::connect::mqtt::classify(&e, &link.mqtt.url.to_string());
                tracing::warn!(code = problem.code, message = %problem.message, "remote desired state: link lost");
                self.retry_later();
            }
            None => self.retry_later(),
        }
    }

    /// Publishes `status` retained on the report topic (queued; never waits on the network).
    pub(super) fn publish_report(&self, status: &RemoteStatus) {
        let (Some(link), Some(s)) = (&self.link, &self.session) else {
            return;
        };
        // Refusal reasons may quote the file (a location): redacted as status.json is.
        let bytes = serde_json::to_vec(&crate::redact::typed(status)).unwrap_or_default();
        let _ = s
            .client
            .try_publish(report_topic(link), QoS::AtLeastOnce, true, bytes);
    }
}

/// `<topicPrefix>/<deviceId>/desired`.
fn desired_topic(link: &Link) -> String {
    super::super::desired_topic(link.mqtt.topic_prefix.as_str(), &link.device)
}

/// `<topicPrefix>/<deviceId>/desired/report`.
fn report_topic(link: &Link) -> String {
    super::super::report_topic(link.mqtt.topic_prefix.as_str(), &link.device)
}

fn options(link: &Link) -> Result<MqttOptions, String> {
    let spec = &link.mqtt;
    let mut o = MqttOptions::new(
        format!("roost-{}-desired", link.device),
        spec.url.host.clone(),
        spec.url.port,
    );
    o.set_keep_alive(spec.keep_alive.as_std().max(Duration::from_secs(5)));
    // A persistent session: a version published while the link was down is the retained
    // message anyway, so a clean session loses nothing and keeps the broker's memory small.
    o.set_clean_session(true);
    // Room for a message just over the 1 MiB a device takes, so it is refused with its code
    // (DEP_E805) instead of ending the session.
    o.set_max_packet_size(2 << 20, 64 << 10);
    if let Some(user) = spec.user(&link.device) {
        let password = match &spec.password_file {
            Some(p) => crate::secret_file::first_line(p.as_path())
                .map_err(|e| format!("passwordFile {}: {e}", p.as_path().display()))?,
            None => String::new(),
        };
        o.set_credentials(user, password);
    }
    if spec.url.tls {
        let ca = spec.ca_file.as_ref().map(|p| p.as_path());
        let config = crate::connect::mqtt::tls_config(ca).map_err(|p| p.message)?;
        o.set_transport(Transport::Tls(rumqttc::TlsConfiguration::Rustls(config)));
    }
    Ok(o)
}
