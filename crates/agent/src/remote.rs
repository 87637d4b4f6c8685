//! The agent's side of the control-plane API over the network: a machine SVID obtained once
//! with a one-time join token (kept in the agent's state directory and renewed at
//! half-life), then every call over mutual TLS with it, checking that the server is
//! `spiffe://<td>/ringfence/controlplane`. The connection is re-established on its own when
//! the control plane restarts; tasks keep running meanwhile.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rcgen::{CertificateParams, KeyPair, SanType};
use ringfence_api::pb;
use ringfence_api::pb::node_client::NodeClient;
use ringfence_api::transport::{NodeAudit, control_plane_channel};
use ringfence_controlplane::server::from_pb;
use ringfence_controlplane::{Assignment, MachineRecord, Registration, TaskReport};
use ringfence_core::{Clock, MachineId, SpiffeId, TrustDomain, UnixTime};
use ringfence_identity::Svid;
use ringfence_identity::files;
use ringfence_identity::workload_api::{SvidSource, X509Material, run_rotator_from};
use ringfence_provenance::statement::Sha256;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::node::ControlPlaneApi;

/// The most an image may weigh when fetched.
pub const MAX_IMAGE_BYTES: u64 = 2 << 30;

/// How an agent reaches its control plane.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// The control plane's API address.
    pub server: SocketAddr,
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// This machine's id.
    pub machine: String,
    /// Where the machine SVID is kept (mode 0700).
    pub state_dir: PathBuf,
    /// The trust bundle to verify the control plane with before the first join (PEM).
    pub bundle: Option<PathBuf>,
    /// A one-time join token (needed when there is no valid machine SVID yet).
    pub join_token: Option<String>,
    /// The agent's audit spool (a redb file): events wait here until the control plane
    /// has them.
    pub spool: PathBuf,
}

/// The latest trust bundle the control plane sent, and a counter that moves when it changes.
#[derive(Debug)]
struct Bundle {
    der: Mutex<Vec<u8>>,
    generation: watch::Sender<u64>,
}

