//! Continuous verification and the conformance report: tightening a policy flags running jobs
//! at once, attestations age out, break-glass stays flagged, dry-run shows what would break.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

mod common;

use std::time::Duration;

use common::*;
use ringfence_admission::continuous::{Deployment, Flag, reverify, reverify_one};
use ringfence_admission::policy::glob;
use ringfence_admission::report;
use ringfence_admission::verdict::{Basis, Request, Requirement, evaluate};

fn deploy(
    f: &Fixture,
    mode: &str,
    id: &str,
    request: &Request,
    atts: Vec<ringfence_admission::verdict::Attestation>,
) -> Deployment {
    let admitted = evaluate(&f.policies(mode, ""), &f.job(), &atts, NOW, request);
    assert!(admitted.admit, "{admitted:?}");
    Deployment {
        id: id.into(),
        job: f.job(),
        attestations: atts,
        admitted,
        deployed_at: NOW,
    }
}

#[test]
fn tightening_a_policy_flags_the_running_job_at_once_and_withholds_its_svid() {
    let f = Fixture::new();
    let d = deploy(&f, "enforce", "d1", &Request::Normal, f.attestations());
    let same = reverify_one(&f.policies("enforce", ""), &d, NOW);
    assert!(
        same.flags.is_empty() && !same.alert && !same.revoke_svid,
        "{same:?}"
    );
    // The owner now requires two independent reviewers.
    let tighter = f.policies("enforce", "").policies()[0].clone();
    let yaml = f
        .policy_yaml("enforce", "")
        .replace("minReviewers: 1", "minReviewers: 2");
    let tighter_set = ringfence_admission::policy::PolicySet::new(vec![
        ringfence_admission::policy::Policy::from_yaml(&yaml).unwrap(),
    ])
    .unwrap();
    assert_ne!(tighter.digest, tighter_set.policies()[0].digest);
    let s = reverify_one(&tighter_set, &d, NOW);
    assert!(s.flags.contains(&Flag::NonCompliant), "{s:?}");
    assert!(
        s.flags
            .iter()
            .any(|x| matches!(x, Flag::PolicyChanged { .. }))
    );
    assert!(s.alert && s.revoke_svid);
    assert!(s.findings().iter().any(|x| x.requirement == Requirement::Reviewers && x.message.contains("1 approval(s)")));
}

#[test]
fn attestations_age_out_and_the_next_check_comes_before_they_do() {
    let f = Fixture::new();
    let d = deploy(&f, "enforce", "d1", &Request::Normal, f.attestations());
    let s = reverify_one(&f.policies("enforce", ""), &d, NOW);
    // interval 1h in the fixture policy
    assert_eq!(s.next_check, NOW.saturating_add(Duration::from_secs(3600)));
    let late = NOW.saturating_add(Duration::from_secs(30 * 86400 - 9000 - 1800)); // 30 min before the review ages out
    let s = reverify_one(&f.policies("enforce", ""), &d, late);
    assert!(s.flags.is_empty());
    assert_eq!(
        s.next_check.as_secs(),
        NOW.as_secs() - 9000 + 30 * 86400,
        "re-checked the moment the review ages out"
    );
    let s = reverify_one(
        &f.policies("enforce", ""),
        &d,
        NOW.saturating_add(Duration::from_secs(31 * 86400)),
    );
    assert!(s.flags.contains(&Flag::NonCompliant) && s.revoke_svid);
    assert!(
        s.findings()
            .iter()
            .any(|x| x.requirement == Requirement::MaxAge)
    );
}

