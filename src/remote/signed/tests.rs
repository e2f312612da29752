use super::*;

fn pair() -> (SecretKey, TrustedKey) {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    (
        kp.sk,
        TrustedKey {
            file: "fleet.pub".into(),
            key: kp.pk,
        },
    )
}

fn doc(device: &str, version: u64) -> Document {
    Document {
        device: device.into(),
        version,
        files: BTreeMap::from([("deployment.yaml".into(), "apiVersion: roost/v1\n".into())]),
        revert_of: None,
        apply: ApplyOptions::default(),
        gate: None,
        rollout: None,
    }
}

fn code(r: Result<Document, Refusal>) -> &'static str {
    r.expect_err("refused").code.code
}

#[test]
fn a_sealed_document_verifies_and_comes_back_whole() {
    let (sk, pk) = pair();
    let d = doc("pi-01", 7);
    let payload = seal(&d, &sk).unwrap();
    assert_eq!(
        verify(&payload, std::slice::from_ref(&pk), "pi-01", 6).unwrap(),
        d
    );
    // The same version again passes (a retained message delivered at each connection).
    assert_eq!(verify(&payload, &[pk], "pi-01", 7).unwrap().version, 7);
}

#[test]
fn every_kind_of_bad_message_is_refused_with_its_code() {
    let (sk, pk) = pair();
    let (_, other) = pair();
    let good = seal(&doc("pi-01", 7), &sk).unwrap();
    let mut env: Envelope = serde_json::from_slice(&good).unwrap();
    let keys = std::slice::from_ref(&pk);

    // Altered after signing: one byte of the document.
    let mut altered = env.clone();
    altered.document = altered.document.replace("\"version\":7", "\"version\":8");
    assert_eq!(
        code(verify(
            &serde_json::to_vec(&altered).unwrap(),
            keys,
            "pi-01",
            0
        )),
        "DEP_E801"
    );
    // No signature at all, an empty one, a garbled one.
    let unsigned = serde_json::json!({"kind": KIND, "document": env.document});
    assert_eq!(
        code(verify(unsigned.to_string().as_bytes(), keys, "pi-01", 0)),
        "DEP_E801"
    );
    let mut empty = env.clone();
    empty.signature = String::new();
    assert_eq!(
        code(verify(
            &serde_json::to_vec(&empty).unwrap(),
            keys,
            "pi-01",
            0
        )),
        "DEP_E801"
    );
    let mut garbled = env.clone();
    garbled.signature = "untrusted comment: x\nnot base64\n".into();
    assert_eq!(
        code(verify(
            &serde_json::to_vec(&garbled).unwrap(),
            keys,
            "pi-01",
            0
        )),
        "DEP_E801"
    );
    // Signed by a key the device does not trust; or no key trusted at all.
    assert_eq!(
        code(verify(&good, std::slice::from_ref(&other), "pi-01", 0)),
        "DEP_E802"
    );
    let none = verify(&good, &[], "pi-01", 0).unwrap_err();
    assert_eq!(none.code.code, "DEP_E802");
    assert!(none.reason.contains("none"), "{}", none.reason);
    // Another device's, and an older version (a replay): the version is known.
    let theirs = verify(&good, keys, "pi-02", 0).unwrap_err();
    assert_eq!((theirs.code.code, theirs.version), ("DEP_E803", Some(7)));
    let replay = verify(&good, keys, "pi-01", 9).unwrap_err();
    assert_eq!((replay.code.code, replay.version), ("DEP_E804", Some(7)));
    // Over 1 MiB, before anything is parsed.
    assert_eq!(
        code(verify(&vec![b' '; MAX_MESSAGE + 1], keys, "pi-01", 0)),
        "DEP_E805"
    );
    // Not JSON, not the envelope, another kind, a document without files.
    assert_eq!(code(verify(b"\xff\xfe", keys, "pi-01", 0)), "DEP_E808");
    assert_eq!(
        code(verify(
            b"{\"signature\":\"x\",\"extra\":1}",
            keys,
            "pi-01",
            0
        )),
        "DEP_E808"
    );
    // Not roost's kind: malformed, also when it carries no signature.
    let other = serde_json::json!({"kind": "x", "document": "{}", "signature": ""});
    assert_eq!(
        code(verify(other.to_string().as_bytes(), keys, "pi-01", 0)),
        "DEP_E808"
    );
    env.kind = "roost.desired/v9".into();
    assert_eq!(
        code(verify(&serde_json::to_vec(&env).unwrap(), keys, "pi-01", 0)),
        "DEP_E808"
    );
    let mut bare = doc("pi-01", 3);
    bare.files.clear();
    assert_eq!(
        code(verify(&seal(&bare, &sk).unwrap(), keys, "pi-01", 0)),
        "DEP_E808"
    );
}

#[test]
fn a_signed_document_that_is_not_one_is_malformed_not_unsigned() {
    let (sk, pk) = pair();
    let text = "{\"device\":\"pi-01\"}";
    let signature = sign_bytes(text.as_bytes(), &sk, "pi-01", 1).unwrap();
    let env = Envelope {
        kind: KIND.into(),
        document: text.into(),
        signature,
    };
    let r = verify(&serde_json::to_vec(&env).unwrap(), &[pk], "pi-01", 0);
    assert_eq!(code(r), "DEP_E808");
}

#[test]
fn key_ids_read_as_minisign_prints_them() {
    assert_eq!(key_id(&[0x01, 0, 0, 0, 0, 0, 0, 0xAB]), "AB00000000000001");
    let (_, pk) = pair();
    let text = pk.key.to_box().unwrap().into_string();
    let back = parse_public_key(&text).unwrap();
    assert_eq!(back.keynum(), pk.key.keynum());
    assert!(parse_public_key("untrusted comment: x\nAAAA\n").is_none());
}

#[test]
fn an_encrypted_secret_key_needs_its_password() {
    let kp = minisign::KeyPair::generate_encrypted_keypair(Some("pw".into())).unwrap();
    let text = kp.sk.to_box(None).unwrap().into_string();
    assert!(
        load_secret_key(&text, None)
            .unwrap_err()
            .contains("password")
    );
    assert!(load_secret_key(&text, Some("wrong".into())).is_err());
    assert!(load_secret_key(&text, Some("pw".into())).is_ok());
}

#[test]
fn a_record_opens_only_with_its_signers_key_and_unaltered() {
    let (sk, pk) = pair();
    let (_, other) = pair();
    let sealed = seal_record("{\"version\":3}", &sk).unwrap();
    assert_eq!(open_record(&sealed, &pk.key).unwrap(), "{\"version\":3}");
    assert!(open_record(&sealed, &other.key).is_err());
    let mut env: Envelope = serde_json::from_slice(&sealed).unwrap();
    env.document = "{\"version\":4}".into();
    assert!(open_record(&serde_json::to_vec(&env).unwrap(), &pk.key).is_err());
    assert!(open_record(b"{}", &pk.key).is_err());
    // A desired-state message is not a record.
    let message = seal(&doc("pi-01", 1), &sk).unwrap();
    assert!(open_record(&message, &pk.key).unwrap_err().contains("kind"));
}
