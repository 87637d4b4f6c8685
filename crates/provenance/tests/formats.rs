//! SLSA Provenance v1, the code-review predicate, OCI image layouts and signing: what each
//! accepts and, by name, what each refuses.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use ringfence_provenance::dsse::{self, SigningKey, TrustedKey};
use ringfence_provenance::oci::{self, ImageLayout, OciError};
use ringfence_provenance::review::{self, Review};
use ringfence_provenance::slsa::{self, Provenance};
use ringfence_provenance::statement::{self, Sha256, Statement};
use serde_json::{Value, json};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn signed(key: &SigningKey, stmt: &Value) -> Statement {
    let env = dsse::sign(
        statement::PAYLOAD_TYPE,
        &serde_json::to_vec(stmt).unwrap(),
        &[key],
    )
    .unwrap();
    let trusted = TrustedKey {
        name: "builder".into(),
        keyid: Some(key.keyid().into()),
        key: key.public_key(),
    };
    let v = dsse::verify(&env, statement::PAYLOAD_TYPE, &[trusted], 1).unwrap();
    Statement::from_envelope(&v).unwrap()
}

fn provenance_predicate() -> Value {
    json!({
        "buildDefinition": {
            "buildType": slsa::RINGFENCE_BUILD_TYPE,
            "externalParameters": {"source": {"repository": "https://git.acme.test/payments", "ref": "refs/heads/main", "commit": COMMIT}},
            "resolvedDependencies": [{"uri": "git+https://git.acme.test/payments@refs/heads/main", "digest": {"gitCommit": COMMIT}}]
        },
        "runDetails": {"builder": {"id": "https://builder.acme.test/v1"}, "metadata": {"finishedOn": "2026-11-25T10:00:00Z"}}
    })
}

#[test]
fn slsa_provenance_names_builder_source_and_time() {
    let (key, _) = SigningKey::generate_p256().unwrap();
    let image = Sha256::of(b"image");
    let stmt = signed(
        &key,
        &statement::build(
            &[("web", &image.to_string())],
            slsa::PREDICATE_TYPE,
            provenance_predicate(),
        ),
    );
    let p = Provenance::from_statement(&stmt).unwrap();
    assert_eq!(p.builder_id, "https://builder.acme.test/v1");
    let src = p.source.unwrap();
    assert_eq!(src.repository, "https://git.acme.test/payments");
    assert_eq!(src.git_ref, "refs/heads/main");
    assert_eq!(src.commit, COMMIT);
    assert_eq!(
        slsa::format_time(p.finished_on.unwrap()),
        "2026-11-25T10:00:00Z"
    );
    assert!(stmt.covers(&image));
}

#[test]
fn slsa_workflow_form_reads_the_commit_from_resolved_dependencies() {
    let (key, _) = SigningKey::generate_p256().unwrap();
    let pred = json!({
        "buildDefinition": {
            "buildType": "https://actions.github.io/buildtypes/workflow/v1",
            "externalParameters": {"workflow": {"repository": "https://github.com/acme/payments", "ref": "refs/tags/v1", "path": ".github/workflows/build.yml"}},
            "resolvedDependencies": [{"uri": "git+https://github.com/acme/payments@refs/tags/v1", "digest": {"gitCommit": COMMIT}}]
        },
        "runDetails": {"builder": {"id": "https://github.com/actions/runner"}}
    });
    let stmt = signed(
        &key,
        &statement::build(
            &[("x", &Sha256::of(b"x").to_string())],
            slsa::PREDICATE_TYPE,
            pred,
        ),
    );
    let p = Provenance::from_statement(&stmt).unwrap();
    assert_eq!(p.source.unwrap().git_ref, "refs/tags/v1");
    assert_eq!(p.finished_on, None);

    // A dependency whose repository merely starts with the same name does not give the commit.
    let other = "fedcba9876543210fedcba9876543210fedcba98";
    let pred = json!({
        "buildDefinition": {
            "buildType": "https://actions.github.io/buildtypes/workflow/v1",
            "externalParameters": {"workflow": {"repository": "https://github.com/acme/payments", "ref": "refs/tags/v1"}},
            "resolvedDependencies": [
                {"uri": "git+https://github.com/acme/payments-tools@refs/heads/main", "digest": {"gitCommit": other}},
                {"uri": "git+https://github.com/acme/payments.git@refs/tags/v1", "digest": {"gitCommit": COMMIT}}
            ]
        },
        "runDetails": {"builder": {"id": "https://github.com/actions/runner"}}
    });
    let stmt = signed(
        &key,
        &statement::build(
            &[("x", &Sha256::of(b"x").to_string())],
            slsa::PREDICATE_TYPE,
            pred,
        ),
    );
    assert_eq!(
        Provenance::from_statement(&stmt)
            .unwrap()
            .source
            .unwrap()
            .commit,
        COMMIT
    );
}

