//! The Workload Security Ring rules, each a named test, and a property: whatever the machines
//! and tasks, no placement ever breaks a rule.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use proptest::prelude::*;
use ringfence_sched::*;

const R: Resources = Resources {
    cpu_milli: 500,
    memory_mib: 256,
};

fn machine(id: &str, pool: Pool) -> Machine {
    Machine {
        id: id.into(),
        pool,
        attested: true,
        schedulable: true,
        capacity: Resources {
            cpu_milli: 2000,
            memory_mib: 2048,
        },
        tasks: vec![],
    }
}

fn task(id: &str, ring: Ring, admission: Admission) -> Task {
    Task {
        id: id.into(),
        ring,
        admission,
        sandboxed: false,
        resources: R,
    }
}

fn fleet() -> Vec<Machine> {
    vec![
        machine("f1", Pool::Foundational),
        machine("p1", Pool::Production),
        machine("p2", Pool::Production),
        machine("d1", Pool::Development),
    ]
}

#[test]
fn a_sensitive_job_never_lands_on_a_development_machine() {
    let mut m = vec![
        machine("d1", Pool::Development),
        machine("f1", Pool::Foundational),
    ];
    let err = place(&m, &task("s", Ring::Sensitive, Admission::Compliant)).unwrap_err();
    assert!(
        err.to_string()
            .contains("d1: pool development does not serve ring sensitive"),
        "{err}"
    );
    m.push(machine("p1", Pool::Production));
    assert_eq!(
        place(&m, &task("s", Ring::Sensitive, Admission::Compliant))
            .unwrap()
            .id,
        "p1"
    );
}

#[test]
fn a_foundational_job_never_shares_a_machine_with_another_ring() {
    let mut m = fleet();
    place_and_record(&mut m, &task("f", Ring::Foundational, Admission::Compliant)).unwrap();
    assert_eq!(m[0].tasks.len(), 1);
    // Nothing else goes to the foundational machine, even with room...
    for ring in [Ring::Sensitive, Ring::Hardened, Ring::Unhardened] {
        let id = place_and_record(&mut m, &task("x", ring, Admission::Compliant)).unwrap();
        assert_ne!(id, "f1", "{ring}");
    }
    // ...and a foundational task refuses a machine that runs something else.
    let mut p = machine("f2", Pool::Foundational);
    p.tasks.push(Placed {
        task: "w".into(),
        ring: Ring::Hardened,
        resources: R,
    });
    let err = place(&[p], &task("f", Ring::Foundational, Admission::Compliant)).unwrap_err();
    assert!(
        err.to_string().contains("f2: runs non-foundational tasks"),
        "{err}"
    );
}

#[test]
fn unhardened_only_on_development_and_hardened_prefers_production() {
    let m = fleet();
    assert_eq!(
        place(&m, &task("u", Ring::Unhardened, Admission::DryRun))
            .unwrap()
            .id,
        "d1"
    );
    assert_eq!(
        place(&m, &task("h", Ring::Hardened, Admission::Compliant))
            .unwrap()
            .pool,
        Pool::Production
    );
    // Production full: hardened goes to development.
    let mut m = fleet();
    for p in m.iter_mut().filter(|x| x.pool == Pool::Production) {
        p.capacity = Resources {
            cpu_milli: 100,
            memory_mib: 100,
        };
    }
    assert_eq!(
        place(&m, &task("h", Ring::Hardened, Admission::Compliant))
            .unwrap()
            .id,
        "d1"
    );
}

#[test]
fn a_ring_cannot_claim_more_trust_than_the_verdict_supports() {
    let m = fleet();
    for admission in [
        Admission::BreakGlass,
        Admission::DryRun,
        Admission::OptOut,
        Admission::AllowAll,
    ] {
        for ring in [Ring::Foundational, Ring::Sensitive] {
            let err = place(&m, &task("t", ring, admission)).unwrap_err();
            assert!(matches!(err, SchedError::RingNotSupported { .. }), "{err}");
            assert!(
                err.to_string().contains(&format!("asks for ring {ring}")),
                "{err}"
            );
        }
    }
    let err = place(&m, &task("t", Ring::Hardened, Admission::BreakGlass)).unwrap_err();
    assert!(
        err.to_string()
            .contains("BreakGlass, not sandboxed cannot have"),
        "{err}"
    );
    // Sandboxed, a break-glass job may run hardened; allow-all is hardened too.
    let mut t = task("t", Ring::Hardened, Admission::BreakGlass);
    t.sandboxed = true;
    assert!(place(&m, &t).is_ok());
    assert!(place(&m, &task("t", Ring::Hardened, Admission::AllowAll)).is_ok());
}

