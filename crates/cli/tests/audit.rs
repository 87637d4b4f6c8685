//! `ringfence audit` end to end with the real binary: init, append, tail, query, verify,
//! prove and check-proof offline, a witness that refuses a rollback, and a tampered entry
//! that verify names.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::path::Path;
use std::process::{Command, Output};

fn rf(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .current_dir(dir)
        .args(args)
        .env_remove("RINGFENCE_CONFIG")
        .env_remove("RINGFENCE_STORE")
        .env_remove("RINGFENCE_DATA_DIR")
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = rf(dir, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn fails(dir: &Path, args: &[&str]) -> (i32, String) {
    let o = rf(dir, args);
    assert!(!o.status.success(), "{args:?} should fail");
    (
        o.status.code().unwrap(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn append(dir: &Path, target: &str) -> u64 {
    ok(
        dir,
        &[
            "audit",
            "append",
            "--action",
            "identity.issue",
            "--target",
            target,
            "--decision",
            "allow",
            "--reason",
            "admitted",
        ],
    )
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn append_read_prove_and_check_offline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vkey = ok(d, &["audit", "init", "--origin", "example.com/audit"]);
    assert!(vkey.starts_with("example.com/audit+"));
    let key = d.join(".ringfence/audit/log.key");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions())
            & 0o777,
        0o600
    );
    let (_, err) = fails(d, &["audit", "init"]);
    assert!(err.contains("already exists"), "{err}");

    for i in 0..7 {
        assert_eq!(append(d, &format!("svc-{i}")), i);
    }
    let tail = ok(d, &["audit", "tail", "-n", "2"]);
    assert_eq!(tail.lines().count(), 2);
    assert!(tail.contains("svc-5") && tail.contains("svc-6"));
    let q = ok(
        d,
        &["audit", "query", "--target", "svc-3", "--output", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(q.trim()).unwrap();
    assert_eq!(v["index"], 3);
    assert_eq!(v["event"]["target"], "svc-3");
    assert!(
        ok(
            d,
            &[
                "audit",
                "query",
                "--since",
                "2000-01-01T00:00:00Z",
                "--until",
                "2000-01-02T00:00:00Z"
            ]
        )
        .is_empty()
    );

    let verify = ok(d, &["audit", "verify"]);
    assert!(verify.starts_with("OK: 7 entries"), "{verify}");

    let old_cp = d.join("old.cp");
    std::fs::write(&old_cp, ok(d, &["audit", "checkpoint"])).unwrap();
    append(d, "svc-7");
    let cp = d.join("cp");
    std::fs::write(&cp, ok(d, &["audit", "checkpoint"])).unwrap();
    let inc = d.join("inc.json");
    std::fs::write(
        &inc,
        ok(d, &["audit", "prove", "inclusion", "--index", "4"]),
    )
    .unwrap();
    let out = ok(
        d,
        &[
            "audit",
            "check-proof",
            "--proof",
            "inc.json",
            "--checkpoint",
            "cp",
        ],
    );
    assert!(
        out.starts_with("OK: entry 4 is in the log example.com/audit of 8 entries"),
        "{out}"
    );
    let cons = d.join("cons.json");
    std::fs::write(
        &cons,
        ok(d, &["audit", "prove", "consistency", "--from", "7"]),
    )
    .unwrap();
    let out = ok(
        d,
        &[
            "audit",
            "check-proof",
            "--proof",
            "cons.json",
            "--checkpoint",
            "cp",
            "--old-checkpoint",
            "old.cp",
        ],
    );
    assert!(out.contains("extends its first 7 entries"), "{out}");

    // Offline refusals: a proof for another entry, a checkpoint with a bad signature.
    let text = std::fs::read_to_string(&inc)
        .unwrap()
        .replace("\"index\": 4", "\"index\": 5");
    std::fs::write(d.join("wrong.json"), text).unwrap();
    let (code, err) = fails(
        d,
        &[
            "audit",
            "check-proof",
            "--proof",
            "wrong.json",
            "--checkpoint",
            "cp",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("proof does not verify"), "{err}");
    let forged = std::fs::read_to_string(&cp)
        .unwrap()
        .replacen("\n8\n", "\n9\n", 1);
    std::fs::write(d.join("forged.cp"), forged).unwrap();
    let (_, err) = fails(
        d,
        &[
            "audit",
            "check-proof",
            "--proof",
            "inc.json",
            "--checkpoint",
            "forged.cp",
        ],
    );
    assert!(
        err.contains("signature from key example.com/audit does not verify"),
        "{err}"
    );
    std::fs::write(d.join("garbage.json"), "{\"type\":\"inclusion\"").unwrap();
    let (_, err) = fails(
        d,
        &[
            "audit",
            "check-proof",
            "--proof",
            "garbage.json",
            "--checkpoint",
            "cp",
        ],
    );
    assert!(err.contains("malformed proof"), "{err}");
}

#[test]
fn a_witness_cosigns_growth_and_refuses_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["audit", "init", "--origin", "example.com/audit"]);
    append(d, "a");
    append(d, "b");
    let old_cp = ok(d, &["audit", "checkpoint"]);
    std::fs::write(d.join("old.cp"), &old_cp).unwrap();
    std::fs::write(
        d.join("empty-proof.json"),
        ok(
            d,
            &["audit", "prove", "consistency", "--from", "2", "--to", "2"],
        ),
    )
    .unwrap();
    append(d, "c");
    ok(d, &["audit", "checkpoint"]);

    let wvkey = ok(
        d,
        &[
            "audit",
            "witness",
            "keygen",
            "--name",
            "witness.example",
            "--out",
            "w.key",
        ],
    );
    assert!(wvkey.starts_with("witness.example+"));
    let args = [
        "audit",
        "witness",
        "cosign",
        "--log-vkey",
        ".ringfence/audit/log.pub",
        "--key",
        "w.key",
        "--state",
        "w.json",
    ];
    let cosigned = ok(d, &args);
    assert!(
        cosigned
            .lines()
            .last()
            .unwrap()
            .starts_with("\u{2014} witness.example "),
        "{cosigned}"
    );
    assert!(cosigned.starts_with("example.com/audit\n3\n"));

    // Offered the older checkpoint (a log rolled back, or a split view), it refuses loudly.
    let mut rollback = args.to_vec();
    rollback.extend(["--checkpoint", "old.cp", "--proof", "empty-proof.json"]);
    let (code, err) = fails(d, &rollback);
    assert_eq!(code, 1);
    assert!(
        err.contains("ROLLBACK") && err.contains("already accepted 3 entries"),
        "{err}"
    );
    let state = std::fs::read_to_string(d.join("w.json")).unwrap();
    assert!(
        state.contains("\"size\": 3"),
        "the state is unchanged: {state}"
    );
}

#[test]
fn verify_names_a_tampered_entry_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["audit", "init", "--origin", "example.com/audit"]);
    for i in 0..5 {
        append(d, &format!("svc-{i}"));
    }
    // Rewrite entry 3's stored bytes through the raw store tool: a different target.
    let key = "/audit/e/00000000000000000003";
    let raw = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .current_dir(d)
        .args(["store", "get", key])
        .output()
        .unwrap()
        .stdout;
    let at = raw.windows(5).position(|w| w == b"svc-3").unwrap();
    let mut tampered = raw.clone();
    tampered[at + 4] = b'9';
    assert_ne!(tampered, raw);
    let path = d.join("tampered.bin");
    std::fs::write(&path, &tampered).unwrap();
    ok(d, &["store", "put", key, "--file", "tampered.bin"]);
    let (code, err) = fails(d, &["audit", "verify"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "audit log verification FAILED: entry 3: its contents do not match its stored leaf hash"
        ),
        "{err}"
    );
}

#[test]
fn missing_keys_and_loose_permissions_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, err) = fails(d, &["audit", "append", "--action", "a.b", "--target", "t"]);
    assert!(err.contains("run `ringfence audit init`"), "{err}");
    ok(d, &["audit", "init"]);
    let key = d.join(".ringfence/audit/log.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (_, err) = fails(d, &["audit", "append", "--action", "a.b", "--target", "t"]);
    assert!(
        err.contains("readable by other users") && err.contains("chmod 600"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follow_prints_entries_appended_by_another_process_on_etcd() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let cluster = ringfence_test_util::etcd::EtcdCluster::single()
        .await
        .unwrap();
    let url = cluster.store_url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let with_store = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--store".to_owned(), url.clone()];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        all
    };
    let run = |args: Vec<String>| {
        let d = d.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            ok(&d, &refs)
        })
    };
    run(with_store(&[
        "audit",
        "init",
        "--origin",
        "example.com/audit",
    ]))
    .await
    .unwrap();
    run(with_store(&[
        "audit", "append", "--action", "a.b", "--target", "before",
    ]))
    .await
    .unwrap();

    let mut follower = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .current_dir(&d)
        .args(with_store(&["audit", "tail", "-f", "-n", "5"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let first = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    assert!(first.contains("before"), "{first}");
    run(with_store(&[
        "audit", "append", "--action", "a.b", "--target", "after",
    ]))
    .await
    .unwrap();
    let next = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    assert!(
        next.contains("after") && next.trim_start().starts_with('1'),
        "{next}"
    );
    follower.kill().unwrap(); // by PID
    follower.wait().unwrap();
}
