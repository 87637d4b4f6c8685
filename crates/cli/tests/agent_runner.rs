//! The node agent's task runner against the real sandbox (as root): per-task uids, working
//! directories and logs, the admitted digest enforced, restarts with backoff, stop.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use ringfence_agent::{Backoff, Runner, RunnerConfig, TaskEvent, TaskSpec, TaskState};
use ringfence_provenance::statement::Sha256;

struct Fixture {
    dir: tempfile::TempDir,
    image: PathBuf,
    digest: Sha256,
}

fn fixture() -> Fixture {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1);
    assert_eq!(
        uid, 0,
        "the task runner suite needs root; CI runs it as root"
    );
    let dir = tempfile::Builder::new()
        .prefix("ringfence-agent-test")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let probe = dir.path().join("probe");
    ringfence_test_util::probe::build(&probe).unwrap_or_else(|e| panic!("{e:#}"));
    let bytes = std::fs::read(&probe).unwrap();
    let layer = ringfence_provenance::oci::tar(&[("bin/probe", 0o755, &bytes)]);
    let image = dir.path().join("image");
    let digest = ringfence_provenance::oci::write_layout(
        &image,
        &serde_json::json!({"architecture": "amd64", "os": "linux"}),
        &[layer],
        "probe:test",
    )
    .unwrap();
    Fixture { dir, image, digest }
}

fn runner(f: &Fixture) -> (Runner, Receiver<TaskEvent>) {
    // uids of their own per test process, so parallel tests never share one.
    let base = 300_000 + (std::process::id() % 5_000) * 16;
    Runner::new(RunnerConfig {
        root: f.dir.path().join("agent"),
        init_program: PathBuf::from(env!("CARGO_BIN_EXE_ringfence-sandbox-init")),
        uid_base: base,
        uid_count: 16,
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            stable_after: Duration::from_secs(10),
        },
        log_max_bytes: 64,
    })
}

fn spec(f: &Fixture, id: &str, args: &[&str]) -> TaskSpec {
    TaskSpec {
        id: id.into(),
        image: f.image.clone(),
        digest: f.digest.clone(),
        argv: args.iter().map(|s| (*s).to_owned()).collect(),
        env: vec!["ROLE=test".into()],
        limits: Default::default(),
        profile: "default".into(),
        volumes: Vec::new(),
    }
}

/// Events until `done` says so or `limit` passes.
fn events_until(
    rx: &Receiver<TaskEvent>,
    limit: Duration,
    done: impl Fn(&[TaskEvent]) -> bool,
) -> Vec<TaskEvent> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while !done(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) => got.push(e),
            Err(_) => panic!("timed out; events so far: {got:#?}"),
        }
    }
    got
}

#[test]
fn tasks_run_under_their_own_uids_with_their_own_work_dirs_and_logs() {
    let f = fixture();
    let (runner, rx) = runner(&f);
    let a = runner
        .start(spec(
            &f,
            "shop.web.j1.0",
            &["/bin/probe", "write-file", "/work/out"],
        ))
        .unwrap();
    let b = runner
        .start(spec(
            &f,
            "shop.web.j1.1",
            &["/bin/probe", "write-file", "/work/out"],
        ))
        .unwrap();
    assert_ne!(a.uid(), b.uid());
    events_until(&rx, Duration::from_secs(20), |ev| {
        ev.iter()
            .filter(|e| e.state == TaskState::Completed)
            .count()
            == 2
    });
    for t in [&a, &b] {
        let out = t.dir().join("work/out");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "written inside\n");
        // Written by the task's root, which is the task's own unprivileged host uid.
        assert_eq!(std::fs::metadata(&out).unwrap().uid(), t.uid());
        assert_eq!(
            std::fs::read_to_string(t.dir().join("stdout.log")).unwrap(),
            "written\n"
        );
        assert_eq!(t.state().0, TaskState::Completed);
    }
    // One task's directory is not the other's.
    assert_ne!(a.dir(), b.dir());
}

