//! The desired-state message and its signature: what `roost fleet rollout` publishes and what
//! a device takes. Pure: bytes and keys in, a [`Document`] or a [`Refusal`] out; no clock is
//! read (freshness is the version).
//!
//! The MQTT payload is JSON `{"kind": "roost.desired/v1", "document": TEXT, "signature": SIG}`:
//! `document` is the signed JSON text itself (a JSON string carries its UTF-8 bytes exactly),
//! `signature` is a `.minisig` file's text over those bytes. So `minisign -Vm document.json
//! -x document.json.minisig -p minisign.pub` verifies what roost signed, and a document signed
//! by `minisign -Sm` is taken by a device.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

use minisign::{PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};
use serde::{Deserialize, Serialize};

use crate::errors::{self, ErrorCode};
use crate::spec::HumanDuration;

/// `kind` of every desired-state message this roost writes and reads.
pub const KIND: &str = "roost.desired/v1";

/// The largest message a device takes (bytes): the MQTT packet limit roost sets.
pub const MAX_MESSAGE: usize = 1 << 20;

/// The MQTT payload: the signed document and its signature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope {
    /// [`KIND`].
    pub kind: String,
    /// The signed bytes: a [`Document`] as JSON text.
    pub document: String,
    /// A minisign signature (`.minisig` text) of `document`'s UTF-8 bytes.
    pub signature: String,
}

/// What a version asks of one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Document {
    /// The device it is for (`spec.connect.deviceId`).
    pub device: String,
    /// Higher than every version the device accepted before; never compared with a clock.
    pub version: u64,
    /// Deployment files by name (`deployment.yaml`; every file of the folder with `--dir`).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Set instead of `files`: go back to the files the device had before this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_of: Option<u64>,
    /// When the version is applied.
    #[serde(default)]
    pub apply: ApplyOptions,
    /// The health gate's length (default: the device's spec.connect.desired.gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<HumanDuration>,
    /// The rollout that sent it (reported back, for `roost fleet rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
}

/// When an accepted version is written.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyOptions {
    /// `now`, `fileBoundary` (right after the recorder closes a file) or `windowClosed` (once
    /// no recording window is open).
    #[serde(default)]
    pub at: ApplyAt,
    /// The latest-by bound: applied at the latest this long after it arrived, measured on the
    /// device's monotonic clock (a Pi without a real-time clock may not know the date).
    #[serde(default = "default_max_wait")]
    pub max_wait: HumanDuration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            at: ApplyAt::Now,
            max_wait: default_max_wait(),
        }
    }
}

fn default_max_wait() -> HumanDuration {
    HumanDuration::from_secs(3600)
}

/// `apply.at`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ApplyAt {
    /// As soon as it is accepted.
    #[default]
    Now,
    /// Right after the recorder closed a file (no file is cut).
    FileBoundary,
    /// Once the recording window open now has closed (no window is interrupted).
    WindowClosed,
}

/// Why a message was not taken: its catalogue code, a reason, and the version when it could
/// be read.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// DEP_E801..DEP_E808.
    pub code: &'static ErrorCode,
    /// What was wrong, naming the key id, device, version, file, line and column.
    pub reason: String,
    /// The message's version, when its document could be read.
    pub version: Option<u64>,
}

impl Refusal {
    fn new(code: &'static ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            version: None,
        }
    }
}

/// A public key the device trusts, with the file it came from.
#[derive(Clone)]
pub struct TrustedKey {
    /// The key file's name.
    pub file: String,
    /// The key.
    pub key: PublicKey,
}

/// minisign's key id as `minisign` prints it: 16 hex digits of the little-endian number.
pub fn key_id(keynum: &[u8]) -> String {
    let mut n = [0u8; 8];
    let len = keynum.len().min(8);
    n[..len].copy_from_slice(&keynum[..len]);
    format!("{:016X}", u64::from_le_bytes(n))
}

/// Reads every `*.pub` file of `dir` as a minisign public key, in name order. A file that is
/// not one is skipped and named in the second list; `Err` when the folder cannot be read.
pub fn load_keys(dir: &Path) -> std::io::Result<(Vec<TrustedKey>, Vec<String>)> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".pub") && !n.starts_with('.'))
        .collect();
    names.sort();
    let (mut keys, mut bad) = (Vec::new(), Vec::new());
    for file in names {
        let parsed = std::fs::read_to_string(dir.join(&file))
            .ok()
            .and_then(|text| parse_public_key(&text));
        match parsed {
            Some(key) => keys.push(TrustedKey { file, key }),
            None => bad.push(file),
        }
    }
    Ok((keys, bad))
}

