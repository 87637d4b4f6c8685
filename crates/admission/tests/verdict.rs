//! Admission verdicts: the compliant path, and every bypass the Binary Authorization issue names,
//! each asserting the refusal, the requirement and the message a user sees.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

mod common;

use std::time::Duration;

use common::*;
use ringfence_admission::policy::{Policy, PolicySet};
use ringfence_admission::verdict::{Basis, Request, Requirement, Verdict, evaluate, parse_image};
use ringfence_provenance::dsse::Signature;
use ringfence_provenance::statement::Sha256;
use serde_json::json;

fn run(
    f: &Fixture,
    policies: &PolicySet,
    atts: &[ringfence_admission::verdict::Attestation],
) -> Verdict {
    evaluate(policies, &f.job(), atts, NOW, &Request::Normal)
}

/// Asserts a denial naming `req` with a message containing `want`.
fn denied(v: &Verdict, req: Requirement, want: &str) {
    assert!(!v.admit, "expected a denial, got {v:?}");
    assert_eq!(v.basis, Basis::Denied);
    assert!(
        v.findings
            .iter()
            .any(|f| f.requirement == req && f.to_string().contains(want)),
        "no [{req}] finding containing {want:?} in:\n{}",
        v.findings
            .iter()
            .map(|f| format!("  {f}\n"))
            .collect::<String>()
    );
}

#[test]
fn a_compliant_job_is_admitted_with_no_findings() {
    let f = Fixture::new();
    let v = run(&f, &f.policies("enforce", ""), &f.attestations());
    assert!(v.admit, "{:?}", v.findings);
    assert_eq!(v.basis, Basis::Compliant);
    assert_eq!(v.policy.as_deref(), Some("web-production"));
    // The review merged at 09:30 (before the 10:00 build) and maxAge is 30 days: the verdict says
    // when the oldest attestation it relied on ages out.
    assert_eq!(
        v.valid_until.unwrap().as_secs(),
        NOW.as_secs() - 9000 + 30 * 86400
    );
}

#[test]
fn payload_type_swapped_is_refused() {
    let f = Fixture::new();
    let mut p = f.provenance();
    p.envelope.payload_type = "application/json".into();
    let v = run(&f, &f.policies("enforce", ""), &[p, f.review()]);
    denied(
        &v,
        Requirement::Provenance,
        "payload type \"application/json\" is not application/vnd.in-toto+json",
    );
}

#[test]
fn one_key_counted_twice_does_not_meet_a_threshold_of_two() {
    let f = Fixture::new();
    let p = f.sign(
        "provenance.json",
        &f.provenance_statement(),
        &[&f.builder[0], &f.builder[0]],
    );
    let v = run(&f, &f.policies("enforce", ""), &[p, f.review()]);
    denied(
        &v,
        Requirement::Provenance,
        "valid signatures from 1 distinct trusted key(s) (ci-a); 2 required",
    );
}

#[test]
fn signatures_without_key_ids_still_count_each_key_once() {
    let f = Fixture::new();
    // Two keys, no key ids: admitted (each signature is tried against every key).
    let mut p = f.provenance();
    for s in &mut p.envelope.signatures {
        s.keyid = None;
    }
    assert!(run(&f, &f.policies("enforce", ""), &[p, f.review()]).admit);
    // One key twice, no key ids: refused.
    let mut p = f.sign(
        "provenance.json",
        &f.provenance_statement(),
        &[&f.builder[1], &f.builder[1]],
    );
    for s in &mut p.envelope.signatures {
        s.keyid = None;
    }
    let v = run(&f, &f.policies("enforce", ""), &[p, f.review()]);
    denied(
        &v,
        Requirement::Provenance,
        "1 distinct trusted key(s) (ci-b); 2 required",
    );
}

#[test]
fn required_predicate_missing_while_another_predicate_is_valid() {
    let f = Fixture::new();
    let v = run(&f, &f.policies("enforce", ""), &[f.review()]);
    denied(
        &v,
        Requirement::Provenance,
        "no SLSA provenance (https://slsa.dev/provenance/v1) attestation; present: https://ringfence.dev/attestation/code-review/v1",
    );
    let v = run(&f, &f.policies("enforce", ""), &[f.provenance()]);
    denied(&v, Requirement::Review, "no code review");
}

