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
    if stderr.contains("No module named") {
        panic!(
            "a Python reference implementation is missing ({stderr}): scripts/install-deps.sh installs it"
        );
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

/// The in-toto attestation framework's Python bindings (`in-toto-attestation`) build a
/// Statement v1 carrying a SLSA Provenance v1 predicate; securesystemslib signs it; Ringfence
/// verifies the envelope and reads the builder, the source and the subject.
#[test]
fn in_toto_attestation_statements_with_slsa_provenance_read_with_ringfence() {
    let out = python(
        r#"
import json
from google.protobuf import json_format
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner
commit = "0123456789abcdef0123456789abcdef01234567"
p = provenance_pb2.Provenance()
p.build_definition.build_type = "https://ringfence.dev/build/v1"
p.build_definition.external_parameters.update({"source": {"repository": "https://git.acme.test/web", "ref": "refs/heads/main", "commit": commit}})
dep = p.build_definition.resolved_dependencies.add(); dep.uri = "git+https://git.acme.test/web"; dep.digest["gitCommit"] = commit
p.run_details.builder.id = "https://builder.acme.test/v1"
p.run_details.metadata.finished_on.FromJsonString("2026-11-25T10:00:00Z")
subject = ResourceDescriptor(name="web", digest={"sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}).pb
s = Statement([subject], "https://slsa.dev/provenance/v1", json_format.MessageToDict(p))
s.validate()
signer = CryptoSigner.generate_ecdsa()
e = Envelope(payload=json_format.MessageToJson(s.pb).encode(), payload_type="application/vnd.in-toto+json", signatures={})
e.sign(signer)
print(json.dumps({"envelope": e.to_dict(), "pem": signer.public_key.keyval["public"], "keyid": signer.public_key.keyid}))
"#,
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    let envelope = dsse::parse(v["envelope"].to_string().as_bytes()).unwrap();
    let key = TrustedKey {
        name: "python-builder".into(),
        keyid: Some(v["keyid"].as_str().unwrap().into()),
        key: PublicKey::from_spki_pem(v["pem"].as_str().unwrap()).unwrap(),
    };
    let verified = dsse::verify(&envelope, TYPE, &[key], 1).unwrap();
    let stmt = ringfence_provenance::statement::Statement::from_envelope(&verified).unwrap();
    let p = ringfence_provenance::slsa::Provenance::from_statement(&stmt).unwrap();
    assert_eq!(p.builder_id, "https://builder.acme.test/v1");
    let src = p.source.unwrap();
    assert_eq!(
        (src.repository.as_str(), src.git_ref.as_str()),
        ("https://git.acme.test/web", "refs/heads/main")
    );
    assert!(p.finished_on.is_some());
    assert_eq!(
        stmt.subjects()[0].sha256.as_ref().unwrap().hex(),
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
    );
}

/// Ringfence signs a statement with a SLSA Provenance v1 predicate; securesystemslib verifies
/// the envelope and in-toto-attestation's strict protobuf parser accepts the statement and the
/// predicate (an unknown field would fail it).
#[test]
fn ringfence_statements_validate_with_in_toto_attestation() {
    use ringfence_provenance::dsse::SigningKey;
    use ringfence_provenance::{slsa, statement};
    let (key, _) = SigningKey::generate_p256().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let stmt = statement::build(
        &[(
            "web",
            "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        )],
        slsa::PREDICATE_TYPE,
        serde_json::json!({
            "buildDefinition": {"buildType": slsa::RINGFENCE_BUILD_TYPE,
                "externalParameters": {"source": {"repository": "https://git.acme.test/web", "ref": "refs/heads/main", "commit": commit}},
                "resolvedDependencies": [{"uri": "git+https://git.acme.test/web", "digest": {"gitCommit": commit}}]},
            "runDetails": {"builder": {"id": "https://builder.acme.test/v1"}, "metadata": {"finishedOn": "2026-11-25T10:00:00Z"}}
        }),
    );
    let envelope = dsse::sign(TYPE, &serde_json::to_vec(&stmt).unwrap(), &[&key]).unwrap();
    let json = serde_json::to_string(&envelope).unwrap();
    let pem = key.public_key().spki_pem();
    let keyid = key.keyid();
    let out = python(&format!(
        r#"
import json
from google.protobuf import json_format
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
e = Envelope.from_dict(json.loads({json:?}))
# Ringfence's key id is the SHA-256 of the SubjectPublicKeyInfo; securesystemslib matches
# signatures to keys by id, so the key is registered under that id.
crypto = SSlibKey.from_crypto(load_pem_public_key({pem:?}.encode()), scheme="ecdsa-sha2-nistp256")
key = SSlibKey({keyid:?}, crypto.keytype, crypto.scheme, crypto.keyval)
e.verify([key], 1)
pb = json_format.Parse(e.payload, statement_pb2.Statement())
Statement.copy_from_pb(pb).validate()
prov = json_format.ParseDict(json_format.MessageToDict(pb.predicate), provenance_pb2.Provenance())
print(prov.run_details.builder.id, pb.subject[0].digest["sha256"][:8])
"#
    ));
    assert_eq!(out.trim(), "https://builder.acme.test/v1 2c26b46b");
}
