//! DSSE: the specification's test vector, and the attacks the admission issue names for the
//! envelope layer — swapped payload type, one key counted twice, signatures without key ids,
//! tampered payload, malformed base64 or JSON, oversized envelopes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ringfence_provenance::dsse::{self, DsseError, Envelope, PublicKey, Signature, TrustedKey};
use serde_json::Value;

const TYPE: &str = "application/vnd.in-toto+json";

fn vector() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/testdata/dsse/hello-world.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn the_specification_vector_verifies_and_its_pae_matches() {
    let v = vector();
    let payload_type = v["payloadType"].as_str().unwrap();
    let pae = dsse::pae(payload_type, v["payload"].as_str().unwrap().as_bytes());
    assert_eq!(pae, v["pae"].as_str().unwrap().as_bytes());
    let envelope = dsse::parse(v["envelope"].to_string().as_bytes()).unwrap();
    let key = TrustedKey {
        name: "mykey".into(),
        keyid: Some("66301bbf".into()),
        key: PublicKey::EcdsaP256(hex(v["public_key_uncompressed_hex"].as_str().unwrap())),
    };
    let verified = dsse::verify(&envelope, payload_type, std::slice::from_ref(&key), 1).unwrap();
    assert_eq!(verified.payload(), b"hello world");
    assert_eq!(verified.signers(), ["mykey"]);
    // Swapping the payload type is refused before anything else...
    let err = dsse::verify(&envelope, TYPE, std::slice::from_ref(&key), 1).unwrap_err();
    assert!(matches!(err, DsseError::PayloadType { .. }), "{err}");
    // ...and an envelope claiming another type no longer verifies, because the type is signed.
    let mut swapped = envelope.clone();
    swapped.payload_type = TYPE.into();
    let err = dsse::verify(&swapped, TYPE, &[key], 1).unwrap_err();
    assert!(matches!(err, DsseError::Threshold { got: 0, .. }), "{err}");
}

struct Key {
    pair: EcdsaKeyPair,
    trusted: TrustedKey,
}

fn ecdsa_key(name: &str, keyid: Option<&str>) -> Key {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let trusted = TrustedKey {
        name: name.into(),
        keyid: keyid.map(str::to_owned),
        key: PublicKey::EcdsaP256(pair.public_key().as_ref().to_vec()),
    };
    Key { pair, trusted }
}

fn sign(payload: &[u8], signers: &[(&Key, Option<&str>)]) -> Envelope {
    let pae = dsse::pae(TYPE, payload);
    Envelope {
        payload: STANDARD.encode(payload),
        payload_type: TYPE.into(),
        signatures: signers
            .iter()
            .map(|(k, keyid)| Signature {
                keyid: keyid.map(str::to_owned),
                sig: STANDARD.encode(k.pair.sign(&SystemRandom::new(), &pae).unwrap().as_ref()),
            })
            .collect(),
    }
}

#[test]
fn one_key_signing_twice_counts_once_toward_a_threshold() {
    let a = ecdsa_key("builder-a", Some("a"));
    let b = ecdsa_key("builder-b", Some("b"));
    let trusted = [a.trusted.clone(), b.trusted.clone()];
    let twice = sign(b"{}", &[(&a, Some("a")), (&a, Some("a"))]);
    let err = dsse::verify(&twice, TYPE, &trusted, 2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "DSSE envelope has valid signatures from 1 distinct trusted key(s) (builder-a); 2 required"
    );
    // Two different trusted keys meet the threshold.
    let both = sign(b"{}", &[(&a, Some("a")), (&b, Some("b"))]);
    assert_eq!(
        dsse::verify(&both, TYPE, &trusted, 2).unwrap().signers(),
        ["builder-a", "builder-b"]
    );
}

#[test]
fn signatures_without_key_ids_are_tried_against_every_key_but_count_once() {
    let a = ecdsa_key("a", Some("a"));
    let b = ecdsa_key("b", None);
    let anonymous = sign(b"{}", &[(&a, None), (&a, None), (&b, None)]);
    let verified =
        dsse::verify(&anonymous, TYPE, &[a.trusted.clone(), b.trusted.clone()], 2).unwrap();
    assert_eq!(verified.signers(), ["a", "b"]);
    assert!(dsse::verify(&anonymous, TYPE, &[a.trusted.clone(), b.trusted.clone()], 3).is_err());
    // A keyid that names another key is not tried against this one.
    let mislabeled = sign(b"{}", &[(&a, Some("b"))]);
    let mut a_with_id = a.trusted.clone();
    a_with_id.keyid = Some("a".into());
    assert!(dsse::verify(&mislabeled, TYPE, &[a_with_id], 1).is_err());
}

#[test]
fn tampered_payloads_and_untrusted_keys_are_refused() {
    let a = ecdsa_key("a", None);
    let mut envelope = sign(b"{\"ok\":true}", &[(&a, None)]);
    envelope.payload = STANDARD.encode(b"{\"ok\":false}");
    assert!(matches!(
        dsse::verify(&envelope, TYPE, std::slice::from_ref(&a.trusted), 1),
        Err(DsseError::Threshold { got: 0, .. })
    ));
    let stranger = ecdsa_key("stranger", None);
    let signed = sign(b"{}", &[(&stranger, None)]);
    assert!(dsse::verify(&signed, TYPE, std::slice::from_ref(&a.trusted), 1).is_err());
    assert!(
        dsse::verify(&signed, TYPE, &[a.trusted], 0).is_err(),
        "a zero threshold accepts nothing"
    );
}

#[test]
fn ed25519_keys_work_too() {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let pae = dsse::pae(TYPE, b"{}");
    let envelope = Envelope {
        payload: STANDARD.encode(b"{}"),
        payload_type: TYPE.into(),
        signatures: vec![Signature {
            keyid: None,
            sig: STANDARD.encode(pair.sign(&pae).as_ref()),
        }],
    };
    let mut key = [0u8; 32];
    key.copy_from_slice(pair.public_key().as_ref());
    let trusted = TrustedKey {
        name: "ed".into(),
        keyid: None,
        key: PublicKey::Ed25519(key),
    };
    assert!(dsse::verify(&envelope, TYPE, &[trusted], 1).is_ok());
}

#[test]
fn malformed_and_oversized_envelopes_are_refused_with_reasons() {
    for (bad, why) in [
        (
            r#"{"payload":"!!","payloadType":"t","signatures":[{"sig":"AA=="}]}"#,
            None,
        ),
        (
            r#"{"payload":"e30=","payloadType":"t","signatures":[]}"#,
            Some("no signatures"),
        ),
        (
            r#"{"payload":"e30=","payloadType":"t","signatures":[{"sig":"AA=="}],"extra":1}"#,
            Some("unknown field"),
        ),
        (
            r#"{"payload":"e30=","payloadType":"t"}"#,
            Some("missing field"),
        ),
        ("not json", Some("expected")),
    ] {
        match (dsse::parse(bad.as_bytes()), why) {
            (Err(e), Some(why)) => assert!(e.to_string().contains(why), "{bad}: {e}"),
            (Ok(envelope), None) => {
                let err = dsse::verify(&envelope, "t", &[], 1).unwrap_err();
                assert_eq!(
                    err.to_string(),
                    "malformed DSSE envelope: payload is not base64"
                );
            }
            (other, _) => panic!("{bad}: {other:?}"),
        }
    }
    let huge = vec![b' '; dsse::MAX_ENVELOPE_LEN + 1];
    assert!(
        dsse::parse(&huge)
            .unwrap_err()
            .to_string()
            .contains("at most")
    );
}
