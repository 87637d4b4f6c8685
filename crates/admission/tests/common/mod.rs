//! Fixtures: a builder with two keys, a review system, a policy and signed attestations.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use ringfence_admission::policy::{Policy, PolicySet};
use ringfence_admission::verdict::{Attestation, Job};
use ringfence_core::UnixTime;
use ringfence_provenance::dsse::{self, SigningKey};
use ringfence_provenance::statement::{self, Sha256};
use ringfence_provenance::{review, slsa};
use serde_json::{Value, json};

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
pub const BUILDER: &str = "https://builder.acme.test/v1";
pub const REPO: &str = "https://git.acme.test/payments/web";
/// 2026-11-25T12:00:00Z
pub const NOW: UnixTime = UnixTime::from_secs(1_795_608_000);

pub struct Fixture {
    pub builder: [SigningKey; 2],
    pub reviewer: SigningKey,
    pub other: SigningKey,
    pub image: Sha256,
    pub config: Sha256,
}

fn pem(k: &SigningKey) -> String {
    serde_json::to_string(&k.public_key().spki_pem()).unwrap()
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            builder: [
                SigningKey::generate_p256().unwrap().0,
                SigningKey::generate_p256().unwrap().0,
            ],
            reviewer: SigningKey::generate_p256().unwrap().0,
            other: SigningKey::generate_p256().unwrap().0,
            image: Sha256::of(b"manifest of web"),
            config: Sha256::of(b"args: [--port=8080]"),
        }
    }

    /// The policy YAML; `extra` lines are appended to `spec` (2-space indented).
    pub fn policy_yaml(&self, mode: &str, extra: &str) -> String {
        format!(
            r#"apiVersion: ringfence.dev/v1
kind: ServicePolicy
metadata:
  name: web-production
spec:
  namespace: payments
  service: web
  environments: [production]
  mode: {mode}
  images:
    repositories: ["registry.acme.test/payments/*"]
  builders:
    - id: {BUILDER}
      threshold: 2
      keys:
        - {{name: ci-a, publicKey: {a}}}
        - {{name: ci-b, publicKey: {b}}}
  source:
    repositories: ["https://git.acme.test/payments/*"]
    refs: ["refs/heads/main", "refs/tags/v*"]
  review:
    minReviewers: 1
    ownerApproval: true
    owners: [carol]
    configReviewed: true
    keys:
      - {{name: review-system, publicKey: {r}}}
  maxAge: 30days
  continuousVerification: {{interval: 1h, revokeSvidOnFailure: true}}
{extra}"#,
            a = pem(&self.builder[0]),
            b = pem(&self.builder[1]),
            r = pem(&self.reviewer),
        )
    }

    pub fn policies(&self, mode: &str, extra: &str) -> PolicySet {
        PolicySet::new(vec![
            Policy::from_yaml(&self.policy_yaml(mode, extra)).unwrap(),
        ])
        .unwrap()
    }

    pub fn job(&self) -> Job {
        Job {
            name: "web-1".into(),
            namespace: "payments".into(),
            service: "web".into(),
            environment: "production".into(),
            image: format!("registry.acme.test/payments/web@{}", self.image),
            config_digest: self.config.clone(),
        }
    }

    pub fn provenance_statement(&self) -> Value {
        statement::build(
            &[("web", &self.image.to_string())],
            slsa::PREDICATE_TYPE,
            json!({
                "buildDefinition": {
                    "buildType": slsa::RINGFENCE_BUILD_TYPE,
                    "externalParameters": {"source": {"repository": REPO, "ref": "refs/heads/main", "commit": COMMIT}},
                    "resolvedDependencies": [{"uri": format!("git+{REPO}"), "digest": {"gitCommit": COMMIT}}]
                },
                "runDetails": {"builder": {"id": BUILDER}, "metadata": {"finishedOn": "2026-11-25T10:00:00Z"}}
            }),
        )
    }

    pub fn review_statement(&self) -> Value {
        statement::build(
            &[
                ("source", &format!("gitCommit:{COMMIT}")),
                ("deploy/web.yaml", &self.config.to_string()),
            ],
            review::PREDICATE_TYPE,
            json!({
                "repository": REPO, "ref": "refs/heads/main", "commit": COMMIT, "author": "alice",
                "reviewers": [{"name": "bob", "timestamp": "2026-11-25T09:00:00Z"}],
                "ownerApproval": {"name": "carol", "timestamp": "2026-11-25T09:10:00Z"},
                "mergedOn": "2026-11-25T09:30:00Z"
            }),
        )
    }

    pub fn sign(&self, source: &str, stmt: &Value, keys: &[&SigningKey]) -> Attestation {
        Attestation {
            source: source.into(),
            envelope: dsse::sign(
                statement::PAYLOAD_TYPE,
                &serde_json::to_vec(stmt).unwrap(),
                keys,
            )
            .unwrap(),
        }
    }

    pub fn provenance(&self) -> Attestation {
        self.sign(
            "provenance.json",
            &self.provenance_statement(),
            &[&self.builder[0], &self.builder[1]],
        )
    }

    pub fn review(&self) -> Attestation {
        self.sign("review.json", &self.review_statement(), &[&self.reviewer])
    }

    pub fn attestations(&self) -> Vec<Attestation> {
        vec![self.provenance(), self.review()]
    }
}