#[test]
fn attestation_for_another_image_is_refused() {
    let f = Fixture::new();
    let mut job = f.job();
    let other = Sha256::of(b"another image");
    job.image = format!("registry.acme.test/payments/web@{other}");
    let v = evaluate(
        &f.policies("enforce", ""),
        &job,
        &f.attestations(),
        NOW,
        &Request::Normal,
    );
    denied(
        &v,
        Requirement::Subject,
        &format!("provenance is for another image ({}), not {other}", f.image),
    );
}

#[test]
fn image_named_by_tag_is_refused() {
    let f = Fixture::new();
    let mut job = f.job();
    job.image = "registry.acme.test/payments/web:1.4".into();
    let v = evaluate(
        &f.policies("enforce", ""),
        &job,
        &f.attestations(),
        NOW,
        &Request::Normal,
    );
    denied(
        &v,
        Requirement::ImageDigest,
        "is named by tag; name it by manifest digest",
    );
    assert!(
        parse_image("web@sha256:abc")
            .unwrap_err()
            .contains("not a sha256 digest")
    );
    let r = parse_image(&format!("registry.acme.test:5000/a/web:1.4@{}", f.image)).unwrap();
    assert_eq!(
        r.repository.as_deref(),
        Some("registry.acme.test:5000/a/web")
    );
}

#[test]
fn image_from_a_repository_not_allowed_is_refused() {
    let f = Fixture::new();
    let mut job = f.job();
    job.image = format!("registry.acme.test/payments/team/web@{}", f.image);
    let v = evaluate(
        &f.policies("enforce", ""),
        &job,
        &f.attestations(),
        NOW,
        &Request::Normal,
    );
    denied(
        &v,
        Requirement::ImageAllowed,
        "matches none of [\"registry.acme.test/payments/*\"]",
    );
}

#[test]
fn untrusted_builder_id_is_refused() {
    let f = Fixture::new();
    let mut s = f.provenance_statement();
    s["predicate"]["runDetails"]["builder"]["id"] = json!("https://laptop.acme.test/alice");
    let p = f.sign("provenance.json", &s, &[&f.builder[0], &f.builder[1]]);
    let v = run(&f, &f.policies("enforce", ""), &[p, f.review()]);
    denied(
        &v,
        Requirement::Builder,
        "untrusted builder id \"https://laptop.acme.test/alice\"",
    );
}

#[test]
fn builder_id_mismatched_with_its_keys_is_refused() {
    let f = Fixture::new();
    // A second trusted builder with its own key; the first builder's keys sign a provenance
    // that names the second builder.
    let extra = ""; // builders are listed in the fixture; add one through a fresh policy
    let yaml = f.policy_yaml("enforce", extra).replace(
        "  source:\n",
        &format!(
            "    - id: https://other-builder.acme.test/v1\n      keys:\n        - {{name: other, publicKey: {}}}\n  source:\n",
            serde_json::to_string(&f.other.public_key().spki_pem()).unwrap()
        ),
    );
    let policies = PolicySet::new(vec![Policy::from_yaml(&yaml).unwrap()]).unwrap();
    let mut s = f.provenance_statement();
    s["predicate"]["runDetails"]["builder"]["id"] = json!("https://other-builder.acme.test/v1");
    let p = f.sign("provenance.json", &s, &[&f.builder[0], &f.builder[1]]);
    let v = run(&f, &policies, &[p, f.review()]);
    denied(
        &v,
        Requirement::Builder,
        "builder id mismatch: signed with the keys of https://builder.acme.test/v1 but names builder https://other-builder.acme.test/v1",
    );
}

#[test]
fn untrusted_keys_are_refused() {
    let f = Fixture::new();
    let p = f.sign("provenance.json", &f.provenance_statement(), &[&f.other]);
    let v = run(&f, &f.policies("enforce", ""), &[p, f.review()]);
    denied(
        &v,
        Requirement::Provenance,
        "not signed by a trusted builder",
    );
}

