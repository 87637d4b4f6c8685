//! in-toto Statement v1 read from verified envelopes only: subject digests, predicate type,
//! and refusals for the wrong `_type`, a missing predicate type, subjects without a sha256
//! digest, malformed digests, and a digest for another image.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ringfence_provenance::dsse::{self, Envelope, PublicKey, Signature, TrustedKey};
use ringfence_provenance::statement::{PAYLOAD_TYPE, Sha256, Statement};
use serde_json::json;

const IMAGE: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

fn verified(payload: &serde_json::Value, payload_type: &str) -> dsse::VerifiedEnvelope {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let body = payload.to_string().into_bytes();
    let sig = pair
        .sign(&SystemRandom::new(), &dsse::pae(payload_type, &body))
        .unwrap();
    let envelope = Envelope {
        payload: STANDARD.encode(&body),
        payload_type: payload_type.into(),
        signatures: vec![Signature {
            keyid: None,
            sig: STANDARD.encode(sig.as_ref()),
        }],
    };
    let key = TrustedKey {
        name: "builder".into(),
        keyid: None,
        key: PublicKey::EcdsaP256(pair.public_key().as_ref().to_vec()),
    };
    dsse::verify(&envelope, payload_type, &[key], 1).unwrap()
}

fn statement(subjects: serde_json::Value) -> serde_json::Value {
    json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subjects,
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {"buildDefinition": {}},
        "extraFieldFromANewerSpec": true,
    })
}

#[test]
fn statements_name_their_subjects_by_digest() {
    let s = Statement::from_envelope(&verified(
        &statement(json!([{"name": "web", "digest": {"sha256": IMAGE.trim_start_matches("sha256:"), "sha512": "ab"}}])),
        PAYLOAD_TYPE,
    ))
    .unwrap();
    assert!(s.covers(&Sha256::parse(IMAGE).unwrap()));
    assert_eq!(s.predicate_type(), "https://slsa.dev/provenance/v1");
    assert_eq!(s.signers(), ["builder"]);
    // An attestation for another image does not cover this one.
    let other = Sha256::parse(&"0".repeat(64)).unwrap();
    assert!(!s.covers(&other));
}

#[test]
fn malformed_statements_are_refused_with_reasons() {
    let hex = IMAGE.trim_start_matches("sha256:");
    let cases = [
        (
            json!({"_type": "https://in-toto.io/Statement/v0.1", "subject": [{"digest": {"sha256": hex}}], "predicateType": "p"}),
            "_type",
        ),
        (
            json!({"_type": "https://in-toto.io/Statement/v1", "subject": [{"digest": {"sha256": hex}}]}),
            "predicateType",
        ),
        (
            json!({"_type": "https://in-toto.io/Statement/v1", "subject": [], "predicateType": "p"}),
            "no subject",
        ),
        (
            json!({"_type": "https://in-toto.io/Statement/v1", "subject": [{"name": "x", "digest": {"sha512": "ab"}}], "predicateType": "p"}),
            "no sha256 or gitCommit digest",
        ),
        (
            json!({"_type": "https://in-toto.io/Statement/v1", "subject": [{"digest": {"sha256": "XYZ"}}], "predicateType": "p"}),
            "not a sha256 digest",
        ),
        (
            json!({"_type": "https://in-toto.io/Statement/v1", "subject": [{"digest": {"sha256": hex.to_uppercase()}}], "predicateType": "p"}),
            "not a sha256 digest",
        ),
        (json!("just a string"), "invalid type"),
    ];
    for (payload, why) in cases {
        let err = Statement::from_envelope(&verified(&payload, PAYLOAD_TYPE))
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{payload}: {err}");
    }
    let wrong_type = Statement::from_envelope(&verified(
        &statement(json!([{"digest": {"sha256": hex}}])),
        "application/json",
    ));
    assert!(
        wrong_type
            .unwrap_err()
            .to_string()
            .contains("is not application/vnd.in-toto+json")
    );
}