#[test]
fn slsa_refusals_name_the_problem() {
    let (key, _) = SigningKey::generate_p256().unwrap();
    let subj = Sha256::of(b"x").to_string();
    let cases = [
        (
            json!({"buildDefinition": {"buildType": "t", "externalParameters": {}}}),
            "missing field `runDetails`",
        ),
        (
            json!({"buildDefinition": {"buildType": "t", "externalParameters": {"source": {"repository": "r"}}}, "runDetails": {"builder": {"id": "b"}}}),
            "needs repository, ref and commit",
        ),
        (
            json!({"buildDefinition": {"buildType": "t", "externalParameters": {"source": {"repository": "r", "ref": "x", "commit": "abc"}}}, "runDetails": {"builder": {"id": "b"}}}),
            "not a git commit id",
        ),
        (
            json!({"buildDefinition": {"buildType": "t", "externalParameters": {}}, "runDetails": {"builder": {"id": ""}}}),
            "builder id is empty",
        ),
        (
            json!({"buildDefinition": {"buildType": "t", "externalParameters": {}}, "runDetails": {"builder": {"id": "b"}, "metadata": {"finishedOn": "yesterday"}}}),
            "timestamp \"yesterday\"",
        ),
    ];
    for (pred, want) in cases {
        let stmt = signed(
            &key,
            &statement::build(&[("x", &subj)], slsa::PREDICATE_TYPE, pred),
        );
        let err = Provenance::from_statement(&stmt).unwrap_err().to_string();
        assert!(err.contains(want), "{err} should contain {want}");
    }
    let stmt = signed(
        &key,
        &statement::build(&[("x", &subj)], "https://example.test/other", json!({})),
    );
    let err = Provenance::from_statement(&stmt).unwrap_err().to_string();
    assert!(
        err.contains("is not https://slsa.dev/provenance/v1"),
        "{err}"
    );
}

fn review_statement(
    author: &str,
    reviewers: &[&str],
    subject_commit: &str,
    config: Option<&Sha256>,
) -> Value {
    let mut subjects = vec![("source".to_owned(), format!("gitCommit:{subject_commit}"))];
    if let Some(c) = config {
        subjects.push(("deploy/web.yaml".to_owned(), c.to_string()));
    }
    let subjects: Vec<(&str, &str)> = subjects
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    statement::build(
        &subjects,
        review::PREDICATE_TYPE,
        json!({
            "repository": "https://git.acme.test/payments", "ref": "refs/heads/main", "commit": COMMIT,
            "author": author,
            "reviewers": reviewers.iter().map(|r| json!({"name": r, "timestamp": "2026-11-25T09:00:00Z"})).collect::<Vec<_>>(),
            "ownerApproval": {"name": "owner", "timestamp": "2026-11-25T09:00:00Z"},
            "mergedOn": "2026-11-25T09:30:00Z"
        }),
    )
}