#[test]
fn a_crashing_task_is_restarted_with_growing_backoff_until_stopped() {
    let f = fixture();
    let (runner, rx) = runner(&f);
    let t = runner
        .start(spec(
            &f,
            "shop.batch.crashy.0",
            &["/bin/probe", "no-such-test"],
        ))
        .unwrap();
    let ev = events_until(&rx, Duration::from_secs(30), |ev| {
        ev.iter()
            .filter(|e| matches!(e.state, TaskState::Backoff { .. }))
            .count()
            >= 4
    });
    let delays: Vec<u64> = ev
        .iter()
        .filter_map(|e| match &e.state {
            TaskState::Backoff { delay_ms, exit } => {
                assert_eq!(exit, "exit code 2");
                Some(*delay_ms)
            }
            _ => None,
        })
        .collect();
    assert_eq!(delays, [50, 100, 200, 200]);
    let restarts: Vec<u32> = ev.iter().map(|e| e.restarts).collect();
    assert!(restarts.windows(2).all(|w| w[0] <= w[1]), "{restarts:?}");
    assert!(
        ev.iter()
            .any(|e| matches!(e.state, TaskState::Running { .. }))
    );
    // Each run's line lands in stderr.log; past 64 bytes the log moves to stderr.log.1.
    let stderr = std::fs::read_to_string(t.dir().join("stderr.log")).unwrap();
    let older = std::fs::read_to_string(t.dir().join("stderr.log.1")).unwrap();
    assert!(stderr.contains("unknown test no-such-test"), "{stderr}");
    assert!(older.contains("unknown test no-such-test"), "{older}");
    assert!(stderr.len() <= 64 + 40, "{stderr}");
    t.stop();
    let last = events_until(&rx, Duration::from_secs(10), |ev| {
        ev.iter().any(|e| e.state == TaskState::Stopped)
    });
    assert!(last.last().is_some_and(|e| e.state == TaskState::Stopped));
}

#[test]
fn stopping_a_running_task_ends_its_sandbox() {
    let f = fixture();
    let (runner, rx) = runner(&f);
    let marker = format!("agent-marker-{}", std::process::id());
    let t = runner
        .start(spec(
            &f,
            "shop.web.sleepy.0",
            &["/bin/probe", "sleep", "60", &marker],
        ))
        .unwrap();
    events_until(&rx, Duration::from_secs(20), |ev| {
        ev.iter()
            .any(|e| matches!(e.state, TaskState::Running { .. }))
    });
    let alive = || !ringfence_test_util::probe::processes_with(&marker).is_empty();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !alive() {
        assert!(Instant::now() < deadline, "the task never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive() {
        assert!(Instant::now() < deadline, "still running after stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_image_other_than_the_admitted_one_is_refused_and_ids_are_checked() {
    let f = fixture();
    let (runner, _rx) = runner(&f);
    let mut s = spec(&f, "shop.web.j2.0", &["/bin/probe", "hello"]);
    s.digest = Sha256::of(b"some other image");
    let err = runner
        .start(s)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with("task shop.web.j2.0: image ")
            && err.contains(&format!("is {}, but sha256:", f.digest)),
        "{err}"
    );
    let err = runner
        .start(spec(&f, "../escape", &["/bin/probe", "hello"]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(
        err,
        "task id \"../escape\": use letters, digits, '.', '-' and '_' (at most 128)"
    );
    // The same id twice at once is refused.
    let first = runner
        .start(spec(&f, "shop.web.j3.0", &["/bin/probe", "sleep", "30"]))
        .unwrap();
    let err = runner
        .start(spec(&f, "shop.web.j3.0", &["/bin/probe", "sleep", "30"]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(err, "task shop.web.j3.0 is already running here");
    first.stop();
}

#[test]
fn a_layout_replaced_after_admission_is_refused_at_the_next_restart() {
    let f = fixture();
    let (runner, rx) = runner(&f);
    let t = runner
        .start(spec(
            &f,
            "shop.batch.swapped.0",
            &["/bin/probe", "no-such-test"],
        ))
        .unwrap();
    events_until(&rx, Duration::from_secs(20), |ev| {
        ev.iter()
            .any(|e| matches!(e.state, TaskState::Backoff { .. }))
    });
    // Someone rewrites the layout on disk with another image.
    std::fs::remove_dir_all(&f.image).unwrap();
    let layer = ringfence_provenance::oci::tar(&[("bin/probe", 0o755, b"#!/bin/sh\n")]);
    ringfence_provenance::oci::write_layout(&f.image, &serde_json::json!({}), &[layer], "x")
        .unwrap();
    let ev = events_until(&rx, Duration::from_secs(20), |ev| {
        ev.iter()
            .any(|e| matches!(e.state, TaskState::Failed { .. }))
    });
    let Some(TaskState::Failed { reason }) = ev.last().map(|e| e.state.clone()) else {
        panic!("{ev:#?}")
    };
    assert!(
        reason.contains(&format!("not the admitted {}", f.digest)),
        "{reason}"
    );
    t.stop();
}

#[test]
fn drift_inside_a_task_is_reported_to_the_agent() {
    let f = fixture();
    let (runner, rx) = runner(&f);
    let _t = runner
        .start(spec(
            &f,
            "shop.web.drifty.0",
            &["/bin/probe", "exec-written"],
        ))
        .unwrap();
    let ev = events_until(&rx, Duration::from_secs(20), |ev| {
        ev.iter().any(|e| e.drift.is_some())
    });
    let drift = ev.iter().find_map(|e| e.drift.clone()).unwrap();
    assert!(
        drift.starts_with("drift: refused exec of /tmp/dropped"),
        "{drift}"
    );
}
