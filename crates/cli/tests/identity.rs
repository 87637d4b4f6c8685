//! `ringfence identity` end to end: a CA is created, a Workload API socket is served by the
//! real binary, py-spiffe fetches an X.509-SVID and a JWT-SVID from it, and `identity
//! inspect` recognizes the SVID as issued by this CA.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const ID: &str = "spiffe://example.org/ns/prod/svc/web";

fn rf(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .current_dir(dir)
        .args(args)
        .env_remove("RINGFENCE_DATA_DIR")
        .output()
        .unwrap()
}

#[test]
fn a_workload_gets_x509_and_jwt_svids_from_the_cli_served_socket() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let init = rf(
        d,
        &["identity", "ca", "init", "--trust-domain", "example.org"],
    );
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(String::from_utf8_lossy(&init.stdout).starts_with("-----BEGIN CERTIFICATE-----"));
    for key in ["ca.key", "jwt.key"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(d.join(".ringfence/identity").join(key))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let again = rf(
        d,
        &["identity", "ca", "init", "--trust-domain", "example.org"],
    );
    assert!(!again.status.success());

    // The socket records every issuance in the audit log, so the log must exist.
    let o = rf(d, &["audit", "init", "--origin", "example.org/audit"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let socket = d.join("workload.sock");
    let mut server = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .current_dir(d)
        .args([
            "identity",
            "workload-api",
            "--socket",
            socket.to_str().unwrap(),
            "--spiffe-id",
            ID,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let script = format!(
        r#"
from spiffe import WorkloadApiClient
from cryptography.hazmat.primitives.serialization import Encoding
c = WorkloadApiClient(socket_path="unix://{socket}")
svid = c.fetch_x509_svid()
open("svid.pem", "wb").write(svid.leaf.public_bytes(Encoding.PEM))
jwt = c.fetch_jwt_svid(audience={{"db"}})
print(svid.spiffe_id, jwt.spiffe_id, c.validate_jwt_svid(jwt.token, "db").spiffe_id)
"#,
        socket = socket.display()
    );
    let out = Command::new("python3")
        .current_dir(d)
        .args(["-c", &script])
        .output()
        .unwrap();
    server.kill().unwrap(); // by PID
    server.wait().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{ID} {ID} {ID}")
    );

    // The issuance is in the audit log (the server is gone, so the store is free).
    let q = rf(
        d,
        &[
            "audit",
            "query",
            "--action",
            "identity.issue",
            "--decision",
            "allow",
        ],
    );
    let text = String::from_utf8_lossy(&q.stdout);
    assert!(
        text.contains(&format!(
            "allow spiffe://example.org/ringfence/ca identity.issue {ID} issued"
        )),
        "{text}"
    );
    let verify = rf(d, &["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let inspect = rf(d, &["identity", "inspect", "svid.pem"]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains(&format!("spiffe id:  {ID}")), "{text}");
    assert!(
        text.contains("chain:      valid, issued by this CA"),
        "{text}"
    );
    let bundle = rf(d, &["identity", "ca", "bundle"]);
    std::fs::write(d.join("bundle.pem"), &bundle.stdout).unwrap();
    let verify = Command::new("openssl")
        .current_dir(d)
        .args(["verify", "-CAfile", "bundle.pem", "svid.pem"])
        .output()
        .unwrap();
    assert!(verify.status.success());
}

#[test]
fn the_workload_api_refuses_to_start_without_an_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(
        rf(
            d,
            &["identity", "ca", "init", "--trust-domain", "example.org"]
        )
        .status
        .success()
    );
    let o = rf(
        d,
        &[
            "identity",
            "workload-api",
            "--socket",
            "s.sock",
            "--spiffe-id",
            ID,
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("records every issuance in the audit log")
            && err.contains("ringfence audit init"),
        "{err}"
    );
}

#[test]
fn a_ca_key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(
        rf(
            d,
            &["identity", "ca", "init", "--trust-domain", "example.org"]
        )
        .status
        .success()
    );
    let key = d.join(".ringfence/identity/ca.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = rf(d, &["identity", "ca", "bundle"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readable by other users"), "{err}");
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn certs_in(pem: &[u8]) -> usize {
    String::from_utf8_lossy(pem)
        .matches("BEGIN CERTIFICATE")
        .count()
}

#[test]
fn issue_and_rotate_the_ca_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(
        rf(
            d,
            &["identity", "ca", "init", "--trust-domain", "example.org"]
        )
        .status
        .success()
    );
    assert!(
        rf(d, &["audit", "init", "--origin", "example.org/audit"])
            .status
            .success()
    );
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "key.pem",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "key.pem",
            "-subj",
            "/CN=web",
            "-addext",
            &format!("subjectAltName=URI:{ID}"),
            "-out",
            "csr.pem",
        ],
    );

    let issued = rf(
        d,
        &["identity", "issue", "--csr", "csr.pem", "--spiffe-id", ID],
    );
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    std::fs::write(d.join("old-svid.pem"), &issued.stdout).unwrap();

    // Under an authorization for another identity, the same CSR is refused (and audited).
    let refused = rf(
        d,
        &[
            "identity",
            "issue",
            "--csr",
            "csr.pem",
            "--spiffe-id",
            "spiffe://example.org/ns/prod/svc/db",
        ],
    );
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains(&format!(
            "the CSR asks for {ID} but the authorization is for spiffe://example.org/ns/prod/svc/db"
        )),
        "{err}"
    );
    let denials = rf(
        d,
        &[
            "audit",
            "query",
            "--action",
            "identity.issue",
            "--decision",
            "deny",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&denials.stdout).lines().count(), 1);

    // Rotation: activate before prepare is refused; prepare adds the next CA to the bundle.
    let early = rf(d, &["identity", "ca", "rotate", "--activate"]);
    assert!(String::from_utf8_lossy(&early.stderr).contains("no next CA prepared"));
    assert_eq!(certs_in(&rf(d, &["identity", "ca", "bundle"]).stdout), 1);
    assert!(
        rf(d, &["identity", "ca", "rotate", "--prepare"])
            .status
            .success()
    );
    assert_eq!(certs_in(&rf(d, &["identity", "ca", "bundle"]).stdout), 2);
    assert!(
        rf(d, &["identity", "ca", "rotate", "--activate"])
            .status
            .success()
    );
    let bundle = rf(d, &["identity", "ca", "bundle"]).stdout;
    assert_eq!(
        certs_in(&bundle),
        2,
        "the old CA stays while its SVIDs live"
    );
    std::fs::write(d.join("bundle.pem"), &bundle).unwrap();

    // Both the old SVID and one from the new CA verify against the bundle.
    let new = rf(
        d,
        &["identity", "issue", "--csr", "csr.pem", "--spiffe-id", ID],
    );
    std::fs::write(d.join("new-svid.pem"), &new.stdout).unwrap();
    openssl(d, &["verify", "-CAfile", "bundle.pem", "old-svid.pem"]);
    openssl(d, &["verify", "-CAfile", "bundle.pem", "new-svid.pem"]);
    let old_issuer = rf(d, &["identity", "inspect", "old-svid.pem"]);
    assert!(String::from_utf8_lossy(&old_issuer.stdout).contains("valid, issued by this CA"));
    assert!(rf(d, &["audit", "verify"]).status.success());
}