#[test]
fn break_glass_stays_flagged_until_redeployed_compliant() {
    let f = Fixture::new();
    let req = Request::BreakGlass {
        justification: "INC-4411 payments outage".into(),
        by: "alice".into(),
    };
    let d = deploy(&f, "enforce", "d1", &req, vec![]);
    assert_eq!(d.admitted.basis, Basis::BreakGlass);
    let s = reverify_one(&f.policies("enforce", ""), &d, NOW);
    assert!(s.flags.contains(&Flag::BreakGlass {
        justification: "INC-4411 payments outage".into()
    }));
    assert!(s.alert);
    assert!(
        !s.revoke_svid,
        "a break-glass deploy keeps running (flagged), it is not cut off"
    );
    // Even with the attestations attached later, this deployment stays flagged...
    let mut later = d.clone();
    later.attestations = f.attestations();
    let s = reverify_one(&f.policies("enforce", ""), &later, NOW);
    assert!(s.flags.iter().any(|x| matches!(x, Flag::BreakGlass { .. })));
    // ...and a compliant redeploy is a new deployment, unflagged.
    let redeploy = deploy(&f, "enforce", "d2", &Request::Normal, f.attestations());
    assert!(
        reverify_one(&f.policies("enforce", ""), &redeploy, NOW)
            .flags
            .is_empty()
    );
}

#[test]
fn the_report_counts_per_service_and_shows_what_would_break_if_enforced() {
    let f = Fixture::new();
    let policies = f.policies("dry-run", "");
    let good = deploy(&f, "dry-run", "good", &Request::Normal, f.attestations());
    let unsigned = deploy(
        &f,
        "dry-run",
        "unsigned",
        &Request::Normal,
        vec![f.review()],
    );
    let bg = deploy(
        &f,
        "enforce",
        "bg",
        &Request::BreakGlass {
            justification: "INC-1 outage hotfix".into(),
            by: "bob".into(),
        },
        vec![],
    );
    let statuses = reverify(&policies, &[good, unsigned, bg], NOW, 2);
    let r = report::build(&policies, &statuses, NOW);
    assert_eq!(r.services.len(), 1);
    let row = &r.services[0];
    assert_eq!(
        (
            row.jobs,
            row.compliant,
            row.non_compliant,
            row.break_glass,
            row.dry_run_would_deny
        ),
        (3, 1, 2, 1, 2)
    );
    assert_eq!(row.mode, "dry-run");
    let table = report::table(&r);
    assert!(table.contains("payments   web      production  web-production  dry-run  3     1   2     1            2"), "{table}");
    assert!(table.contains("would break if enforced"), "{table}");
    assert!(table.contains("[provenance] no SLSA provenance"), "{table}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(
        json["services"][0]["wouldBreak"].as_array().unwrap().len(),
        2
    );
}

#[test]
fn many_jobs_reverify_the_same_in_parallel_as_serially() {
    let f = Fixture::new();
    let d = deploy(&f, "enforce", "d", &Request::Normal, f.attestations());
    let ds: Vec<Deployment> = (0..100)
        .map(|i| Deployment {
            id: format!("d{i}"),
            ..d.clone()
        })
        .collect();
    let a = reverify(&f.policies("enforce", ""), &ds, NOW, 1);
    let b = reverify(&f.policies("enforce", ""), &ds, NOW, 4);
    assert_eq!(a, b);
    assert_eq!(a.len(), 100);
}

#[test]
fn globs_stay_within_path_segments_unless_doubled() {
    assert!(glob(
        "registry.acme.test/payments/*",
        "registry.acme.test/payments/web"
    ));
    assert!(!glob(
        "registry.acme.test/payments/*",
        "registry.acme.test/payments/team/web"
    ));
    assert!(glob(
        "registry.acme.test/**",
        "registry.acme.test/payments/team/web"
    ));
    assert!(glob("refs/tags/v*", "refs/tags/v1.2"));
    assert!(!glob("refs/tags/v*", "refs/tags/x1"));
    assert!(!glob("refs/heads/main", "refs/heads/main2"));
    assert!(!glob(
        "registry.acme.test/payments/*",
        "registry.acme.test/payments"
    ));
}

proptest::proptest! {
    #[test]
    fn a_literal_pattern_never_matches_another_text(a in "[a-z/]{0,12}", b in "[a-z/]{0,12}") {
        proptest::prop_assert!(!glob(&a, &b) || a == b);
    }

    #[test]
    fn a_plain_path_matches_itself(a in "[a-z]{1,5}(/[a-z]{1,5}){0,3}") {
        proptest::prop_assert!(glob(&a, &a));
    }
}
