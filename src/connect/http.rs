//! The HTTP side of the connector: each queued message is POSTed as JSON to
//! `spec.connect.http.url` with the headers of `headersFile`, over rustls with the system's CA
//! store and an optional CA file; a 2xx answer is the acknowledgement. ureq (blocking) runs on
//! tokio's blocking pool, one request at a time, so messages arrive in order.

use std::sync::Arc;

use super::report::{ConnectReport, Problem};
use crate::errors;
use crate::spec::connect::HttpSpec;

/// A configured endpoint: URL, agent (timeout, TLS roots) and headers.
#[derive(Clone)]
pub struct HttpSink {
    url: String,
    agent: ureq::Agent,
    headers: Arc<Vec<(String, String)>>,
}

impl HttpSink {
    /// The sink of `spec`; an unreadable headers or CA file is a warning in `report` (the sink
    /// still runs, without them).
    pub fn new(spec: &HttpSpec, report: &mut ConnectReport) -> Self {
        if let Some(path) = &spec.headers_file
            && let Some(why) = crate::secret_file::exposed("headersFile", path.as_path())
        {
            report
                .warnings
                .push(Problem::new(errors::SECRET_EXPOSED, why));
        }
        let headers = match &spec.headers_file {
            Some(path) => match read_headers(path.as_path()) {
                Ok(h) => h,
                Err(why) => {
                    report.warnings.push(Problem::new(
                        errors::SECRET_UNREADABLE,
                        format!("headersFile {}: {why}", path.as_path().display()),
                    ));
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let roots = roots(spec.ca_file.as_ref().map(|p| p.as_path()), report);
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
            .build();
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(spec.timeout.as_std()))
            .http_status_as_error(false)
            // A redirect answers a POST with somewhere else (a captive portal's login page):
            // not a delivery. The 3xx is an error and the message stays queued.
            .max_redirects(0)
            .tls_config(tls)
            .build();
        Self {
            url: spec.url.as_str().to_string(),
            agent: ureq::Agent::new_with_config(config),
            headers: Arc::new(headers),
        }
    }

    /// POSTs `body` (JSON); Ok on a 2xx answer.
    pub fn post(&self, body: &[u8]) -> Result<(), Problem> {
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        for (name, value) in self.headers.iter() {
            request = request.header(name, value);
        }
        match request.send(body) {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(Problem::new(
                errors::HTTP_ENDPOINT_FAILING,
                format!("{} answered {}", self.url, response.status()),
            )),
            Err(e) => {
                let text = errors::chain(&e);
                let code = match super::mqtt::is_certificate_error(&text) {
                    true => &errors::CERTIFICATE_NOT_TRUSTED,
                    false => &errors::HTTP_ENDPOINT_FAILING,
                };
                Err(Problem::new(code, format!("POST {}: {text}", self.url)))
            }
        }
    }
}

/// `Name: value` lines; blank lines and `#` comments skipped.
pub fn read_headers(path: &std::path::Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("line {}: expected `Name: value`", i + 1));
        };
        out.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(out)
}

/// The system's CA certificates plus those of `ca_file`.
fn roots(
    ca_file: Option<&std::path::Path>,
    report: &mut ConnectReport,
) -> Vec<ureq::tls::Certificate<'static>> {
    let mut roots: Vec<ureq::tls::Certificate<'static>> = rustls_native_certs::load_native_certs()
        .certs
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| e.to_string());
        let parsed = pem.and_then(|pem| {
            ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e.to_string())),
                })
                .collect::<Result<Vec<_>, String>>()
        });
        match parsed {
            Ok(certs) if !certs.is_empty() => roots.extend(certs),
            Ok(_) => report.warnings.push(Problem::new(
                errors::SECRET_UNREADABLE,
                format!("caFile {}: no PEM certificate in it", path.display()),
            )),
            Err(why) => report.warnings.push(Problem::new(
                errors::SECRET_UNREADABLE,
                format!("caFile {}: {why}", path.display()),
            )),
        }
    }
    roots
}