#[test]
fn a_ca_can_be_an_intermediate_under_an_upstream_root_made_by_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "root.key",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root.key",
            "-subj",
            "/CN=Upstream Root",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "root.pem",
        ],
    );
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "inter.key",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "inter.key",
            "-subj",
            "/CN=Ringfence intermediate",
            "-out",
            "inter.csr",
        ],
    );
    std::fs::write(d.join("ext.cnf"), "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectAltName=URI:spiffe://example.org\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "inter.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "inter.pem",
        ],
    );
    std::fs::set_permissions(
        d.join("inter.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();

    let init = rf(
        d,
        &[
            "identity",
            "ca",
            "init",
            "--trust-domain",
            "example.org",
            "--intermediate-cert",
            "inter.pem",
            "--intermediate-key",
            "inter.key",
            "--upstream-bundle",
            "root.pem",
        ],
    );
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&init.stdout),
        std::fs::read_to_string(d.join("root.pem")).unwrap(),
        "the bundle is the upstream root"
    );
    assert!(
        rf(d, &["audit", "init", "--origin", "example.org/audit"])
            .status
            .success()
    );
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "key.pem",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "key.pem",
            "-subj",
            "/CN=web",
            "-addext",
            &format!("subjectAltName=URI:{ID}"),
            "-out",
            "csr.pem",
        ],
    );
    let issued = rf(
        d,
        &["identity", "issue", "--csr", "csr.pem", "--spiffe-id", ID],
    );
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    std::fs::write(d.join("svid.pem"), &issued.stdout).unwrap();
    openssl(
        d,
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "inter.pem",
            "svid.pem",
        ],
    );

    // Rotation of an intermediate is the upstream's job: refused with what to do.
    let rotate = rf(d, &["identity", "ca", "rotate", "--prepare"]);
    assert!(String::from_utf8_lossy(&rotate.stderr).contains("installing a new intermediate"));
}
