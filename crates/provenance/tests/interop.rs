//! DSSE interoperability with the reference implementation, securesystemslib (PyPI): its
//! envelopes verify with ours, and ours verify with it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::process::Command;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ringfence_provenance::dsse::{self, Envelope, PublicKey, Signature, TrustedKey};
use serde_json::Value;

const TYPE: &str = "application/vnd.in-toto+json";

fn python(script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'securesystemslib'") {
        panic!("securesystemslib is missing: scripts/install-deps.sh installs it");
    }
    assert!(out.status.success(), "{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn envelopes_signed_by_securesystemslib_verify_with_a_threshold_of_two() {
    let out = python(
        r#"
import json
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner
ecdsa, ed = CryptoSigner.generate_ecdsa(), CryptoSigner.generate_ed25519()
e = Envelope(payload=b'{"_type":"https://in-toto.io/Statement/v1"}', payload_type="application/vnd.in-toto+json", signatures={})
e.sign(ecdsa); e.sign(ed)
print(json.dumps({"envelope": e.to_dict(),
  "keys": [{"keyid": k.public_key.keyid, "pem": k.public_key.keyval["public"], "type": k.public_key.keytype} for k in (ecdsa, ed)]}))
"#,
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    let envelope = dsse::parse(v["envelope"].to_string().as_bytes()).unwrap();
    let trusted: Vec<TrustedKey> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let pem = k["pem"].as_str().unwrap();
            // securesystemslib writes Ed25519 public keys as hex, ECDSA as PEM.
            let key = if k["type"] == "ed25519" {
                let hex = pem.trim();
                let bytes: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                PublicKey::Ed25519(bytes.try_into().unwrap())
            } else {
                PublicKey::from_spki_pem(pem).unwrap()
            };
            TrustedKey {
                name: k["type"].as_str().unwrap().to_owned(),
                keyid: Some(k["keyid"].as_str().unwrap().to_owned()),
                key,
            }
        })
        .collect();
    let verified = dsse::verify(&envelope, TYPE, &trusted, 2).unwrap();
    assert_eq!(verified.signers(), ["ecdsa", "ed25519"]);
    assert_eq!(
        verified.payload(),
        br#"{"_type":"https://in-toto.io/Statement/v1"}"#
    );
}

#[test]
fn envelopes_signed_by_ringfence_verify_with_securesystemslib() {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
        .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    let body = STANDARD.encode(&spki);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        body.as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        PublicKey::from_spki_pem(&pem).unwrap(),
        PublicKey::EcdsaP256(pair.public_key().as_ref().to_vec())
    );
    let keyid = python(&format!(
        "from cryptography.hazmat.primitives.serialization import load_pem_public_key\nfrom securesystemslib.signer import SSlibKey\nprint(SSlibKey.from_crypto(load_pem_public_key({:?}.encode()), scheme='ecdsa-sha2-nistp256').keyid)",
        pem
    ));
    let payload = br#"{"_type":"https://in-toto.io/Statement/v1","subject":[]}"#;
    let sig = pair
        .sign(&SystemRandom::new(), &dsse::pae(TYPE, payload))
        .unwrap();
    let envelope = Envelope {
        payload: STANDARD.encode(payload),
        payload_type: TYPE.into(),
        signatures: vec![Signature {
            keyid: Some(keyid.trim().to_owned()),
            sig: STANDARD.encode(sig.as_ref()),
        }],
    };
    let json = serde_json::to_string(&envelope).unwrap();
    let out = python(&format!(
        r#"
import json
from securesystemslib.dsse import Envelope
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.signer import SSlibKey
key = SSlibKey.from_crypto(load_pem_public_key({pem:?}.encode()), scheme="ecdsa-sha2-nistp256")
e = Envelope.from_dict(json.loads({json:?}))
print(sorted(e.verify([key], 1).keys()) == [key.keyid])
tampered = json.loads({json:?}); tampered["payloadType"] = "application/json"
try:
    Envelope.from_dict(tampered).verify([key], 1); print("tampered accepted")
except Exception as err:
    print("tampered refused")
"#
    ));
    assert_eq!(out.trim(), "True\ntampered refused");
}