#[test]
fn machines_without_attestation_serve_only_development() {
    let mut p = machine("p1", Pool::Production);
    p.attested = false;
    let err = place(
        std::slice::from_ref(&p),
        &task("h", Ring::Hardened, Admission::Compliant),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("no host attestation: development pool only"),
        "{err}"
    );
    let mut d = machine("d1", Pool::Development);
    d.attested = false;
    assert_eq!(
        place(&[p, d], &task("h", Ring::Hardened, Admission::Compliant))
            .unwrap()
            .id,
        "d1"
    );
}

#[test]
fn tasks_go_where_they_fit_tightest_and_unschedulable_says_why() {
    let mut m = fleet();
    m[1].tasks.push(Placed {
        task: "big".into(),
        ring: Ring::Hardened,
        resources: Resources {
            cpu_milli: 1200,
            memory_mib: 1000,
        },
    });
    // p1 has less room left: the tightest fit keeps p2's large hole.
    assert_eq!(
        place(&m, &task("h", Ring::Sensitive, Admission::Compliant))
            .unwrap()
            .id,
        "p1"
    );
    let huge = Task {
        resources: Resources {
            cpu_milli: 4000,
            memory_mib: 1,
        },
        ..task("huge", Ring::Sensitive, Admission::Compliant)
    };
    let err = place(&m, &huge).unwrap_err().to_string();
    assert!(
        err.contains("p2: needs 4000m CPU / 1 MiB, 2000m / 2048 MiB free"),
        "{err}"
    );
    m[2].schedulable = false;
    let err = place(&m, &huge).unwrap_err().to_string();
    assert!(err.contains("p2: not schedulable"), "{err}");
}

fn arb_ring() -> impl Strategy<Value = Ring> {
    prop_oneof![
        Just(Ring::Foundational),
        Just(Ring::Sensitive),
        Just(Ring::Hardened),
        Just(Ring::Unhardened)
    ]
}
fn arb_pool() -> impl Strategy<Value = Pool> {
    prop_oneof![
        Just(Pool::Foundational),
        Just(Pool::Production),
        Just(Pool::Development)
    ]
}
fn arb_admission() -> impl Strategy<Value = Admission> {
    prop_oneof![
        Just(Admission::Compliant),
        Just(Admission::AllowAll),
        Just(Admission::OptOut),
        Just(Admission::DryRun),
        Just(Admission::BreakGlass)
    ]
}

proptest! {
    #[test]
    fn no_placement_ever_breaks_a_rule(
        pools in proptest::collection::vec((arb_pool(), any::<bool>()), 1..6),
        tasks in proptest::collection::vec((arb_ring(), arb_admission(), any::<bool>(), 1u64..1500), 1..30),
    ) {
        let mut machines: Vec<Machine> = pools.iter().enumerate().map(|(i, (pool, attested))| Machine {
            attested: *attested, ..machine(&format!("m{i}"), *pool)
        }).collect();
        for (i, (ring, admission, sandboxed, cpu)) in tasks.into_iter().enumerate() {
            let t = Task { id: format!("t{i}"), ring, admission, sandboxed, resources: Resources { cpu_milli: cpu, memory_mib: 64 } };
            let _ = place_and_record(&mut machines, &t);
        }
        for m in &machines {
            let used: u64 = m.tasks.iter().map(|t| t.resources.cpu_milli).sum();
            prop_assert!(used <= m.capacity.cpu_milli);
            let foundational = m.tasks.iter().filter(|t| t.ring == Ring::Foundational).count();
            prop_assert!(foundational == 0 || foundational == m.tasks.len(), "foundational shares {}", m.id);
            for t in &m.tasks {
                prop_assert!(t.ring.pools().contains(&m.pool), "{} on {}", t.ring, m.pool);
                prop_assert!(m.attested || m.pool == Pool::Development);
            }
        }
    }
}