#[test]
fn source_repository_or_ref_not_allowed_is_refused() {
    let f = Fixture::new();
    let mut s = f.provenance_statement();
    s["predicate"]["buildDefinition"]["externalParameters"]["source"]["repository"] =
        json!("https://git.acme.test/forks/web");
    let p = f.sign("provenance.json", &s, &[&f.builder[0], &f.builder[1]]);
    let v = run(&f, &f.policies("enforce", ""), &[p, f.review()]);
    denied(
        &v,
        Requirement::SourceRepository,
        "source repository \"https://git.acme.test/forks/web\" is not allowed",
    );

    let mut s = f.provenance_statement();
    s["predicate"]["buildDefinition"]["externalParameters"]["source"]["ref"] =
        json!("refs/heads/experiment");
    let p = f.sign("provenance.json", &s, &[&f.builder[0], &f.builder[1]]);
    let v = run(&f, &f.policies("enforce", ""), &[p, f.review()]);
    denied(
        &v,
        Requirement::SourceRef,
        "source ref \"refs/heads/experiment\" is not allowed",
    );
}

#[test]
fn review_by_the_author_only_is_refused() {
    let f = Fixture::new();
    let mut s = f.review_statement();
    s["predicate"]["reviewers"] = json!([{"name": "alice", "timestamp": "2026-11-25T09:00:00Z"}]);
    let r = f.sign("review.json", &s, &[&f.reviewer]);
    let v = run(&f, &f.policies("enforce", ""), &[f.provenance(), r]);
    denied(
        &v,
        Requirement::Reviewers,
        "0 approval(s) by someone other than the author \"alice\" (none); 1 required",
    );
}

#[test]
fn case_and_space_variants_of_the_author_do_not_count_as_other_people() {
    let f = Fixture::new();
    let mut s = f.review_statement();
    s["predicate"]["reviewers"] = json!([
        {"name": "Alice", "timestamp": "2026-11-25T09:00:00Z"},
        {"name": " alice ", "timestamp": "2026-11-25T09:00:00Z"},
        {"name": "", "timestamp": "2026-11-25T09:00:00Z"}
    ]);
    s["predicate"]["ownerApproval"]["name"] = json!("ALICE");
    let r = f.sign("review.json", &s, &[&f.reviewer]);
    let v = run(&f, &f.policies("enforce", ""), &[f.provenance(), r]);
    denied(
        &v,
        Requirement::Reviewers,
        "0 approval(s) by someone other than the author",
    );
    denied(
        &v,
        Requirement::OwnerApproval,
        "by the author \"alice\" themself",
    );
    // Bob twice, as "Bob" and "bob", is still one reviewer.
    let mut s = f.review_statement();
    s["predicate"]["reviewers"] = json!([
        {"name": "Bob", "timestamp": "2026-11-25T09:00:00Z"},
        {"name": "bob", "timestamp": "2026-11-25T09:00:00Z"}
    ]);
    let r = f.sign("review.json", &s, &[&f.reviewer]);
    let yaml = f
        .policy_yaml("enforce", "")
        .replace("minReviewers: 1", "minReviewers: 2");
    let policies = PolicySet::new(vec![Policy::from_yaml(&yaml).unwrap()]).unwrap();
    denied(
        &run(&f, &policies, &[f.provenance(), r]),
        Requirement::Reviewers,
        "1 approval(s) by someone other than the author \"alice\" (bob); 2 required",
    );
}

#[test]
fn owner_approval_missing_or_by_the_author_is_refused() {
    let f = Fixture::new();
    let mut s = f.review_statement();
    s["predicate"]
        .as_object_mut()
        .unwrap()
        .remove("ownerApproval");
    let v = run(
        &f,
        &f.policies("enforce", ""),
        &[f.provenance(), f.sign("r", &s, &[&f.reviewer])],
    );
    denied(&v, Requirement::OwnerApproval, "no owner approval");
    let mut s = f.review_statement();
    s["predicate"]["ownerApproval"]["name"] = json!("alice");
    let v = run(
        &f,
        &f.policies("enforce", ""),
        &[f.provenance(), f.sign("r", &s, &[&f.reviewer])],
    );
    denied(
        &v,
        Requirement::OwnerApproval,
        "by the author \"alice\" themself",
    );
    let mut s = f.review_statement();
    s["predicate"]["ownerApproval"]["name"] = json!("mallory");
    let v = run(
        &f,
        &f.policies("enforce", ""),
        &[f.provenance(), f.sign("r", &s, &[&f.reviewer])],
    );
    denied(
        &v,
        Requirement::OwnerApproval,
        "\"mallory\" is not an owner",
    );
}