#[test]
fn reviews_count_people_other_than_the_author_once() {
    let (key, _) = SigningKey::generate_p256().unwrap();
    let config = Sha256::of(b"replicas: 3");
    let r = Review::from_statement(&signed(
        &key,
        &review_statement(
            "alice",
            &["alice", "bob", "bob", "carol"],
            COMMIT,
            Some(&config),
        ),
    ))
    .unwrap();
    assert_eq!(r.independent_reviewers(), ["bob", "carol"]);
    assert_eq!(r.configs, [config]);
    assert_eq!(r.predicate.owner_approval.unwrap().name, "owner");
    let r = Review::from_statement(&signed(
        &key,
        &review_statement("alice", &["alice"], COMMIT, None),
    ))
    .unwrap();
    assert!(
        r.independent_reviewers().is_empty(),
        "a review by the author only counts for nothing"
    );
}

#[test]
fn a_review_whose_subject_is_another_commit_is_refused() {
    let (key, _) = SigningKey::generate_p256().unwrap();
    let other = "fedcba9876543210fedcba9876543210fedcba98";
    let err = Review::from_statement(&signed(
        &key,
        &review_statement("alice", &["bob"], other, None),
    ))
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("is not among the statement's subjects"),
        "{err}"
    );
    let mut stmt = review_statement("alice", &["bob"], COMMIT, None);
    stmt["predicate"]["approvedBy"] = json!("me");
    let err = Review::from_statement(&signed(&key, &stmt)).unwrap_err();
    assert!(
        err.to_string().contains("unknown field `approvedBy`"),
        "{err}"
    );
}

#[test]
fn oci_layouts_verify_every_blob_and_name_images_by_manifest_digest() {
    let dir = tempfile::tempdir().unwrap();
    let layer = oci::tar(&[("bin/hello", 0o755, b"#!/bin/sh\necho hi\n")]);
    let digest = oci::write_layout(
        dir.path(),
        &json!({"architecture": "amd64", "os": "linux"}),
        std::slice::from_ref(&layer),
        "web:1.0",
    )
    .unwrap();
    let layout = ImageLayout::open(dir.path()).unwrap();
    let image = layout.single().unwrap();
    assert_eq!(image.digest, digest);
    assert_eq!(image.ref_name.as_deref(), Some("web:1.0"));
    assert_eq!(image.layers.len(), 1);
    assert_eq!(layer.len() % 512, 0);

    // One changed byte in a layer: the layout no longer verifies.
    let layer_path = layout.blob_path(&Sha256::parse(&image.layers[0].digest).unwrap());
    let mut bytes = std::fs::read(&layer_path).unwrap();
    bytes[600] ^= 1;
    std::fs::write(&layer_path, &bytes).unwrap();
    let err = ImageLayout::open(dir.path()).unwrap_err();
    assert!(matches!(err, OciError::Mismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("content hashes to sha256:"),
        "{err}"
    );

    // A truncated blob: the size is wrong.
    bytes.truncate(100);
    std::fs::write(&layer_path, &bytes).unwrap();
    let err = ImageLayout::open(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("100 bytes, descriptor says"),
        "{err}"
    );

    // Not a layout at all.
    let empty = tempfile::tempdir().unwrap();
    let err = ImageLayout::open(empty.path()).unwrap_err();
    assert!(err.to_string().contains("oci-layout"), "{err}");
}

#[test]
fn signing_keys_round_trip_through_pem_and_sign_verifiable_envelopes() {
    let (key, der) = SigningKey::generate_p256().unwrap();
    let again = SigningKey::from_pkcs8_der(&der).unwrap();
    assert_eq!(again.keyid(), key.keyid());
    let pem = key.public_key().spki_pem();
    assert_eq!(
        dsse::PublicKey::from_spki_pem(&pem).unwrap(),
        key.public_key()
    );
    assert!(SigningKey::from_pkcs8_der(b"not a key").is_err());
}
