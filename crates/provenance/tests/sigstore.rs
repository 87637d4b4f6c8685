//! Sigstore bundles verified offline against the public-good trusted root: a managed-key
//! bundle from sigstore-conformance's inputs and a DSSE bundle from sigstore-python's test
//! data (both brought from sigstore-rust's test data, unmodified), and what is refused:
//! another artifact, another key, another identity or issuer, a tampered signature.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use ringfence_provenance::dsse::SigningKey;
use ringfence_provenance::sigstore::{
    self, PUBLIC_GOOD_TRUSTED_ROOT, SigstoreError, Subject, Trust,
};
use ringfence_provenance::statement::Statement;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/testdata/sigstore/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn a_managed_key_bundle_verifies_offline_and_names_its_signer_and_log_time() {
    let bundle = data("managed-key-bundle.sigstore.json");
    let artifact = data("managed-key-artifact.txt");
    let key = String::from_utf8(data("managed-key-key.pub")).unwrap();
    let v = sigstore::verify(
        &bundle,
        Subject::Bytes(&artifact),
        &Trust::Key(key.clone()),
        PUBLIC_GOOD_TRUSTED_ROOT,
    )
    .unwrap();
    assert!(v.signer.starts_with("key:"), "{}", v.signer);
    assert!(v.integrated_time.is_some());
    assert!(
        v.envelope.is_none(),
        "a message-signature bundle carries no statement"
    );
    // By digest too.
    let digest = ringfence_provenance::statement::Sha256::of(&artifact);
    assert!(
        sigstore::verify(
            &bundle,
            Subject::Digest(&digest),
            &Trust::Key(key.clone()),
            PUBLIC_GOOD_TRUSTED_ROOT
        )
        .is_ok()
    );

    // Another artifact.
    let err = sigstore::verify(
        &bundle,
        Subject::Bytes(b"another artifact"),
        &Trust::Key(key.clone()),
        PUBLIC_GOOD_TRUSTED_ROOT,
    )
    .unwrap_err();
    assert!(matches!(err, SigstoreError::Refused(_)), "{err}");
    // Another key.
    let (other, _) = SigningKey::generate_p256().unwrap();
    let err = sigstore::verify(
        &bundle,
        Subject::Bytes(&artifact),
        &Trust::Key(other.public_key().spki_pem()),
        PUBLIC_GOOD_TRUSTED_ROOT,
    )
    .unwrap_err();
    assert!(matches!(err, SigstoreError::Refused(_)), "{err}");
    // A tampered signature.
    let mut json: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    let sig = json["messageSignature"]["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut bytes = base64_decode(&sig);
    bytes[10] ^= 1;
    json["messageSignature"]["signature"] = serde_json::json!(base64_encode(&bytes));
    let err = sigstore::verify(
        json.to_string().as_bytes(),
        Subject::Bytes(&artifact),
        &Trust::Key(key),
        PUBLIC_GOOD_TRUSTED_ROOT,
    )
    .unwrap_err();
    assert!(
        matches!(err, SigstoreError::Refused(_) | SigstoreError::Malformed(_)),
        "{err}"
    );
    // Not a bundle at all; oversized.
    assert!(matches!(
        sigstore::verify(
            b"{}",
            Subject::Bytes(&artifact),
            &Trust::Key(String::new()),
            PUBLIC_GOOD_TRUSTED_ROOT
        ),
        Err(SigstoreError::Malformed(_))
    ));
    let huge = vec![b' '; sigstore::MAX_BUNDLE_LEN + 1];
    let err = sigstore::verify(
        &huge,
        Subject::Bytes(&artifact),
        &Trust::Key(String::new()),
        PUBLIC_GOOD_TRUSTED_ROOT,
    )
    .unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

const DSSE_SUBJECT_SHA512: &str = "bbfd372fc9beeb777fe35d05bb10c0c70a9733d366a75fed7dd18866c7391de3ee7e88ba74dd47abf3e15c845e547fcf0e5c3da80854c751554224d3a6d4e55f";

#[test]
fn a_dsse_bundle_verifies_with_its_signers_identity_and_issuer_only() {
    let bundle = data("bundles-dsse.sigstore.json");
    let trust = |identity: &str, issuer: &str| Trust::Identity {
        identity: identity.into(),
        issuer: issuer.into(),
    };
    let subject = Subject::Sha512Hex(DSSE_SUBJECT_SHA512);
    let v = sigstore::verify(
        &bundle,
        subject,
        &trust("brian@dehamer.com", "https://github.com/login/oauth"),
        PUBLIC_GOOD_TRUSTED_ROOT,
    )
    .unwrap();
    assert_eq!(v.signer, "brian@dehamer.com");
    assert_eq!(v.issuer.as_deref(), Some("https://github.com/login/oauth"));
    let env = v.envelope.unwrap();
    assert_eq!(env.payload_type(), "application/vnd.in-toto+json");
    assert_eq!(env.signers(), ["brian@dehamer.com"]);
    // The statement inside is an in-toto v0.1 statement: Ringfence reads v1 only, and says so.
    let err = Statement::from_envelope(&env).unwrap_err();
    assert!(
        err.to_string().contains(
            "_type \"https://in-toto.io/Statement/v0.1\" is not https://in-toto.io/Statement/v1"
        ),
        "{err}"
    );

    let err = sigstore::verify(
        &bundle,
        subject,
        &trust("mallory@example.test", "https://github.com/login/oauth"),
        PUBLIC_GOOD_TRUSTED_ROOT,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("identity mismatch: expected mallory@example.test, got brian@dehamer.com"),
        "{err}"
    );
    let err = sigstore::verify(
        &bundle,
        subject,
        &trust("brian@dehamer.com", "https://accounts.google.com"),
        PUBLIC_GOOD_TRUSTED_ROOT,
    )
    .unwrap_err();
    assert!(matches!(err, SigstoreError::Refused(_)), "{err}");
    let other = "0".repeat(128);
    let err = sigstore::verify(
        &bundle,
        Subject::Sha512Hex(&other),
        &trust("brian@dehamer.com", "https://github.com/login/oauth"),
        PUBLIC_GOOD_TRUSTED_ROOT,
    )
    .unwrap_err();
    assert!(matches!(err, SigstoreError::Refused(_)), "{err}");
    // A trusted root without the public-good Fulcio: nothing verifies.
    let mut root: serde_json::Value = serde_json::from_str(PUBLIC_GOOD_TRUSTED_ROOT).unwrap();
    root["certificateAuthorities"] = serde_json::json!([]);
    let err = sigstore::verify(
        &bundle,
        subject,
        &trust("brian@dehamer.com", "https://github.com/login/oauth"),
        &root.to_string(),
    )
    .unwrap_err();
    assert!(
        matches!(err, SigstoreError::Refused(_) | SigstoreError::Malformed(_)),
        "{err}"
    );
}