#[test]
fn review_of_a_different_commit_is_refused() {
    let f = Fixture::new();
    let other = "fedcba9876543210fedcba9876543210fedcba98";
    let mut s = f.review_statement();
    s["predicate"]["commit"] = json!(other);
    s["subject"][0]["digest"] = json!({"gitCommit": other});
    let r = f.sign("review.json", &s, &[&f.reviewer]);
    let v = run(&f, &f.policies("enforce", ""), &[f.provenance(), r]);
    denied(
        &v,
        Requirement::ReviewedCommit,
        &format!("the review is of commit {other}, but the image was built from {COMMIT}"),
    );
}

#[test]
fn configuration_digest_not_attested_is_refused() {
    let f = Fixture::new();
    let mut job = f.job();
    job.config_digest = Sha256::of(b"args: [--debug --no-auth]");
    let v = evaluate(
        &f.policies("enforce", ""),
        &job,
        &f.attestations(),
        NOW,
        &Request::Normal,
    );
    denied(
        &v,
        Requirement::ConfigReviewed,
        &format!(
            "the job's configuration {} is not among the reviewed files ({})",
            job.config_digest, f.config
        ),
    );
}

#[test]
fn attestation_older_than_the_policy_allows_is_refused() {
    let f = Fixture::new();
    let later = NOW.saturating_add(Duration::from_secs(31 * 86400));
    let v = evaluate(
        &f.policies("enforce", ""),
        &f.job(),
        &f.attestations(),
        later,
        &Request::Normal,
    );
    denied(
        &v,
        Requirement::MaxAge,
        "provenance is dated 2026-11-25T10:00:00Z, older than the policy's maximum age 30days",
    );
}

#[test]
fn not_yet_valid_time_is_refused() {
    let f = Fixture::new();
    let mut s = f.provenance_statement();
    s["predicate"]["runDetails"]["metadata"]["finishedOn"] = json!("2026-11-26T12:00:00Z");
    let p = f.sign("provenance.json", &s, &[&f.builder[0], &f.builder[1]]);
    let v = run(&f, &f.policies("enforce", ""), &[p, f.review()]);
    denied(
        &v,
        Requirement::NotYetValid,
        "dated 2026-11-26T12:00:00Z — in the future",
    );
}

#[test]
fn malformed_base64_or_json_is_refused_with_the_reason() {
    let f = Fixture::new();
    let mut p = f.provenance();
    p.envelope.payload = "%%%not base64%%%".into();
    let v = run(&f, &f.policies("enforce", ""), &[p, f.review()]);
    denied(
        &v,
        Requirement::Provenance,
        "unreadable: provenance.json: payload is not base64",
    );
    let mut p = f.provenance();
    p.envelope.payload = "bm90IGpzb24=".into(); // "not json"
    let v = run(&f, &f.policies("enforce", ""), &[p, f.review()]);
    denied(
        &v,
        Requirement::Provenance,
        "provenance.json: payload is not JSON",
    );
    let mut p = f.provenance();
    p.envelope.signatures[0] = Signature {
        keyid: None,
        sig: "!!".into(),
    };
    let v = run(&f, &f.policies("enforce", ""), &[p, f.review()]);
    denied(&v, Requirement::Provenance, "a signature is not base64");
}

