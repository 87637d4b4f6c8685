//! The Workload API socket serves its workload's uid only, even when the socket file's mode
//! would let anyone connect: each connection's peer uid (`SO_PEERCRED`) is checked. The client
//! is this test binary itself, copied where other uids can run it and started under another
//! uid with `setpriv`; it fetches with the Rust `spiffe` client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ringfence_audit::MemorySink;
use ringfence_core::{MachineId, SpiffeId, SystemClock, TrustDomain, UnixTime};
use ringfence_identity::workload_api::{WorkloadApi, run_rotator};
use ringfence_identity::{Ca, CaSet, IssuanceAuthority, IssuanceAuthorization, IssuanceService};

const ID: &str = "spiffe://example.org/ns/prod/svc/web";
const OWNER: u32 = 54_321;

struct Placed;

impl IssuanceAuthority for Placed {
    fn authorize(
        &self,
        machine: &MachineId,
        id: &SpiffeId,
    ) -> Result<IssuanceAuthorization, String> {
        Ok(IssuanceAuthorization {
            spiffe_id: id.clone(),
            machine: machine.clone(),
            not_after: UnixTime::from_millis(u64::MAX),
        })
    }
}

/// Run by the test below as another uid: fetch an SVID from `$RF_SOCKET`, print the result.
#[tokio::test]
#[ignore = "a helper the peer-uid test runs as another uid"]
async fn helper_fetch() {
    let socket = std::env::var("RF_SOCKET").unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{socket}"))
            .await
            .map_err(|e| e.to_string())?;
        client
            .fetch_x509_svid()
            .await
            .map(|s| s.spiffe_id().to_string())
            .map_err(|e| e.to_string())
    })
    .await;
    match r {
        Ok(Ok(id)) => println!("FETCHED {id}"),
        Ok(Err(e)) => println!("REFUSED {e}"),
        Err(_) => println!("REFUSED timeout"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_workloads_uid_is_served_whatever_the_socket_mode() {
    assert!(
        is_root(),
        "this test switches uids with setpriv: it needs root"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("workload.sock");
    let td = TrustDomain::parse("example.org").unwrap();
    let ca = Ca::generate(
        td,
        ringfence_core::Clock::now(&SystemClock),
        Duration::from_secs(86_400),
    )
    .unwrap();
    let service = Arc::new(
        IssuanceService::new(
            Arc::new(CaSet::new(ca)),
            Arc::new(Placed),
            Arc::new(MemorySink::default()),
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(run_rotator(
        service,
        MachineId::parse("node-1").unwrap(),
        SpiffeId::parse(ID).unwrap(),
        Arc::new(SystemClock),
        tx,
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let path = socket.clone();
    tokio::spawn(async move {
        WorkloadApi::new(rx)
            .with_socket_owner(OWNER)
            .serve(&path, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // As if the file mode had been got around: anyone may connect() now.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let helper = dir.path().join("helper");
    std::fs::copy(std::env::current_exe().unwrap(), &helper).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (h, s) = (helper.clone(), socket.clone());
    let out = tokio::task::spawn_blocking(move || fetch_as(&h, &s, OWNER + 1))
        .await
        .unwrap();
    assert!(out.contains("REFUSED"), "another uid was served: {out}");
    let out = tokio::task::spawn_blocking(move || fetch_as(&helper, &socket, OWNER))
        .await
        .unwrap();
    assert!(out.contains(&format!("FETCHED {ID}")), "{out}");
    let _ = stop.send(());
}

/// Runs the helper as `uid`; its output.
fn fetch_as(helper: &std::path::Path, socket: &std::path::Path, uid: u32) -> String {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .arg(helper)
        .args(["--exact", "helper_fetch", "--ignored", "--nocapture"])
        .env("RF_SOCKET", socket)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn is_root() -> bool {
    // The effective uid, without unsafe: the owner of /proc/self.
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}
