//! Time a device takes to check one signed desired-state message (issue 26): a document
//! carrying a 100 KiB deployment file, sealed with a fresh minisign key, verified as a device
//! does (size, envelope, key lookup, Ed25519 over the BLAKE2b-512 prehash, document, device,
//! version). Prints the median and p90 of 200 runs and the message's size.
//! `cargo bench --bench verify [-- KIB]`.

use std::collections::BTreeMap;
use std::time::Instant;

use roost::remote::signed::{self, ApplyOptions, Document, TrustedKey};

fn main() {
    let kib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100);
    let kp = minisign::KeyPair::generate_unencrypted_keypair().expect("key pair");
    let keys = vec![TrustedKey {
        file: "fleet.pub".into(),
        key: kp.pk,
    }];
    let line = "    # a comment line of a large deployment file, 64 bytes long..\n";
    let text: String = line.repeat(kib * 1024 / line.len());
    let doc = Document {
        device: "pi-01".into(),
        version: 7,
        files: BTreeMap::from([("deployment.yaml".into(), text)]),
        revert_of: None,
        apply: ApplyOptions::default(),
        gate: None,
        rollout: Some("bench".into()),
    };
    let payload = signed::seal(&doc, &kp.sk).expect("seal");
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let back = signed::verify(&payload, &keys, "pi-01", 6).expect("verifies");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(back.version, 7);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "verify a signed {kib} KiB document ({} bytes on the wire): median {:.2} ms, p90 {:.2} ms, min {:.2} ms",
        payload.len(),
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        times[0]
    );
}