#[test]
fn tampered_payload_is_refused() {
    let f = Fixture::new();
    let mut p = f.provenance();
    let mut s = f.provenance_statement();
    s["predicate"]["buildDefinition"]["externalParameters"]["source"]["ref"] =
        json!("refs/heads/evil");
    use base64::Engine;
    p.envelope.payload =
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&s).unwrap());
    let v = run(&f, &f.policies("enforce", ""), &[p, f.review()]);
    denied(&v, Requirement::Provenance, "0 distinct trusted key(s)");
}

#[test]
fn a_service_without_a_policy_is_refused() {
    let f = Fixture::new();
    let mut job = f.job();
    job.service = "ledger".into();
    let v = evaluate(
        &f.policies("enforce", ""),
        &job,
        &f.attestations(),
        NOW,
        &Request::Normal,
    );
    denied(
        &v,
        Requirement::Policy,
        "no service policy governs payments/ledger in production",
    );
}

#[test]
fn dry_run_admits_and_records_the_would_deny() {
    let f = Fixture::new();
    let v = run(&f, &f.policies("dry-run", ""), &[f.review()]);
    assert!(v.admit);
    assert_eq!(v.basis, Basis::DryRun);
    assert!(
        v.findings
            .iter()
            .any(|x| x.requirement == Requirement::Provenance),
        "{v:?}"
    );
}

#[test]
fn break_glass_admits_with_a_justification_and_keeps_the_findings() {
    let f = Fixture::new();
    let req = Request::BreakGlass {
        justification: "INC-4411: payments down, hotfix".into(),
        by: "alice".into(),
    };
    let v = evaluate(&f.policies("enforce", ""), &f.job(), &[], NOW, &req);
    assert!(v.admit);
    assert_eq!(v.basis, Basis::BreakGlass);
    assert_eq!(
        v.justification.as_deref(),
        Some("INC-4411: payments down, hotfix")
    );
    assert!(!v.findings.is_empty());
    // Without a real justification: refused.
    let req = Request::BreakGlass {
        justification: "  urgent ".into(),
        by: "alice".into(),
    };
    let v = evaluate(&f.policies("enforce", ""), &f.job(), &[], NOW, &req);
    denied(
        &v,
        Requirement::Request,
        "break-glass needs a justification of at least 10 characters",
    );
}

#[test]
fn allow_all_and_opt_out_need_a_justification_and_say_so_in_the_verdict() {
    let f = Fixture::new();
    let yaml = "apiVersion: ringfence.dev/v1\nkind: ServicePolicy\nmetadata: {name: docs}\nspec:\n  namespace: web\n  service: docs\n  allowAll: {justification: \"public documentation, no data\", approvedBy: carol}\n";
    let policies = PolicySet::new(vec![Policy::from_yaml(yaml).unwrap()]).unwrap();
    let mut job = f.job();
    job.namespace = "web".into();
    job.service = "docs".into();
    job.image = "sha256:".to_owned() + f.image.hex();
    let v = evaluate(&policies, &job, &[], NOW, &Request::Normal);
    assert_eq!((v.admit, v.basis), (true, Basis::AllowAll));

    let v = run(
        &f,
        &f.policies(
            "enforce",
            "  optOut: {justification: ML iteration loop, approvedBy: carol}",
        ),
        &[],
    );
    assert_eq!((v.admit, v.basis), (true, Basis::OptOut));
    assert_eq!(v.justification.as_deref(), Some("ML iteration loop"));
    assert!(
        !v.findings.is_empty(),
        "an opt-out still records what would be refused"
    );
}

