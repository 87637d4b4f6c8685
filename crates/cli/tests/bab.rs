//! Binary Authorization end to end with the real binary: keys, signed provenance and review,
//! `attest verify` (exit 0 admit, 1 deny, reasons printed), the artifact store, policies in the
//! Store, admission with dry-run and break-glass (a local webhook receiver sees the security
//! notification), tightening a policy, and the conformance report.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use ringfence_provenance::oci;
use serde_json::json;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn rf(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .current_dir(dir)
        .args(args)
        .env_remove("RINGFENCE_CONFIG")
        .env_remove("RINGFENCE_STORE")
        .env_remove("RINGFENCE_DATA_DIR")
        .env("USER", "alice")
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = rf(dir, args);
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Runs a command expected to exit with `code`; returns stdout + stderr.
fn exits(dir: &Path, code: i32, args: &[&str]) -> String {
    let o = rf(dir, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(code), "{args:?}: {text}");
    text
}

fn write(dir: &Path, name: &str, contents: &str) {
    std::fs::write(dir.join(name), contents).unwrap();
}

/// A webhook receiver on loopback: answers 200 and keeps each request.
fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/bab", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(10) {
            let mut s = stream.unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if body.len() >= len {
                        break;
                    }
                }
            }
            sink.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf).into_owned());
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
        }
    });
    (url, got)
}

fn policy(d: &Path, mode: &str, min_reviewers: u32) -> String {
    let pem =
        |f: &str| serde_json::to_string(&std::fs::read_to_string(d.join(f)).unwrap()).unwrap();
    format!(
        "apiVersion: ringfence.dev/v1\nkind: ServicePolicy\nmetadata: {{name: web-prod}}\nspec:\n  namespace: payments\n  service: web\n  environments: [production]\n  mode: {mode}\n  images: {{repositories: [\"registry.acme.test/payments/*\"]}}\n  builders:\n    - id: https://builder.acme.test/v1\n      threshold: 2\n      keys:\n        - {{name: ci-a, publicKey: {}}}\n        - {{name: ci-b, publicKey: {}}}\n  source: {{repositories: [\"https://git.acme.test/payments/*\"], refs: [refs/heads/main]}}\n  review:\n    minReviewers: {min_reviewers}\n    configReviewed: true\n    keys: [{{name: review, publicKey: {}}}]\n  maxAge: 30days\n  continuousVerification: {{interval: 1h, revokeSvidOnFailure: true}}\n  notify: {{owners: payments-oncall}}\n",
        pem("ci-a.key.pub"),
        pem("ci-b.key.pub"),
        pem("review.key.pub")
    )
}