/// A public key from a `minisign.pub` file's text (two lines) or its base64 line alone.
pub fn parse_public_key(text: &str) -> Option<PublicKey> {
    if let Ok(k) = PublicKeyBox::from_string(text).and_then(|b| b.into_public_key()) {
        return Some(k);
    }
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    PublicKey::from_base64(line).ok()
}

/// Checks a message for `device` and returns its document. `highest` is the highest version
/// the device accepted; an equal version passes (a retained message delivered again at each
/// connection is the caller's to recognise). Errors, in this order: over [`MAX_MESSAGE`]
/// (DEP_E805), not an [`Envelope`] (DEP_E808), no or unparsable signature (DEP_E801), a key
/// not among `keys` (DEP_E802), a signature that does not verify (DEP_E801), a document that
/// is not one (DEP_E808), another device (DEP_E803), an older version (DEP_E804).
pub fn verify(
    payload: &[u8],
    keys: &[TrustedKey],
    device: &str,
    highest: u64,
) -> Result<Document, Refusal> {
    if payload.len() > MAX_MESSAGE {
        return Err(Refusal::new(
            &errors::DESIRED_TOO_LARGE,
            format!(
                "{} bytes, over the {} bytes a device takes",
                payload.len(),
                MAX_MESSAGE
            ),
        ));
    }
    let envelope = envelope(payload)?;
    let signature = signature_of(&envelope)?;
    let key = (keys.iter())
        .find(|k| k.key.keynum() == signature.keynum())
        .ok_or_else(|| untrusted(&signature, keys))?;
    let data = Cursor::new(envelope.document.as_bytes());
    minisign::verify(&key.key, &signature, data, true, false, false).map_err(|e| {
        Refusal::new(
            &errors::DESIRED_NOT_SIGNED,
            format!(
                "the signature by key {} ({}) does not verify: {e}",
                key_id(signature.keynum()),
                key.file
            ),
        )
    })?;
    let doc: Document = serde_json::from_str(&envelope.document).map_err(|e| {
        Refusal::new(
            &errors::DESIRED_MALFORMED,
            format!("the signed document is not roost's: {e}"),
        )
    })?;
    check_document(doc, device, highest)
}

fn envelope(payload: &[u8]) -> Result<Envelope, Refusal> {
    let malformed = |why: String| Refusal::new(&errors::DESIRED_MALFORMED, why);
    let value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| malformed(format!("the message is not JSON: {e}")))?;
    let kind = value.get("kind").and_then(|k| k.as_str());
    if kind != Some(KIND) {
        return Err(malformed(format!(
            "kind {kind:?}: this roost reads {KIND:?}"
        )));
    }
    if value
        .get("signature")
        .is_none_or(|s| s.as_str().is_none_or(str::is_empty))
    {
        return Err(Refusal::new(
            &errors::DESIRED_NOT_SIGNED,
            "the message carries no signature",
        ));
    }
    let envelope: Envelope = serde_json::from_value(value)
        .map_err(|e| malformed(format!("the message is not roost's desired state: {e}")))?;
    Ok(envelope)
}

fn signature_of(envelope: &Envelope) -> Result<SignatureBox, Refusal> {
    SignatureBox::from_string(&envelope.signature).map_err(|e| {
        Refusal::new(
            &errors::DESIRED_NOT_SIGNED,
            format!("the signature is not minisign's format: {e}"),
        )
    })
}

fn untrusted(signature: &SignatureBox, keys: &[TrustedKey]) -> Refusal {
    let trusted: Vec<String> = keys.iter().map(|k| key_id(k.key.keynum())).collect();
    Refusal::new(
        &errors::DESIRED_UNTRUSTED_KEY,
        format!(
            "signed by key {}, which is not among the trusted keys ({})",
            key_id(signature.keynum()),
            match trusted.is_empty() {
                true => "none".to_string(),
                false => trusted.join(", "),
            }
        ),
    )
}

fn check_document(doc: Document, device: &str, highest: u64) -> Result<Document, Refusal> {
    let with_version = |mut r: Refusal| {
        r.version = Some(doc.version);
        r
    };
    if doc.device != device {
        return Err(with_version(Refusal::new(
            &errors::DESIRED_OTHER_DEVICE,
            format!(
                "version {} is for device {:?}, this is {device:?}",
                doc.version, doc.device
            ),
        )));
    }
    if doc.version < highest {
        return Err(with_version(Refusal::new(
            &errors::DESIRED_NOT_NEWER,
            format!(
                "version {} is older than version {highest}, the highest this device accepted (a replay?)",
                doc.version
            ),
        )));
    }
    if doc.revert_of.is_none() && doc.files.is_empty() {
        return Err(with_version(Refusal::new(
            &errors::DESIRED_MALFORMED,
            format!("version {} carries no file and no revertOf", doc.version),
        )));
    }
    Ok(doc)
}

