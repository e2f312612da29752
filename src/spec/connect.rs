//! `spec.connect`: where the device's status, heartbeats and messages go when it is connected
//! (an MQTT broker, an HTTP endpoint, a Prometheus text file) and how long they wait in the
//! outbox while it is not. Secrets are never in the file: only the paths of files that hold
//! them. Parsing only; sending is `crate::connect`'s.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::recorder::ByteSize;
use super::{AbsolutePath, FieldIssue, HumanDuration};

/// The `spec.connect` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectSpec {
    /// Identifies this device in topics and messages: 1-64 letters, digits, '-' or '_'.
    /// Default: `roost-` and the first 12 characters of /etc/machine-id (stable across reboots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<TopicLevel>,
    /// An MQTT 3.1.1 broker: retained status, availability, heartbeats, Home Assistant discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttSpec>,
    /// An HTTP endpoint that receives status and heartbeats as JSON POSTs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    /// How often a heartbeat is sent.
    #[serde(default)]
    pub heartbeat: HeartbeatSpec,
    /// Bounds of the durable outbox messages wait in while the link is down.
    #[serde(default)]
    pub outbox: OutboxSpec,
    /// A text file for node_exporter's textfile collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSpec>,
    /// Desired state over the broker (needs `mqtt`): signed deployment files taken from the
    /// retained topic `<topicPrefix>/<deviceId>/desired`, applied like a local edit, kept only
    /// through a health gate (docs/FLEET.md). Off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<DesiredSpec>,
    /// Labels that `roost fleet rollout --select label=value` chooses devices by (names and
    /// values: 1-64 letters, digits, '-' or '_'); published with the device's rollout report.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<TopicLevel, TopicLevel>,
}

/// `spec.connect.desired`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DesiredSpec {
    /// Absolute path of a folder of minisign public keys (`*.pub`, as `minisign -G` writes
    /// them); a message signed by any of them is trusted. Read at each message, so a key is
    /// added or withdrawn by adding or removing its file.
    pub trusted_keys: AbsolutePath,
    /// How long the health gate watches a new version when its message does not say (default
    /// 10m; 5s..24h).
    #[serde(default = "default_gate")]
    pub gate: HumanDuration,
}

fn default_gate() -> HumanDuration {
    HumanDuration::from_secs(600)
}

/// `spec.connect.mqtt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MqttSpec {
    /// `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (TLS, default 8883).
    pub url: BrokerUrl,
    /// User name, when the broker asks for one. Default with a passwordFile: the device's id,
    /// so one file serves a fleet whose broker has a user per device (docs/FLEET.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Absolute path of a file holding the password (its first line; the file, never the YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<AbsolutePath>,
    /// Absolute path of a PEM file of CA certificates to trust besides the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<AbsolutePath>,
    /// First topic level of every roost topic: `<topicPrefix>/<deviceId>/...` (default `roost`).
    #[serde(default = "default_prefix")]
    pub topic_prefix: TopicLevel,
    /// When set, heartbeats and model outputs are also published as acoupi 0.8.0 publishes
    /// them (its `Heartbeat` and `ModelOutput` JSON, QoS 1, not retained) on one topic,
    /// `<acoupiTopic>/<deviceId>`: what an acoupi consumer subscribed to acoupi's topic takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acoupi_topic: Option<TopicLevel>,
    /// acoupi's `use_message_type`: the acoupi messages go to `<acoupiTopic>/<deviceId>/heartbeat`
    /// and `.../detection` instead of one topic (default false, as in acoupi).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub acoupi_message_type: bool,
    /// Home Assistant's discovery prefix (default `homeassistant`); `homeAssistant: false`
    /// turns discovery off.
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: TopicLevel,
    /// Whether Home Assistant discovery is published (default true).
    #[serde(default = "yes")]
    pub home_assistant: bool,
    /// MQTT keep-alive: how soon the broker notices a dead link and publishes the last will.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: HumanDuration,
}

