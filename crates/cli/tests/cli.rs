//! End-to-end tests of the real `ringfence` binary: what a user types and what they see,
//! exit codes included, on the embedded store and on a real etcd member.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringfence_test_util::etcd::EtcdCluster;

fn ringfence(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("RINGFENCE_CONFIG")
        .env_remove("RINGFENCE_STORE")
        .env_remove("RINGFENCE_DATA_DIR")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

#[test]
fn version_prints_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let o = ringfence(dir.path(), &["version"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).starts_with(&format!("ringfence {}", env!("CARGO_PKG_VERSION"))));
    let o = ringfence(dir.path(), &["version", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn help_lists_working_commands_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let o = ringfence(dir.path(), &["--help"]);
    assert_eq!(code(&o), 0);
    let help = stdout(&o);
    for want in [
        "version",
        "store",
        "--data-dir",
        "--store",
        "--log-format",
        "Exit codes:",
        "7  local data is damaged",
    ] {
        assert!(help.contains(want), "--help lacks {want:?}:\n{help}");
    }
    let o = ringfence(dir.path(), &["no-such-command"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn put_get_list_delete_with_compare_and_swap_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = ringfence(d, &["store", "put", "/apps/web", "v1", "--expect-absent"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let rev: u64 = stdout(&o).trim().parse().unwrap();
    assert!(
        d.join("store.redb").is_file(),
        "the store lives in the data dir"
    );

    let o = ringfence(d, &["store", "put", "/apps/web", "v2", "--expect-absent"]);
    assert_eq!(code(&o), 5);
    assert_eq!(
        stderr(&o).trim(),
        format!(
            "error: cannot put /apps/web: conflict on /apps/web: expected absent, found revision {rev}"
        )
    );
    let o = ringfence(
        d,
        &[
            "store",
            "put",
            "/apps/web",
            "v2",
            "--expect-revision",
            &rev.to_string(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    let o = ringfence(d, &["store", "get", "/apps/web"]);
    assert_eq!(stdout(&o), "v2");
    let o = ringfence(d, &["store", "get", "/apps/web", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (v["value"].as_str(), v["version"].as_u64()),
        (Some("v2"), Some(2))
    );

    ringfence(d, &["store", "put", "/apps/api", "x"]);
    ringfence(d, &["store", "put", "/apps-other", "x"]);
    let o = ringfence(d, &["store", "list", "/apps/"]);
    let lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("KEY"));
    assert!(lines[1].starts_with("/apps/api") && lines[2].starts_with("/apps/web"));

    let o = ringfence(d, &["store", "delete", "/apps/web"]);
    assert_eq!(code(&o), 0);
    let o = ringfence(d, &["store", "get", "/apps/web"]);
    assert_eq!(code(&o), 4);
    assert_eq!(stderr(&o).trim(), "error: key /apps/web not found");
    let o = ringfence(d, &["store", "delete", "/apps/web"]);
    assert_eq!(code(&o), 4);

    let o = ringfence(d, &["store", "status"]);
    assert!(stdout(&o).contains("redb file"), "{}", stdout(&o));
}

#[test]
fn malformed_keys_and_oversized_values_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = ringfence(d, &["store", "get", "/a/../b"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("cannot contain '.' or '..' segments"),
        "{}",
        stderr(&o)
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .arg("--data-dir")
        .arg(d)
        .args(["store", "put", "/big"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let big = vec![b'x'; 2 * 1024 * 1024];
    let mut stdin = child.stdin.take().unwrap();
    // The binary stops reading at the limit; a broken pipe here is expected.
    let _ = stdin.write_all(&big);
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("larger than the store accepts (1048576 bytes)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn config_file_is_read_and_unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-config");
    let config = dir.path().join("ringfence.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlog_format = \"json\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "store",
            "put",
            "/k",
            "v",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        data.join("store.redb").is_file(),
        "data_dir from the config file was used"
    );

    std::fs::write(&config, "data_dir = \"/tmp\"\nstroe = \"redb\"\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["--config", config.to_str().unwrap(), "store", "status"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 3);
    let err = stderr(&o);
    assert!(
        err.contains("invalid config file") && err.contains("unknown field `stroe`"),
        "{err}"
    );

    let o = ringfence(dir.path(), &["--store", "mysql://x", "store", "status"]);
    assert_eq!(code(&o), 3);
    assert!(
        stderr(&o).contains("use redb, redb:///path/to/file.redb or etcd://host:port"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_corrupt_store_file_is_named_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for i in 0..50 {
        ringfence(d, &["store", "put", &format!("/k/{i}"), &"v".repeat(3000)]);
    }
    let path = d.join("store.redb");
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let o = ringfence(d, &["store", "status"]);
    assert_eq!(code(&o), 7);
    let err = stderr(&o);
    assert!(
        err.contains(&path.display().to_string()) && err.contains("is corrupt"),
        "{err}"
    );
    assert!(
        err.contains("restore it from a backup, or move it aside"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_store_in_use_by_another_process_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let _held = ringfence_store::RedbStore::open_in(dir.path(), Default::default()).unwrap();
    let o = ringfence(dir.path(), &["store", "status"]);
    assert_eq!(code(&o), 7);
    assert!(
        stderr(&o).contains("is in use by another process"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_commands_work_on_etcd_and_watch_replays_history() {
    let cluster = EtcdCluster::single().await.unwrap();
    let url = cluster.store_url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let run = move |args: Vec<String>| {
        let d = d.clone();
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = vec!["--store".to_owned(), url];
            all.extend(args);
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            ringfence(&d, &refs)
        })
    };
    let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let o = run(args("store put /svc/a one")).await.unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let first: u64 = stdout(&o).trim().parse().unwrap();
    run(args("store put /svc/b two")).await.unwrap();
    run(args("store delete /svc/a")).await.unwrap();
    let o = run(args("store get /svc/b")).await.unwrap();
    assert_eq!(stdout(&o), "two");
    assert!(
        !dir.path().join("store.redb").exists(),
        "no embedded file when --store is etcd"
    );

    let o = run(args(&format!(
        "store watch /svc/ --from {first} --count 3 --output json"
    )))
    .await
    .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let events: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("put".into(), "/svc/a".into()),
            ("put".into(), "/svc/b".into()),
            ("delete".into(), "/svc/a".into())
        ]
    );
    assert_eq!(events[0]["revision"].as_u64(), Some(first));
}

#[test]
fn unreachable_etcd_fails_in_bounded_time_with_exit_code_6() {
    let dir = tempfile::tempdir().unwrap();
    let port = ringfence_test_util::free_port().unwrap();
    let started = Instant::now();
    let o = ringfence(
        dir.path(),
        &[
            "-q",
            "--store",
            &format!("etcd://127.0.0.1:{port}"),
            "store",
            "status",
        ],
    );
    assert_eq!(code(&o), 6);
    let err = stderr(&o);
    assert!(
        err.contains("etcd unavailable") && err.contains("Connection refused"),
        "{err}"
    );
    assert!(err.contains("check that etcd is running"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// `ringfence` is a small front that runs the sandbox commands itself and hands every other
/// command to `ringfence-full`. A settings option given to a sandbox command goes to the full
/// binary too, so it is validated the same way whichever binary would have run it; a missing
/// full binary is a clear error, not a crash.
#[test]
fn the_front_runs_sandbox_commands_and_hands_over_the_rest() {
    let bin = env!("CARGO_BIN_EXE_ringfence");
    let o = Command::new(bin)
        .args(["sandbox", "profile", "show", "--profile", "strict"])
        .env_remove("RINGFENCE_CONFIG")
        .env_remove("RINGFENCE_STORE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("strict"));
    let o = Command::new(bin)
        .args(["sandbox", "profile", "show", "--store", "nope://x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid --store"));
    // Alone in a directory, the front still runs the sandbox but explains what is missing.
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("ringfence");
    std::fs::copy(bin, &lone).unwrap();
    let o = Command::new(&lone).arg("version").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot run") && err.contains("ringfence-full"),
        "{err}"
    );
    let o = Command::new(&lone)
        .args(["sandbox", "profile", "show"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
}
