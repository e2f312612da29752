//! Redaction of what looks like a credential in text roost passes on: a program's error output,
//! command lines, URLs. Every document that leaves roost's own files (status.json and so the
//! page, `roost status`, the broker; the components' reports) goes through [`text`] or
//! [`json`] first. The rest of the text stays as it was, so an error still says what failed.
//!
//! What is replaced by `<redacted>` (keys compared without case):
//! - the password of a URL's user info (`mqtts://user:<redacted>@host`), or the whole user info
//!   when it has no `:` (`https://<redacted>@host`, a token);
//! - the value of a `key=value`, `key: value` or `"key": "value"` whose key names a secret
//!   ([`SECRET_KEYS`]: password, secret, token, api key, authorization, credentials, cookie,
//!   private or access key, also at the end of a longer name: `X-Api-Key`, `MQTT_PASSWORD`),
//!   and of a `key=value` whose key is one of the shorter [`SECRET_PARAMETERS`] (`key=`,
//!   `pass=`, `sig=`, `session=` ...: query parameters, flags, environment assignments);
//! - `Bearer`, `Basic`, `Token` and `Digest` authorization values;
//! - tokens of a recognised shape: JSON web tokens, AWS access key ids, GitHub, GitLab and
//!   Slack tokens, `sk-`/`pk_live_`-style API keys;
//! - PEM private key blocks.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex_lite::{Captures, Regex};

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// Key names that mark their value as a secret after `=` or `:` (matched at the end of a longer
/// name, after a separator, so `X-Api-Key` and `MQTT_PASSWORD` count, `monkey` does not).
const SECRET_KEYS: &str = "password|passwd|passphrase|secret|client_secret|token|access_token|refresh_token|id_token|authorization|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|private[_-]?key|credentials?|cookie|set-cookie";
/// Shorter names that are secrets only as `name=value` (a query parameter, a flag, an
/// environment assignment): after `:` they are too often ordinary words ("key: missing").
const SECRET_PARAMETERS: &str = "pwd|pass|key|auth|sig|signature|session|sessionid|sid";

static KEY_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        // A key (optionally quoted), then = or :, then a quoted or bare value.
        r#"(?i)(["']?)\b((?:[a-z0-9]+[_.\-])*(?:{SECRET_KEYS}))(["']?)(\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s&;,"'<>]+)"#
    ))
    .expect("valid pattern")
});

static PARAMETER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r#"(?i)()\b((?:[a-z0-9]+[_.\-])*(?:{SECRET_PARAMETERS}))()(=)("[^"]*"|'[^']*'|[^\s&;,"'<>]+)"#
    ))
    .expect("valid pattern")
});

static URL_USERINFO: LazyLock<Regex> = LazyLock::new(|| {
    // scheme://userinfo@ ; userinfo stops at / ? # @ and white space.
    Regex::new(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/?#@\s]+)@").expect("valid pattern")
});

static AUTH_SCHEME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(bearer|basic|token|digest)(\s+)([A-Za-z0-9\-._~+/=]{8,})")
        .expect("valid pattern")
});

static TOKEN_SHAPES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"\beyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*",
        r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
        r"|\bgh[pousr]_[A-Za-z0-9]{20,}",
        r"|\bgithub_pat_[A-Za-z0-9_]{20,}",
        r"|\bglpat-[A-Za-z0-9_\-]{20,}",
        r"|\bxox[abposr]-[A-Za-z0-9\-]{10,}",
        r"|\b(?:sk|pk|rk)[-_](?:live_|test_|proj-)?[A-Za-z0-9_\-]{20,}",
    ))
    .expect("valid pattern")
});

static PEM_PRIVATE_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
    )
    .expect("valid pattern")
});

/// `text` with every credential it seems to hold replaced by [`REDACTED`]; borrowed unchanged
/// when there is none (the common case costs one scan per pattern).
pub fn text(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    replace(&mut out, &PEM_PRIVATE_KEY, |_| REDACTED.to_string());
    replace(&mut out, &URL_USERINFO, |c| {
        let info = &c[2];
        match info.split_once(':') {
            Some((user, _)) => format!("{}{user}:{REDACTED}@", &c[1]),
            None => format!("{}{REDACTED}@", &c[1]),
        }
    });
    replace(&mut out, &AUTH_SCHEME, |c| {
        format!("{}{}{REDACTED}", &c[1], &c[2])
    });
    for pattern in [&*KEY_VALUE, &*PARAMETER] {
        replace(&mut out, pattern, key_value);
    }
    replace(&mut out, &TOKEN_SHAPES, |_| REDACTED.to_string());
    out
}

/// `key=value` with the value replaced, its quotes kept.
fn key_value(c: &Captures<'_>) -> String {
    let value = &c[5];
    let quote = if value.starts_with('"') {
        "\""
    } else if value.starts_with('\'') {
        "'"
    } else {
        ""
    };
    if value.trim_matches(['"', '\'']) == REDACTED {
        return c[0].to_string();
    }
    format!(
        "{}{}{}{}{quote}{REDACTED}{quote}",
        &c[1], &c[2], &c[3], &c[4]
    )
}