#[test]
fn sign_verify_push_admit_break_glass_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Keys.
    for k in ["ci-a.key", "ci-b.key", "review.key"] {
        let public = ok(d, &["attest", "keygen", "--out", k]);
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
    }
    let mode = std::fs::metadata(d.join("ci-a.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // An image and its job manifest.
    let layer = oci::tar(&[("bin/web", 0o755, b"#!/bin/sh\nexec true\n")]);
    let digest = oci::write_layout(
        &d.join("web-oci"),
        &json!({"os": "linux", "architecture": "amd64"}),
        &[layer],
        "web:1.0",
    )
    .unwrap();
    let job = format!(
        "apiVersion: ringfence.dev/v1\nkind: Job\nmetadata: {{name: web-1, namespace: payments}}\nspec:\n  service: web\n  image: registry.acme.test/payments/web@{digest}\n  args: [--port=8080]\n  replicas: 2\n"
    );
    write(d, "job.yaml", &job);
    let job_digest = ringfence_provenance::statement::Sha256::of(job.as_bytes());

    // Provenance signed by both builder keys; the review of the commit and the job manifest.
    write(d, "prov.json", &json!({
        "buildDefinition": {"buildType": "https://ringfence.dev/build/v1",
            "externalParameters": {"source": {"repository": "https://git.acme.test/payments/web", "ref": "refs/heads/main", "commit": COMMIT}}},
        "runDetails": {"builder": {"id": "https://builder.acme.test/v1"}, "metadata": {"finishedOn": ringfence_provenance::slsa::format_time(ringfence_core::Clock::now(&ringfence_core::SystemClock))}}
    }).to_string());
    let subject = format!("web={digest}");
    ok(
        d,
        &[
            "attest",
            "sign",
            "--key",
            "ci-a.key",
            "--key",
            "ci-b.key",
            "--predicate-type",
            "https://slsa.dev/provenance/v1",
            "--predicate",
            "prov.json",
            "--subject",
            &subject,
            "--out",
            "provenance.dsse.json",
        ],
    );
    let now = ringfence_provenance::slsa::format_time(ringfence_core::Clock::now(
        &ringfence_core::SystemClock,
    ));
    write(d, "review.json", &json!({"repository": "https://git.acme.test/payments/web", "ref": "refs/heads/main", "commit": COMMIT, "author": "alice",
        "reviewers": [{"name": "bob", "timestamp": now}], "mergedOn": now}).to_string());
    ok(
        d,
        &[
            "attest",
            "sign",
            "--key",
            "review.key",
            "--predicate-type",
            "https://ringfence.dev/attestation/code-review/v1",
            "--predicate",
            "review.json",
            "--subject",
            &format!("source=gitCommit:{COMMIT}"),
            "--subject",
            &format!("job.yaml={job_digest}"),
            "--out",
            "review.dsse.json",
        ],
    );
    write(d, "policy.yaml", &policy(d, "enforce", 1));

    // attest verify: admit (exit 0)...
    let out = exits(
        d,
        0,
        &[
            "attest",
            "verify",
            "--policy",
            "policy.yaml",
            "--image",
            "web-oci",
            "--repository",
            "registry.acme.test/payments/web",
            "--job",
            "job.yaml",
            "--attestation",
            "provenance.dsse.json",
            "--attestation",
            "review.dsse.json",
        ],
    );
    assert!(out.starts_with(&format!("ADMIT registry.acme.test/payments/web@{digest} as payments/web in production (compliant")), "{out}");
    // ...deny (exit 1) with the reasons, here without the review...
    let out = exits(
        d,
        1,
        &[
            "attest",
            "verify",
            "--policy",
            "policy.yaml",
            "--image",
            "web-oci",
            "--repository",
            "registry.acme.test/payments/web",
            "--job",
            "job.yaml",
            "--attestation",
            "provenance.dsse.json",
        ],
    );
    assert!(
        out.contains("DENY") && out.contains("[review] no code review"),
        "{out}"
    );
    // ...and with an unreviewed job configuration.
    write(
        d,
        "job-debug.yaml",
        &job.replace("--port=8080", "--port=8080 --debug"),
    );
    let out = exits(
        d,
        1,
        &[
            "attest",
            "verify",
            "--policy",
            "policy.yaml",
            "--image",
            "web-oci",
            "--repository",
            "registry.acme.test/payments/web",
            "--job",
            "job-debug.yaml",
            "--attestation",
            "provenance.dsse.json",
            "--attestation",
            "review.dsse.json",
            "--output",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(
        out.split_once("\n}")
            .map(|(a, _)| format!("{a}\n}}"))
            .unwrap()
            .as_str(),
    )
    .unwrap();
    assert_eq!(v["findings"][0]["requirement"], "config-reviewed");
    // An oversized envelope or a policy with an unknown field is refused with the reason.
    write(
        d,
        "big.json",
        &format!("{{\"payload\": \"{}\"}}", "A".repeat(5 * 1024 * 1024)),
    );
    let out = exits(
        d,
        1,
        &[
            "attest",
            "verify",
            "--policy",
            "policy.yaml",
            "--image",
            &digest.to_string(),
            "--attestation",
            "big.json",
        ],
    );
    assert!(
        out.contains("attestation big.json refused")
            && out.contains("at most 4194304 are accepted"),
        "{out}"
    );
    write(
        d,
        "bad-policy.yaml",
        &policy(d, "enforce", 1).replace("  maxAge:", "  maxAg:"),
    );
    let out = exits(
        d,
        1,
        &[
            "attest",
            "verify",
            "--policy",
            "bad-policy.yaml",
            "--image",
            &digest.to_string(),
        ],
    );
    assert!(out.contains("unknown field `maxAg`"), "{out}");

    // The artifact store keeps the image and its attestations.
    let pushed = ok(
        d,
        &[
            "artifact",
            "push",
            "web-oci",
            "--attestation",
            "provenance.dsse.json",
            "--attestation",
            "review.dsse.json",
        ],
    );
    assert_eq!(pushed.trim(), digest.to_string());
    assert!(ok(d, &["artifact", "list"]).contains(&digest.to_string()));
    let inspect = ok(d, &["artifact", "inspect", &digest.to_string()]);
    assert!(
        inspect.contains("https://slsa.dev/provenance/v1")
            && inspect.contains("provenance.dsse.json"),
        "{inspect}"
    );
    exits(
        d,
        4,
        &["artifact", "inspect", &format!("sha256:{}", "0".repeat(64))],
    );
    // An attestation for another image is refused at push.
    let other = oci::write_layout(
        &d.join("other-oci"),
        &json!({"os": "linux"}),
        &[oci::tar(&[("x", 0o644, b"x")])],
        "other",
    )
    .unwrap();
    assert_ne!(other, digest);
    let out = exits(
        d,
        1,
        &[
            "artifact",
            "push",
            "other-oci",
            "--attestation",
            "provenance.dsse.json",
        ],
    );
    assert!(
        out.contains(&format!("does not name image {other}")),
        "{out}"
    );

    // Admission against the Store, with the audit log and a webhook for the security team.
    let (url, got) = receiver();
    write(
        d,
        "ringfence.toml",
        &format!(
            "[notify]\nowners_delay = \"1h\"\n[notify.sinks.security]\nkind = \"webhook\"\nurl = \"{url}\"\n[notify.sinks.payments-oncall]\nkind = \"file\"\npath = \"{}\"\n",
            d.join("oncall.jsonl").display()
        ),
    );
    let c = ["--config", "ringfence.toml"];
    let with =
        |args: &[&str]| -> Vec<String> { c.iter().chain(args).map(|s| s.to_string()).collect() };
    let run_ok = |args: &[&str]| {
        ok(
            d,
            &with(args).iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let run_exits = |code: i32, args: &[&str]| {
        exits(
            d,
            code,
            &with(args).iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let out = run_exits(1, &["bab", "policy", "list"]);
    assert!(out.contains("run `ringfence audit init` first"), "{out}");
    run_ok(&["audit", "init", "--origin", "acme.test/audit"]);
    run_ok(&["bab", "policy", "apply", "policy.yaml"]);
    // Compliant: attestations come from the artifact store.
    let out = run_exits(0, &["bab", "admit", "--job", "job.yaml"]);
    assert!(
        out.starts_with("ADMITTED payments/web/web-1 (compliant; policy web-prod)"),
        "{out}"
    );
    // An unsigned image: denied, and the user sees why.
    let unsigned = job
        .replace(&digest.to_string(), &other.to_string())
        .replace("web-1", "web-2");
    write(d, "unsigned.yaml", &unsigned);
    let out = run_exits(1, &["bab", "admit", "--job", "unsigned.yaml"]);
    assert!(
        out.contains("DENIED payments/web/web-2")
            && out.contains("[provenance] no SLSA provenance"),
        "{out}"
    );
    // Break-glass: admitted, audited, the security team told at once.
    let out = run_exits(
        0,
        &[
            "bab",
            "admit",
            "--job",
            "unsigned.yaml",
            "--break-glass",
            "INC-9: checkout down, emergency fix",
        ],
    );
    assert!(
        out.contains("ADMITTED payments/web/web-2 (break-glass")
            && out.contains("the security team is notified"),
        "{out}"
    );
    let hooks = got.lock().unwrap().clone();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert!(
        hooks[0].contains("X-Ringfence-Event: bab.break-glass")
            && hooks[0].contains("INC-9: checkout down"),
        "{}",
        hooks[0]
    );
    let q = run_ok(&[
        "audit",
        "query",
        "--action",
        "bab.admit",
        "--decision",
        "break_glass",
    ]);
    assert!(q.contains("INC-9"), "{q}");
    // The owners' message waits for its delay.
    let pending = run_ok(&["bab", "outbox"]);
    assert!(
        pending.contains("payments-oncall") && pending.contains("bab.break-glass"),
        "{pending}"
    );

    // Tightening the policy flags the compliant job; the report shows everything.
    write(d, "policy2.yaml", &policy(d, "enforce", 2));
    let out = run_ok(&["bab", "policy", "apply", "policy2.yaml"]);
    assert!(
        out.contains("replaced policy web-prod")
            && out.contains("flagged: web-1")
            && out.contains(
                "[reviewers] review.dsse.json: 1 approval(s) by someone other than the author"
            ),
        "{out}"
    );
    let report = run_ok(&["bab", "report"]);
    assert!(
        report.contains("payments   web      production  web-prod  enforce  2     0   2     1"),
        "{report}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&run_ok(&["bab", "report", "--output", "json"])).unwrap();
    assert_eq!(
        json["services"][0]["svidRevoked"], 1,
        "the break-glass job keeps its SVID; web-1 loses renewal"
    );
    let out = run_ok(&["bab", "reverify"]);
    assert!(
        out.contains("2 running job(s) re-verified, 2 flagged")
            && out.contains("SVID renewal withheld"),
        "{out}"
    );
    assert!(
        std::fs::read_to_string(d.join("oncall.jsonl"))
            .unwrap()
            .contains("bab.flagged")
    );
}

#[test]
fn sigstore_bundles_verify_offline_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../provenance/tests/testdata/sigstore"
    );
    let bundle = format!("{data}/managed-key-bundle.sigstore.json");
    let artifact = format!("{data}/managed-key-artifact.txt");
    let key = format!("{data}/managed-key-key.pub");
    let out = exits(
        d,
        0,
        &[
            "attest",
            "verify-bundle",
            "--bundle",
            &bundle,
            "--artifact",
            &artifact,
            "--key",
            &key,
        ],
    );
    assert!(
        out.starts_with("VERIFIED") && out.contains("signed by key:") && out.contains("logged 20"),
        "{out}"
    );
    write(d, "other.txt", "not the artifact");
    let out = exits(
        d,
        1,
        &[
            "attest",
            "verify-bundle",
            "--bundle",
            &bundle,
            "--artifact",
            "other.txt",
            "--key",
            &key,
        ],
    );
    assert!(out.starts_with("REFUSED"), "{out}");
    let dsse = format!("{data}/bundles-dsse.sigstore.json");
    let digest = "sha512:bbfd372fc9beeb777fe35d05bb10c0c70a9733d366a75fed7dd18866c7391de3ee7e88ba74dd47abf3e15c845e547fcf0e5c3da80854c751554224d3a6d4e55f";
    let out = exits(
        d,
        0,
        &[
            "attest",
            "verify-bundle",
            "--bundle",
            &dsse,
            "--digest",
            digest,
            "--identity",
            "brian@dehamer.com",
            "--issuer",
            "https://github.com/login/oauth",
        ],
    );
    assert!(
        out.contains("DSSE payload type application/vnd.in-toto+json"),
        "{out}"
    );
    let out = exits(
        d,
        1,
        &[
            "attest",
            "verify-bundle",
            "--bundle",
            &dsse,
            "--digest",
            digest,
            "--identity",
            "eve@example.test",
            "--issuer",
            "https://github.com/login/oauth",
        ],
    );
    assert!(out.contains("identity mismatch"), "{out}");
}

#[test]
fn up_admits_the_demo_application_and_resumes_the_same_state() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let first = ok(d, &["up", "--once"]);
    for want in [
        "[1/7] store and audit log",
        "LOCAL DEMO KEYS",
        "prod-1   production pool",
        "found-1  foundational pool",
        "web     admitted (compliant), placed on prod-",
        "worker  admitted (dry-run), placed on prod-",
        "docs    admitted (allow-all), placed on prod-",
        "every task runs with its SVID",
        "stopped the agents and their tasks (--once)",
        "would break if enforced",
        "[config-reviewed]",
        "Try next",
    ] {
        assert!(first.contains(want), "missing {want:?} in:\n{first}");
    }
    let digests = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.contains("sha256:") && l.starts_with("      ") && !l.contains('['))
            .map(str::to_owned)
            .collect()
    };
    // Again: the same images (by digest), the same policies, no duplicate running jobs.
    let second = ok(d, &["up", "--once"]);
    assert!(!second.contains("created the audit log key"));
    assert!(!second.contains("created the CA"));
    assert!(
        second.contains("web     already admitted and placed (placed)"),
        "{second}"
    );
    assert!(second.contains("every task runs with its SVID"), "{second}");
    // Each task ran in its sandbox and found its own Workload API socket there.
    for svc in ["web", "worker", "docs"] {
        let log = ok(d, &["job", "logs", &format!("demo/{svc}-1")]);
        assert!(
            log.contains("its Workload API: unix:///run/spiffe/workload.sock"),
            "{svc}: {log}"
        );
    }
    assert_eq!(digests(&first), digests(&second));
    let report: serde_json::Value =
        serde_json::from_str(&ok(d, &["bab", "report", "--output", "json"])).unwrap();
    let jobs: u64 = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["jobs"].as_u64().unwrap())
        .sum();
    assert_eq!(jobs, 3);
    // The audit log holds every verdict and verifies.
    let tail = ok(d, &["audit", "tail", "-n", "100"]);
    for want in [
        "bab.admit",
        "would_deny",
        "job.place demo.web.web-1.0 placed on prod-",
        "identity.issue spiffe://ringfence.local/ns/demo/svc/web issued",
    ] {
        assert!(tail.contains(want), "missing {want:?} in:\n{tail}");
    }
    ok(d, &["audit", "verify"]);
    // The suggested break-glass works, and the security team's file sink hears of it.
    let out = exits(
        d,
        0,
        &[
            "bab",
            "admit",
            "--job",
            ".ringfence/demo/jobs/worker.yaml",
            "--break-glass",
            "INC-1: demo outage drill",
        ],
    );
    assert!(out.contains("break-glass"), "{out}");
    let sec = std::fs::read_to_string(d.join(".ringfence/notifications/security.jsonl")).unwrap();
    assert!(sec.contains("INC-1: demo outage drill"), "{sec}");
}

#[test]
fn up_runs_until_ctrl_c_and_stops_cleanly() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .current_dir(tmp.path())
        .arg("up")
        .env_remove("RINGFENCE_CONFIG")
        .env_remove("RINGFENCE_STORE")
        .env_remove("RINGFENCE_DATA_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut running = false;
    while std::time::Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("Running: continuous verification") => {
                running = true;
                break;
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    assert!(running, "ringfence up did not reach its running state");
    // Ctrl-C, sent to this child by its PID.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("stopped; run `ringfence up` again to resume")),
        "{rest:?}"
    );
}

#[test]
fn job_commands_show_submit_refuse_and_stop_the_demo_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["up", "--once"]);
    let list = ok(d, &["job", "list"]);
    for want in [
        "demo/web-1",
        "demo/worker-1",
        "demo/docs-1",
        "compliant",
        "dry-run",
        "allow-all",
    ] {
        assert!(list.contains(want), "missing {want:?} in:\n{list}");
    }
    let status = ok(d, &["job", "status", "demo/web-1"]);
    assert!(status.contains("service   demo/web"), "{status}");
    assert!(status.contains("demo.web.web-1.0"), "{status}");
    let logs = ok(d, &["job", "logs", "demo/web-1"]);
    assert!(logs.contains("web (Ringfence demo) started"), "{logs}");

    // An unsigned job: refused with the reason, exit 1, nothing placed.
    let web = std::fs::read_to_string(d.join(".ringfence/demo/jobs/web.yaml")).unwrap();
    let rogue = web
        .replace("name: web-1", "name: rogue-1")
        .replace("--port=8080", "--port=9090");
    write(d, "rogue.yaml", &rogue);
    let out = exits(
        d,
        1,
        &[
            "job",
            "submit",
            "rogue.yaml",
            "--attestation",
            ".ringfence/demo/web.provenance.dsse.json",
            "--attestation",
            ".ringfence/demo/web.review.dsse.json",
        ],
    );
    assert!(
        out.contains("REFUSED demo/rogue-1\n  Binary Authorization: denied"),
        "{out}"
    );
    assert!(out.contains("[config-reviewed]"), "{out}");
    assert!(!ok(d, &["job", "list"]).contains("rogue-1"));

    // Malformed names and unknown jobs are refused with the reason.
    let out = exits(d, 1, &["job", "status", "web-1"]);
    assert!(out.contains("expected namespace/name"), "{out}");
    let out = exits(d, 4, &["job", "status", "demo/nothing"]);
    assert!(out.contains("no job demo/nothing"), "{out}");

    let out = ok(d, &["job", "stop", "demo/docs-1"]);
    assert!(out.contains("stopped demo/docs-1"), "{out}");
    let status = ok(d, &["job", "status", "demo/docs-1"]);
    assert!(status.contains("state     stopped"), "{status}");
    let tail = ok(d, &["audit", "tail", "-n", "5"]);
    assert!(tail.contains("job.stop demo/docs-1"), "{tail}");
}