/// `spec.connect.http`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSpec {
    /// `http://` or `https://` URL that receives each message as a JSON POST.
    pub url: HttpUrl,
    /// Absolute path of a file of `Name: value` lines sent as headers (tokens live there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_file: Option<AbsolutePath>,
    /// How long one POST may take.
    #[serde(default = "default_http_timeout")]
    pub timeout: HumanDuration,
    /// Absolute path of a PEM file of CA certificates to trust besides the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<AbsolutePath>,
}

/// `spec.connect.heartbeat`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HeartbeatSpec {
    /// Time between heartbeats (default 10m).
    pub interval: HumanDuration,
}

impl Default for HeartbeatSpec {
    fn default() -> Self {
        Self {
            interval: HumanDuration::from_secs(600),
        }
    }
}

/// `spec.connect.outbox`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OutboxSpec {
    /// Most bytes of messages kept (default 64MiB); the oldest are dropped first, and counted.
    pub max_bytes: ByteSize,
    /// Oldest message kept (default 30d).
    pub max_age: HumanDuration,
    /// A link down this long is a warning (DEP_E501) in the status (default 15m).
    pub warn_after: HumanDuration,
}

impl Default for OutboxSpec {
    fn default() -> Self {
        Self {
            max_bytes: ByteSize(64 << 20),
            max_age: HumanDuration::from_secs(30 * 86_400),
            warn_after: HumanDuration::from_secs(900),
        }
    }
}

/// `spec.connect.prometheus`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusSpec {
    /// Absolute path of the `.prom` file node_exporter's textfile collector reads; written
    /// whole (temp file in the same folder, rename).
    pub textfile: AbsolutePath,
}

fn default_prefix() -> TopicLevel {
    TopicLevel("roost".into())
}
fn default_discovery_prefix() -> TopicLevel {
    TopicLevel("homeassistant".into())
}
fn yes() -> bool {
    true
}
fn default_keep_alive() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_http_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}

/// One MQTT topic level: 1-64 letters, digits, '-' or '_' (no '/', '+', '#').
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct TopicLevel(String);

impl TryFrom<String> for TopicLevel {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        match ok {
            true => Ok(Self(s)),
            false => Err(format!(
                "invalid topic level {s:?}: use 1-64 letters, digits, '-' or '_'"
            )),
        }
    }
}
impl From<TopicLevel> for String {
    fn from(t: TopicLevel) -> String {
        t.0
    }
}
impl TopicLevel {
    /// The level as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for TopicLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An MQTT broker address: `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct BrokerUrl {
    raw: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Whether TLS is used (`mqtts`).
    pub tls: bool,
}

impl TryFrom<String> for BrokerUrl {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid broker url {raw:?}: {why}; write mqtt://host:1883 or mqtts://host:8883"
            )
        };
        let (tls, rest) = match raw.split_once("://") {
            Some(("mqtt", rest)) => (false, rest),
            Some(("mqtts", rest)) => (true, rest),
            _ => return Err(bad("the scheme must be mqtt or mqtts")),
        };
        let rest = rest.trim_end_matches('/');
        // An IPv6 literal keeps its colons inside brackets: only a colon after `]` is a port.
        let port_colon = match rest.rfind(']') {
            Some(close) => rest[close..].find(':').map(|i| close + i),
            None => rest.rfind(':'),
        };
        let (host, port) = match port_colon.map(|i| (&rest[..i], &rest[i + 1..])) {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port must be 1-65535"))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 || host.contains(['/', '@', ' ']) {
            return Err(bad(
                "a host and a port are needed (no path, no user in the url)",
            ));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
            raw,
        })
    }
}
impl From<BrokerUrl> for String {
    fn from(u: BrokerUrl) -> String {
        u.raw
    }
}
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// An `http://` or `https://` URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct HttpUrl(String);