/// A secret key as `minisign -G` writes it: unencrypted (`-W`) or with `password`.
pub fn load_secret_key(text: &str, password: Option<String>) -> Result<SecretKey, String> {
    let sk_box = SecretKeyBox::from_string(text).map_err(|e| e.to_string())?;
    if let Ok(sk) = sk_box.clone().into_unencrypted_secret_key() {
        return Ok(sk);
    }
    if let Some(sk) = unencrypted_without_checksum(text) {
        return Ok(sk);
    }
    let Some(password) = password else {
        return Err(
            "the key is encrypted: give its password (--key-password-file, or ROOST_KEY_PASSWORD)"
                .into(),
        );
    };
    sk_box
        .into_secret_key(Some(password))
        .map_err(|e| e.to_string())
}

/// An unencrypted key as Debian's minisign 0.11 writes it with `-G -W`: its checksum field is
/// left zero, which the crate's loader takes for a corrupted key. Read as it is; a key damaged
/// otherwise makes signatures no device verifies.
fn unencrypted_without_checksum(text: &str) -> Option<SecretKey> {
    use base64::Engine;
    let line = text.lines().nth(1)?.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line)
        .ok()?;
    let unencrypted = bytes.get(2..4) == Some(&[0, 0][..]);
    let zero_checksum = bytes.len() == 158 && bytes[126..].iter().all(|b| *b == 0);
    (unencrypted && zero_checksum)
        .then(|| SecretKey::from_bytes(&bytes).ok())
        .flatten()
}

/// Signs `doc` and returns the MQTT payload.
pub fn seal(doc: &Document, sk: &SecretKey) -> Result<Vec<u8>, String> {
    let document = serde_json::to_string(doc).map_err(|e| e.to_string())?;
    let signature = sign_bytes(document.as_bytes(), sk, &doc.device, doc.version)?;
    let envelope = Envelope {
        kind: KIND.into(),
        document,
        signature,
    };
    serde_json::to_vec(&envelope).map_err(|e| e.to_string())
}

/// A minisign signature (`.minisig` text) of `bytes`, its trusted comment naming the device and
/// version.
pub fn sign_bytes(
    bytes: &[u8],
    sk: &SecretKey,
    device: &str,
    version: u64,
) -> Result<String, String> {
    let pk = PublicKey::from_secret_key(sk).map_err(|e| e.to_string())?;
    let comment = format!("roost desired state for {device}, version {version}");
    minisign::sign(Some(&pk), sk, Cursor::new(bytes), Some(&comment), None)
        .map(|b| b.into_string())
        .map_err(|e| e.to_string())
}

/// `kind` of a rollout's progress record (`roost fleet rollout`).
pub const RECORD_KIND: &str = "roost.rollout/v1";

/// A record only its signer trusts (a rollout's progress kept on the broker): `text` signed
/// with `sk`, in the envelope of [`Envelope`] with [`RECORD_KIND`].
pub fn seal_record(text: &str, sk: &SecretKey) -> Result<Vec<u8>, String> {
    let pk = PublicKey::from_secret_key(sk).map_err(|e| e.to_string())?;
    let signature = minisign::sign(
        Some(&pk),
        sk,
        Cursor::new(text.as_bytes()),
        Some("roost rollout record"),
        None,
    )
    .map(|b| b.into_string())
    .map_err(|e| e.to_string())?;
    let envelope = Envelope {
        kind: RECORD_KIND.into(),
        document: text.into(),
        signature,
    };
    serde_json::to_vec(&envelope).map_err(|e| e.to_string())
}

/// The text of a record sealed by [`seal_record`] with the secret key of `pk`; an error when
/// it is not one or someone else signed or altered it.
pub fn open_record(payload: &[u8], pk: &PublicKey) -> Result<String, String> {
    let envelope: Envelope =
        serde_json::from_slice(payload).map_err(|e| format!("not a rollout record: {e}"))?;
    if envelope.kind != RECORD_KIND {
        return Err(format!("kind {:?}, not {RECORD_KIND:?}", envelope.kind));
    }
    let signature = SignatureBox::from_string(&envelope.signature).map_err(|e| e.to_string())?;
    minisign::verify(
        pk,
        &signature,
        Cursor::new(envelope.document.as_bytes()),
        true,
        false,
        false,
    )
    .map_err(|e| format!("not signed by this key: {e}"))?;
    Ok(envelope.document)
}

#[cfg(test)]
mod tests;