fn replace(out: &mut Cow<'_, str>, pattern: &Regex, with: impl Fn(&Captures<'_>) -> String) {
    if pattern.is_match(out) {
        *out = Cow::Owned(
            pattern
                .replace_all(out, |c: &Captures<'_>| with(c))
                .into_owned(),
        );
    }
}

/// Redacts every string in `value`, in place (object keys are kept: they are roost's names).
pub fn json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => {
            if let Cow::Owned(clean) = text(s) {
                *s = clean;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(json),
        serde_json::Value::Object(map) => map.values_mut().for_each(json),
        _ => {}
    }
}

/// `value` serialized, redacted, and read back as `T` (for typed documents such as status.json:
/// a field that no longer parses after redaction keeps its original value).
pub fn typed<T: serde::Serialize + serde::de::DeserializeOwned + Clone>(value: &T) -> T {
    let Ok(mut tree) = serde_json::to_value(value) else {
        return value.clone();
    };
    json(&mut tree);
    serde_json::from_value(tree).unwrap_or_else(|_| value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn gone(input: &str, secret: &str, kept: &[&str]) {
        let out = text(input);
        assert!(!out.contains(secret), "{secret:?} left in {out:?}");
        assert!(out.contains(REDACTED), "{out:?}");
        for k in kept {
            assert!(out.contains(k), "{k:?} lost from {out:?}");
        }
    }

    #[test]
    fn url_user_info_loses_its_password() {
        gone(
            "error: connect to https://alice:hunter2@models.example.org/v1 refused",
            "hunter2",
            &["alice", "models.example.org/v1", "refused"],
        );
        gone("mqtts://dev:s3cr3t@broker:8883", "s3cr3t", &["broker:8883"]);
        gone(
            "fetch https://ghtoken123abc@host/x",
            "ghtoken123abc",
            &["host/x"],
        );
        gone("postgres://u:p%40ss@db/x", "p%40ss", &["db/x"]);
    }

    #[test]
    fn secret_parameters_and_headers_lose_their_values() {
        gone(
            "GET /api?station=7&api_key=ABCDEF123&format=json failed",
            "ABCDEF123",
            &["station=7", "format=json", "failed"],
        );
        gone("?key=zzz111&x=1", "zzz111", &["x=1"]);
        gone("X-Api-Key: 9f8e7d6c", "9f8e7d6c", &["X-Api-Key"]);
        gone("MQTT_PASSWORD=opensesame ./run", "opensesame", &["./run"]);
        gone(r#"{"password": "pa ss", "user": "bob"}"#, "pa ss", &["bob"]);
        gone("token='abc def'", "abc def", &[]);
        gone(
            "Authorization: Bearer eyJhbGciOi.abc.def",
            "eyJhbGciOi",
            &[],
        );
        gone(
            "curl -H 'Authorization: Basic YWxhZGRpbjpvcGVu'",
            "YWxhZGRpbjpvcGVu",
            &["curl"],
        );
        gone("--password=hunter2 --verbose", "hunter2", &["--verbose"]);
        gone("client_secret: xyz-123", "xyz-123", &[]);
        gone("Cookie: sessionid=abcd1234", "abcd1234", &[]);
    }

    #[test]
    fn token_shapes_and_private_keys_are_recognised() {
        gone(
            "used AKIAIOSFODNN7EXAMPLE",
            "AKIAIOSFODNN7EXAMPLE",
            &["used"],
        );
        gone(
            "ghp_0123456789abcdefghijABCDEFGHIJ012345 rejected",
            "ghp_0123456789",
            &["rejected"],
        );
        gone("xoxb-1234567890-abcdefghij", "xoxb-1234567890", &[]);
        gone("sk-proj-abcdefghijklmnopqrstuvwx", "abcdefghijklmnop", &[]);
        gone(
            "t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            "eyJzdWIiOiIxIn0",
            &[],
        );
        gone(
            "oops\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----\nafter",
            "b3BlbnNzaC1rZXk",
            &["oops", "after"],
        );
        gone(
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg (cut)",
            "MIIEvQIBADANBg",
            &[],
        );
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for plain in [
            "detector exited with status 2: model file /opt/m/model.tflite not found",
            "monkey=3 keyboard: ok, turkey=2",
            "missing key: model_path; MQTT session: clean, auth: refused",
            "spec hash 0123456789abcdef, DEP_E601",
            "https://example.org/path?station=7&format=json",
            "keep[0]:band 2000-8000 Hz",
            "sample rate: 48000",
            "2026-12-06T10:00:00Z",
            "recordings/2026/12/06/20261206T100000Z.wav",
        ] {
            assert_eq!(text(plain), plain);
            assert!(matches!(text(plain), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn redaction_is_idempotent_and_never_panics_on_odd_text() {
        for odd in [
            "password=",
            "password=<redacted>",
            "://@",
            "a://:@",
            "Bearer",
            "-----BEGIN PRIVATE KEY-----",
            "\u{0}\u{1b}[0m ü 中文 🎙 key:",
        ] {
            let once = text(odd).into_owned();
            assert_eq!(text(&once), once, "{odd:?}");
        }
    }

    #[test]
    fn json_documents_are_redacted_in_every_string() {
        let mut doc = serde_json::json!({
            "components": [{"message": "GET https://u:pw123@x/", "exitCode": 1}],
            "password": "kept-as-key-but-value-redacted"
        });
        json(&mut doc);
        let text = doc.to_string();
        assert!(!text.contains("pw123"), "{text}");
        assert!(text.contains("\"exitCode\":1"));
        assert!(text.contains("\"password\""), "{text}");
    }
}