impl TryFrom<String> for HttpUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let rest = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => {
                Ok(Self(s))
            }
            _ => Err(format!(
                "invalid http url {s:?}: write http://host/path or https://host/path"
            )),
        }
    }
}
impl From<HttpUrl> for String {
    fn from(u: HttpUrl) -> String {
        u.0
    }
}
impl HttpUrl {
    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl MqttSpec {
    /// The user name sent: `username`, else the device's id when a password file is given.
    pub fn user(&self, device_id: &str) -> Option<String> {
        (self.username.clone())
            .or_else(|| self.password_file.as_ref().map(|_| device_id.to_string()))
    }
}

impl ConnectSpec {
    /// Cross-field checks.
    pub fn validate(&self) -> Vec<FieldIssue> {
        let mut issues = Vec::new();
        if self.mqtt.is_none() && self.http.is_none() && self.prometheus.is_none() {
            issues.push(FieldIssue::new(
                "spec.connect",
                "nothing to connect to: give mqtt, http or prometheus, or remove spec.connect",
            ));
        }
        if let Some(m) = &self.mqtt {
            let keep_alive = m.keep_alive.as_std().as_secs();
            if !(5..=3600).contains(&keep_alive) {
                issues.push(FieldIssue::new(
                    "spec.connect.mqtt.keepAlive",
                    format!("keepAlive {} is outside 5s..1h", m.keep_alive),
                ));
            }
        }
        if let Some(d) = &self.desired {
            if self.mqtt.is_none() {
                issues.push(FieldIssue::new(
                    "spec.connect.desired",
                    "desired state comes over MQTT: add spec.connect.mqtt, or remove spec.connect.desired",
                ));
            }
            let gate = d.gate.as_std().as_secs();
            if !(5..=86_400).contains(&gate) {
                issues.push(FieldIssue::new(
                    "spec.connect.desired.gate",
                    format!("gate {} is outside 5s..24h", d.gate),
                ));
            }
        }
        if let Some(h) = &self.http {
            let t = h.timeout.as_std();
            if t < std::time::Duration::from_millis(100) || t > std::time::Duration::from_secs(600)
            {
                issues.push(FieldIssue::new(
                    "spec.connect.http.timeout",
                    format!("timeout {} is outside 100ms..10m; no POST could finish, or a hung one would hold the queue", h.timeout),
                ));
            }
        }
        if self.heartbeat.interval.as_std() < std::time::Duration::from_secs(10) {
            issues.push(FieldIssue::new(
                "spec.connect.heartbeat.interval",
                format!(
                    "interval {} is shorter than 10s; a heartbeat that often costs battery and data for nothing",
                    self.heartbeat.interval
                ),
            ));
        }
        if self.outbox.max_bytes.bytes() < 64 << 10 {
            issues.push(FieldIssue::new(
                "spec.connect.outbox.maxBytes",
                "maxBytes below 64KiB cannot hold one status document; give at least 1MiB",
            ));
        }
        issues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_default_ports() {
        let u = BrokerUrl::try_from("mqtts://broker.example.org".to_string()).unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.tls),
            ("broker.example.org", 8883, true)
        );
        let u = BrokerUrl::try_from("mqtt://[::1]".to_string()).unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1883));
        let u = BrokerUrl::try_from("mqtt://[::1]:1884".to_string()).unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1884));
        let u = BrokerUrl::try_from("mqtt://127.0.0.1:18830/".to_string()).unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.tls),
            ("127.0.0.1", 18830, false)
        );
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://u@h",
            "h:1883",
        ] {
            assert!(BrokerUrl::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_levels_refuse_wildcards_and_separators() {
        for bad in ["", "a/b", "+", "#", "a b", &"x".repeat(65)] {
            assert!(TopicLevel::try_from(bad.to_string()).is_err(), "{bad}");
        }
        assert!(TopicLevel::try_from("meadow-north_01".to_string()).is_ok());
    }
}
