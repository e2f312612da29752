//! The MQTT side of the connector: connection options (TLS with the system's CA store and an
//! optional CA file, credentials from a file, the last will `offline`), one session per
//! connection attempt whose event loop runs on a task of its own, and the classification of
//! failures into catalogue codes. A failed session is dropped whole and a new one started after
//! a back-off, so no packet id of an old session is ever matched against a new one.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, LastWill, MqttOptions, QoS, Transport};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::messages::availability_topic;
use super::report::Problem;
use crate::errors;
use crate::spec::connect::MqttSpec;

/// Publishes in flight at once: enough for thousands of messages a second on a LAN, few
/// enough that a reconnect resends little.
pub const IN_FLIGHT: u16 = 100;

/// What the poll task hands the connector: an event, or the error that ended the session.
pub type SessionEvent = Result<Event, ConnectionError>;

/// One connection attempt: its client and the events of its event loop.
pub struct Session {
    /// Publishes and subscribes (queued; never waits on the network).
    pub client: AsyncClient,
    /// Events in order; the last one of a failed session is its error.
    pub events: UnboundedReceiver<SessionEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Starts connecting with `options`.
    pub fn start(options: MqttOptions) -> Self {
        let (client, mut eventloop) = AsyncClient::new(options, usize::from(IN_FLIGHT) * 2 + 16);
        let (tx, events) = unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if tx.send(event).is_err() || failed {
                    return;
                }
            }
        });
        Self {
            client,
            events,
            task,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The options of a session: client id `roost-<deviceId>`, keep-alive, credentials, the last
/// will on the availability topic, TLS for `mqtts`.
pub fn options(
    spec: &MqttSpec,
    device_id: &str,
    password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> MqttOptions {
    let mut o = MqttOptions::new(
        format!("roost-{device_id}"),
        spec.url.host.clone(),
        spec.url.port,
    );
    o.set_keep_alive(spec.keep_alive.as_std().max(Duration::from_secs(5)));
    o.set_clean_session(true);
    o.set_inflight(IN_FLIGHT);
    o.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(user) = spec.user(device_id) {
        o.set_credentials(user, password.unwrap_or_default());
    }
    o.set_last_will(LastWill::new(
        availability_topic(spec.topic_prefix.as_str(), device_id),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(config) = tls {
        o.set_transport(Transport::Tls(rumqttc::TlsConfiguration::Rustls(config)));
    }
    o
}

/// TLS settings: the system's CA store plus the PEM certificates in `ca_file`, verified with
/// rustls (ring). Errors name the file.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, Problem> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let unreadable = |why: String| {
            Problem::new(
                errors::SECRET_UNREADABLE,
                format!("caFile {}: {why}", path.display()),
            )
        };
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| unreadable(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| unreadable(e.to_string()))?;
        if certs.is_empty() {
            return Err(unreadable("no PEM certificate in it".into()));
        }
        roots.add_parsable_certificates(certs);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Problem::new(errors::INTERNAL, e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The catalogue code and message of a session's failure.
pub fn classify(e: &ConnectionError, url: &str) -> Problem {
    use rumqttc::ConnectReturnCode;
    let text = crate::errors::chain(e);
    match e {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => Problem::new(
            errors::CREDENTIALS_REFUSED,
            format!("the broker {url} refused the credentials ({text})"),
        ),
        _ if is_certificate_error(&text) => Problem::new(
            errors::CERTIFICATE_NOT_TRUSTED,
            format!("the broker {url} presented a certificate that does not verify: {text}"),
        ),
        _ => Problem::new(
            errors::LINK_DOWN,
            format!("cannot reach the broker {url}: {text}"),
        ),
    }
}

/// Whether an error's text says a certificate did not verify (rustls reports it through I/O).
pub fn is_certificate_error(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "certificate",
        "unknownissuer",
        "unknown issuer",
        "badsignature",
        "notvalidforname",
    ]
    .iter()
    .any(|w| t.contains(w))
}

/// The session's client is where the link's publishes go (QoS 1, never waiting: a full
/// request queue refuses, and the message waits in the outbox).
impl super::link::Publisher for Session {
    fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> bool {
        (self.client)
            .try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_failures_are_told_from_a_link_that_is_down() {
        assert!(is_certificate_error(
            "TLS: invalid peer certificate: UnknownIssuer"
        ));
        assert!(!is_certificate_error(
            "I/O: Connection refused (os error 111)"
        ));
        let refused =
            ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::BadUserNamePassword);
        assert_eq!(classify(&refused, "mqtt://h").code, "DEP_E502");
        let down = ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&down, "mqtt://h").code, "DEP_E501");
    }
}