impl Bundle {
    fn update(&self, der: &[u8]) {
        if der.is_empty() {
            return;
        }
        let mut cur = self
            .der
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cur.as_slice() != der {
            *cur = der.to_vec();
            drop(cur);
            self.generation.send_modify(|g| *g += 1);
        }
    }
    fn get(&self) -> Vec<u8> {
        self.der
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The control plane across the network.
#[derive(Debug, Clone)]
pub struct Remote {
    node: NodeClient<Channel>,
    machine: MachineId,
    td: TrustDomain,
    bundle: Arc<Bundle>,
    material: watch::Receiver<Option<X509Material>>,
    spool: Arc<ringfence_audit::Spool>,
}

fn rpc(what: &str, s: tonic::Status) -> String {
    format!("control plane: {what}: {} ({:?})", s.message(), s.code())
}

fn client(
    server: SocketAddr,
    material: watch::Receiver<Option<X509Material>>,
    clock: Arc<dyn Clock>,
) -> Result<NodeClient<Channel>, String> {
    Ok(
        NodeClient::new(control_plane_channel(server, material, clock)?)
            .max_decoding_message_size(ringfence_api::MAX_MESSAGE)
            .max_encoding_message_size(ringfence_api::MAX_MESSAGE),
    )
}

/// A fresh key and a CSR for `id`.
fn csr_for(id: &SpiffeId) -> Result<(KeyPair, Vec<u8>), String> {
    let e = |e: rcgen::Error| format!("cannot make a CSR: {e}");
    let key = KeyPair::generate().map_err(e)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    params.subject_alt_names = vec![SanType::URI(id.as_str().try_into().map_err(e)?)];
    let csr = params.serialize_request(&key).map_err(e)?;
    Ok((key, csr.der().to_vec()))
}

fn svid_of(reply: pb::SvidReply) -> Result<Svid, String> {
    Ok(Svid {
        spiffe_id: SpiffeId::parse(&reply.spiffe_id).map_err(|e| format!("SVID: {e}"))?,
        cert_der: reply.cert_der,
        intermediates: reply.intermediates,
        not_after: UnixTime::from_millis(reply.not_after_ms),
        serial: String::new(),
    })
}

impl Remote {
    /// Connects: loads the machine SVID from the state directory, or joins with the token
    /// when there is none (or it has expired); then keeps it renewed (and saved) at
    /// half-life. The returned handle is the renewal task.
    pub async fn connect(
        cfg: RemoteConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), String> {
        let machine = MachineId::parse(&cfg.machine)
            .map_err(|e| format!("machine {:?}: {e}", cfg.machine))?;
        let td = cfg.trust_domain.clone();
        let own = td
            .workload(&["machine", machine.as_str()])
            .map_err(|e| e.to_string())?;
        let now_ms = clock.now().as_millis();
        let kept = files::load(&cfg.state_dir).ok().filter(|m| {
            m.spiffe_id == own && files::not_after_ms(m).is_some_and(|t| t > now_ms + 5_000)
        });
        let material = match kept {
            Some(m) => m,
            None => join(&cfg, &td, &own, Arc::clone(&clock)).await?,
        };
        files::save(&cfg.state_dir, &material)
            .map_err(|e| format!("{}: {e}", cfg.state_dir.display()))?;
        let (gen_tx, _) = watch::channel(0);
        let bundle = Arc::new(Bundle {
            der: Mutex::new(material.bundle_der.clone()),
            generation: gen_tx,
        });
        let (tx, rx) = watch::channel(Some(material));
        let spool = Arc::new(
            ringfence_audit::Spool::open(&cfg.spool)
                .await
                .map_err(|e| format!("audit spool {}: {e}", cfg.spool.display()))?,
        );
        let remote = Self {
            node: client(cfg.server, rx.clone(), Arc::clone(&clock))?,
            machine,
            td,
            bundle,
            material: rx.clone(),
            spool,
        };
        // The machine SVID is renewed like a task's, and every new one is kept on disk.
        let renewer = RemoteSvids {
            remote: remote.clone(),
            machine: true,
        };
        let state_dir = cfg.state_dir.clone();
        let forwarder = remote.clone();
        let handle = tokio::spawn(async move {
            let mut saved = rx.clone();
            let save = tokio::spawn(async move {
                while saved.changed().await.is_ok() {
                    let m = saved.borrow_and_update().clone();
                    if let Some(m) = m
                        && let Err(e) = files::save(&state_dir, &m)
                    {
                        tracing::warn!(error = %e, "cannot keep the renewed machine SVID");
                    }
                }
            });
            // The spool drains to the control plane every second it can be reached.
            let fwd = tokio::spawn(async move {
                let sink = NodeAudit::new(forwarder.node.clone());
                loop {
                    match forwarder.spool.forward_to(&sink).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(events = n, "audit events forwarded"),
                        Err(e) => tracing::debug!(error = %e, "audit events stay spooled"),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            run_rotator_from(Arc::new(renewer), own, clock, tx).await;
            save.abort();
            fwd.abort();
        });
        Ok((remote, handle))
    }

    /// The machine SVID in use.
    pub fn machine_svid(&self) -> watch::Receiver<Option<X509Material>> {
        self.material.clone()
    }
}

async fn join(
    cfg: &RemoteConfig,
    td: &TrustDomain,
    own: &SpiffeId,
    clock: Arc<dyn Clock>,
) -> Result<X509Material, String> {
    let token = cfg.join_token.clone().ok_or_else(|| {
        format!(
            "no valid machine SVID in {} and no join token: ask an operator for one (`ringfence machine token {}`)",
            cfg.state_dir.display(),
            cfg.machine
        )
    })?;
    let bundle_path = cfg.bundle.as_ref().ok_or_else(|| {
        "joining needs the control plane's trust bundle (--bundle FILE, the server writes it to <data-dir>/identity/bundle.pem)".to_owned()
    })?;
    let bundle = files::read_bundle(bundle_path)?;
    // Nothing to present yet: only the bundle, to check the server with.
    let (_keep, rx) = watch::channel(Some(X509Material::bundle_only(own.clone(), bundle)));
    let mut node = client(cfg.server, rx, clock)?;
    let (key, csr) = csr_for(own)?;
    // A control plane that is not up yet is waited for; a refusal is final.
    let mut wait = Duration::from_millis(500);
    let reply = loop {
        match node
            .join(pb::JoinRequest {
                token: token.clone(),
                csr_der: csr.clone(),
            })
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tracing::warn!(error = %rpc("join", s), "retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(s) => return Err(rpc("join", s)),
        }
    };
    let bundle_der = reply.bundle_der.clone();
    let svid = svid_of(reply)?;
    if &svid.spiffe_id != own {
        return Err(format!(
            "control plane: join: issued {} instead of {own}",
            svid.spiffe_id
        ));
    }
    tracing::info!(machine = %cfg.machine, "joined the control plane");
    Ok(X509Material {
        spiffe_id: svid.spiffe_id,
        cert_der: svid.cert_der,
        intermediates: svid.intermediates,
        key_pkcs8_der: key.serialize_der(),
        bundle_der,
        trust_domain: td.clone(),
    })
}

/// SVIDs through the control plane: the machine's own (renewed with `RenewMachine`) or its
/// tasks' (`IssueSvid`, signed only for tasks placed on this machine).
struct RemoteSvids {
    remote: Remote,
    machine: bool,
}

#[async_trait]
impl SvidSource for RemoteSvids {
    fn trust_domain(&self) -> TrustDomain {
        self.remote.td.clone()
    }
    async fn issue(&self, csr_der: &[u8]) -> Result<Svid, String> {
        let req = pb::CsrRequest {
            csr_der: csr_der.to_vec(),
        };
        let mut node = self.remote.node.clone();
        let reply = if self.machine {
            node.renew_machine(req)
                .await
                .map_err(|s| rpc("renew the machine SVID", s))?
        } else {
            node.issue_svid(req)
                .await
                .map_err(|s| rpc("issue a task SVID", s))?
        }
        .into_inner();
        self.remote.bundle.update(&reply.bundle_der);
        svid_of(reply)
    }
    fn bundle_der(&self, _now: UnixTime) -> Vec<u8> {
        self.remote.bundle.get()
    }
    fn subscribe_bundle(&self) -> watch::Receiver<u64> {
        self.remote.bundle.generation.subscribe()
    }
}

/// Whether `path` is a file an OCI layout may hold: `oci-layout`, `index.json` or
/// `blobs/sha256/<64 lowercase hex>`.
pub fn layout_path_ok(path: &str) -> bool {
    match path {
        "oci-layout" | "index.json" => true,
        p => p.strip_prefix("blobs/sha256/").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }),
    }
}

async fn write_image(
    mut stream: tonic::Streaming<pb::ImageChunk>,
    dir: &Path,
) -> Result<(), String> {
    tokio::fs::create_dir_all(dir.join("blobs").join("sha256"))
        .await
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut done: std::collections::BTreeSet<String> = Default::default();
    let mut current: Option<(String, tokio::fs::File)> = None;
    let mut total: u64 = 0;
    while let Some(chunk) = stream.message().await.map_err(|s| rpc("fetch image", s))? {
        if !layout_path_ok(&chunk.path) {
            return Err(format!(
                "control plane: fetch image: refused file {:?} (not part of an OCI layout)",
                chunk.path
            ));
        }
        total += chunk.data.len() as u64;
        if total > MAX_IMAGE_BYTES {
            return Err(format!(
                "control plane: fetch image: larger than {MAX_IMAGE_BYTES} bytes"
            ));
        }
        if current.as_ref().map(|(p, _)| p) != Some(&chunk.path) {
            if let Some((p, mut f)) = current.take() {
                f.flush().await.map_err(|e| e.to_string())?;
                done.insert(p);
            }
            if done.contains(&chunk.path) {
                return Err(format!(
                    "control plane: fetch image: {} sent twice",
                    chunk.path
                ));
            }
            let path = dir.join(&chunk.path);
            let f = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            current = Some((chunk.path.clone(), f));
        }
        if let Some((_, f)) = current.as_mut() {
            f.write_all(&chunk.data).await.map_err(|e| e.to_string())?;
        }
    }
    if let Some((_, mut f)) = current.take() {
        f.flush().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[async_trait]
impl ControlPlaneApi for Remote {
    async fn register(&self, reg: &Registration) -> Result<MachineRecord, String> {
        if reg.machine != self.machine.as_str() {
            return Err(format!(
                "this agent's machine SVID is for {}, not {}",
                self.machine.as_str(),
                reg.machine
            ));
        }
        let reply = self
            .node
            .clone()
            .register(pb::RegisterRequest {
                capacity: Some(pb::Resources {
                    cpu_milli: reg.capacity.cpu_milli,
                    memory_mib: reg.capacity.memory_mib,
                }),
                address: reg.address.clone(),
            })
            .await
            .map_err(|s| rpc("register", s))?
            .into_inner();
        fn parse<T: serde::de::DeserializeOwned>(what: &str, v: &str) -> Result<T, String> {
            serde_json::from_value(serde_json::Value::String(v.to_owned()))
                .map_err(|e| format!("control plane: register: {what} {v:?}: {e}"))
        }
        let now = UnixTime::from_millis(0);
        Ok(MachineRecord {
            id: reg.machine.clone(),
            pool: parse("pool", &reply.pool)?,
            trust: parse("trust", &reply.trust)?,
            capacity: reg.capacity,
            address: reg.address.clone(),
            registered_at: now,
            last_seen: now,
        })
    }

    async fn assignments(&self, machine: &str) -> Result<Vec<Assignment>, String> {
        if machine != self.machine.as_str() {
            return Err(format!(
                "this agent is {}, not {machine}",
                self.machine.as_str()
            ));
        }
        let reply = self
            .node
            .clone()
            .assignments(pb::AssignmentsRequest {})
            .await
            .map_err(|s| rpc("assignments", s))?
            .into_inner();
        self.bundle.update(&reply.bundle_der);
        reply.assignments.into_iter().map(from_pb).collect()
    }

    async fn report(&self, machine: &str, reports: &[TaskReport]) -> Result<(), String> {
        if machine != self.machine.as_str() {
            return Err(format!(
                "this agent is {}, not {machine}",
                self.machine.as_str()
            ));
        }
        self.node
            .clone()
            .report(pb::ReportRequest {
                reports: reports
                    .iter()
                    .map(|r| pb::TaskReport {
                        task: r.task.clone(),
                        state: r.state.clone(),
                        detail: r.detail.clone(),
                        restarts: r.restarts,
                        svid: r.svid,
                    })
                    .collect(),
            })
            .await
            .map_err(|s| rpc("report", s))?;
        Ok(())
    }

    async fn fetch_image(&self, digest: &Sha256, dir: &Path) -> Result<(), String> {
        let stream = self
            .node
            .clone()
            .fetch_image(pb::FetchImageRequest {
                digest: digest.to_string(),
            })
            .await
            .map_err(|s| rpc("fetch image", s))?
            .into_inner();
        write_image(stream, dir).await
    }

    fn audit(&self) -> Arc<dyn ringfence_audit::AuditSink> {
        self.spool.clone()
    }

    fn trust_domain(&self) -> TrustDomain {
        self.td.clone()
    }

    fn svids(&self, _machine: &MachineId) -> Arc<dyn SvidSource> {
        Arc::new(RemoteSvids {
            remote: self.clone(),
            machine: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::layout_path_ok;

    #[test]
    fn only_layout_files_are_written() {
        assert!(layout_path_ok("index.json"));
        assert!(layout_path_ok("oci-layout"));
        assert!(layout_path_ok(&format!("blobs/sha256/{}", "a".repeat(64))));
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "blobs/sha256/../../x",
            "blobs/sha256/ABCDEF",
            &format!("blobs/sha256/{}", "A".repeat(64)),
            &format!("blobs/sha512/{}", "a".repeat(64)),
            &format!("blobs/sha256/{}/x", "a".repeat(64)),
            "",
            "index.json/",
        ] {
            assert!(!layout_path_ok(bad), "{bad:?} accepted");
        }
    }
}