#[test]
fn policies_refuse_unknown_fields_and_contradictions() {
    let f = Fixture::new();
    let cases = [
        (f.policy_yaml("enforce", "  requireSigned: true"), "unknown field `requireSigned`"),
        (f.policy_yaml("enforce", "").replace("minReviewers: 1", "minReviewer: 1"), "unknown field `minReviewer`"),
        (f.policy_yaml("enforce", "").replace("threshold: 2", "threshold: 3"), "threshold 3 must be between 1 and the number of keys (2)"),
        (f.policy_yaml("enforce-ish", ""), "unknown variant `enforce-ish`"),
        (f.policy_yaml("enforce", "").replace("maxAge: 30days", "maxAge: a month"), "\"a month\""),
        (f.policy_yaml("enforce", "").replace("interval: 1h", "interval: 48h"), "between 1s and 24h"),
        (f.policy_yaml("enforce", "  allowAll: {justification: x, approvedBy: y}"), "allowAll cannot be combined"),
        (f.policy_yaml("enforce", "").replace("kind: ServicePolicy", "kind: Job"), "kind \"Job\" is not ServicePolicy"),
        ("apiVersion: ringfence.dev/v1\nkind: ServicePolicy\nmetadata: {name: x}\nspec: {namespace: a, service: b}\n".into(), "the policy requires nothing"),
        (f.policy_yaml("enforce", "").replace("service: web", "service: Web"), "spec.service"),
        (f.policy_yaml("enforce", "").replace("  source:\n", &format!("    - id: {BUILDER}\n      keys: [{{name: x, publicKey: {}}}]\n  source:\n", serde_json::to_string(&f.other.public_key().spki_pem()).unwrap())), "a builder id is listed twice"),
        ("apiVersion: ringfence.dev/v1\nkind: ServicePolicy\nmetadata: {name: x}\nspec: {namespace: a, service: b, allowAll: {justification: j, approvedBy: c}, optOut: {justification: j, approvedBy: c}}\n".into(), "allowAll and optOut exclude each other"),
    ];
    for (yaml, want) in cases {
        let err = Policy::from_yaml(&yaml).unwrap_err().to_string();
        assert!(err.contains(want), "{err}\nshould contain {want}");
    }
    // Two policies for the same service and environment: ambiguous, refused.
    let a = Policy::from_yaml(&f.policy_yaml("enforce", "")).unwrap();
    let mut b = a.clone();
    b.doc.metadata.name = "web-production-2".into();
    let err = PolicySet::new(vec![a, b]).unwrap_err().to_string();
    assert!(err.contains("both govern payments/web"), "{err}");
}

#[test]
fn the_same_code_gets_different_policies_in_different_environments() {
    let f = Fixture::new();
    let prod = Policy::from_yaml(&f.policy_yaml("enforce", "")).unwrap();
    let dev = "apiVersion: ringfence.dev/v1\nkind: ServicePolicy\nmetadata: {name: web-dev}\nspec:\n  namespace: payments\n  service: web\n  environments: [development]\n  images: {repositories: [\"registry.acme.test/**\"]}\n";
    let policies = PolicySet::new(vec![prod, Policy::from_yaml(dev).unwrap()]).unwrap();
    let mut job = f.job();
    job.environment = "development".into();
    let v = evaluate(&policies, &job, &[], NOW, &Request::Normal);
    assert_eq!((v.admit, v.policy.as_deref()), (true, Some("web-dev")));
    let v = evaluate(&policies, &f.job(), &[], NOW, &Request::Normal);
    assert!(!v.admit);
}

#[test]
fn further_required_attestations_are_checked_by_predicate_type_key_and_subject() {
    let f = Fixture::new();
    let extra = format!(
        "  attestations:\n    - predicateType: https://in-toto.io/attestation/vulns/v0.2\n      keys: [{{name: scanner, publicKey: {}}}]\n",
        serde_json::to_string(&f.other.public_key().spki_pem()).unwrap()
    );
    let policies = f.policies("enforce", &extra);
    let v = run(&f, &policies, &f.attestations());
    denied(
        &v,
        Requirement::Attestation,
        "no https://in-toto.io/attestation/vulns/v0.2 attestation",
    );
    let scan = ringfence_provenance::statement::build(
        &[("web", &f.image.to_string())],
        "https://in-toto.io/attestation/vulns/v0.2",
        json!({"scanner": {"result": []}}),
    );
    let mut atts = f.attestations();
    atts.push(f.sign("scan.json", &scan, &[&f.other]));
    assert!(run(&f, &policies, &atts).admit);
    let mut atts = f.attestations();
    atts.push(f.sign("scan.json", &scan, &[&f.reviewer]));
    denied(
        &run(&f, &policies, &atts),
        Requirement::Attestation,
        "scan.json: https://in-toto.io/attestation/vulns/v0.2: DSSE envelope has valid signatures from 0",
    );
}
