//! `ringfence server`: the control plane on the network. A gRPC API over mutual TLS 1.3 with
//! the control plane's own SVID (`spiffe://<td>/ringfence/controlplane`), and HTTP for
//! `/healthz` and Prometheus `/metrics`.
//!
//! Who calls is what the client certificate says, never a request field:
//! - `Node` answers agents holding a machine SVID (`/machine/<id>`), and always about that
//!   machine: its registration, its assignments, its reports, images of its own tasks, SVIDs
//!   of tasks placed on it. `Join` is the one call without a client certificate: it trades a
//!   one-time join token (made by an operator for one machine name) for the first machine
//!   SVID. A machine that joins over the network has no host attestation yet, so it registers
//!   in development mode and serves only development work.
//! - `Admin` answers people holding a user certificate (`/user/<name>`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use ringfence_admission::verdict::{Attestation, Request as AdmissionRequest};
use ringfence_api::pb;
use ringfence_api::pb::admin_server::{Admin, AdminServer};
use ringfence_api::pb::discovery_server::{Discovery, DiscoveryServer};
use ringfence_api::pb::node_server::{Node, NodeServer};
use ringfence_api::pb::people_server::{People as PeopleApiTrait, PeopleServer};
use ringfence_api::pb::tokens_server::{Tokens as TokensApiTrait, TokensServer};
use ringfence_api::transport::{OptionalClientAuth, Peer, incoming};
use ringfence_audit::{AuditSink, Decision, Event};
use ringfence_bab::artifacts::{ArtifactError, ArtifactStore};
use ringfence_core::{Clock, MachineId, SpiffeId, TrustDomain, UnixTime};
use ringfence_identity::tls::{PeerPolicy, SvidResolver, SvidVerifier, provider};
use ringfence_identity::workload_api::{LocalIssuer, X509Material, obtain_from, run_rotator_from};
use ringfence_identity::{CaSet, IssuanceService, ServiceError};
use ringfence_identity::{IssuanceAuthority, IssuanceAuthorization};
use ringfence_provenance::statement::Sha256;
use ringfence_sched::{Pool, Resources};
use ringfence_store::{Expect, Key, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::{Assignment, ControlPlane, CpError, HostTrust, Registration, TaskReport};

/// The most task reports one call may carry.
pub const MAX_REPORTS: usize = 1024;
/// The longest join token accepted.
const MAX_TOKEN: usize = 128;
/// A join token's default and longest validity.
const TOKEN_TTL: Duration = Duration::from_secs(600);
const TOKEN_TTL_MAX: Duration = Duration::from_secs(86_400);

/// Where the control plane's own SVID says it runs.
const SELF_MACHINE: &str = "controlplane";

/// What `ringfence server` needs besides the control plane itself.
pub struct ServerParts {
    /// The control plane.
    pub cp: ControlPlane,
    /// The Store it runs on (join tokens live there too).
    pub store: Arc<dyn Store>,
    /// The audit log.
    pub audit: Arc<dyn AuditSink>,
    /// The CA.
    pub ca: Arc<CaSet>,
    /// Where agents fetch admitted images from.
    pub artifacts: ArtifactStore,
    /// Scratch space for image exports.
    pub scratch: PathBuf,
    /// The organisation's people and their enrolled keys (TOML, read at every login; see
    /// [`People`]). `None`: nobody can log in.
    pub people: Option<PathBuf>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The transaction-token service key.
    pub tokens: Arc<ringfence_identity::txn::TokenService>,
}

impl std::fmt::Debug for ServerParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerParts").finish_non_exhaustive()
    }
}

struct State {
    parts: ServerParts,
    td: TrustDomain,
    tasks: Arc<IssuanceService>,
    metrics: Metrics,
    /// Mesh events recorded per proxy identity in the current window: (window start, count).
    mesh_budget: Mutex<BTreeMap<String, (std::time::Instant, usize)>>,
}

/// Mesh events one service identity may offer per [`MESH_AUDIT_WINDOW`], refused ones
/// included; past it, calls are refused (the proxy keeps them spooled and sends them later).
pub const MESH_AUDIT_PER_WINDOW: usize = 5_000;
/// The window of [`MESH_AUDIT_PER_WINDOW`].
pub const MESH_AUDIT_WINDOW: Duration = Duration::from_secs(10);
/// The largest encoded mesh event taken.
pub const MAX_MESH_EVENT: usize = 16 * 1024;

/// Counts of API calls by method and status code.
#[derive(Default)]
struct Metrics {
    calls: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    fn observe<T>(&self, method: &'static str, r: &Result<T, Status>) {
        let code = match r {
            Ok(_) => "OK",
            Err(s) => code_name(s.code()),
        };
        *self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((method, code))
            .or_default() += 1;
    }
}

fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match c {
        C::Ok => "OK",
        C::InvalidArgument => "InvalidArgument",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::Unauthenticated => "Unauthenticated",
        C::FailedPrecondition => "FailedPrecondition",
        C::Unavailable => "Unavailable",
        C::Internal => "Internal",
        _ => "Other",
    }
}

fn status(e: CpError) -> Status {
    match e {
        CpError::Invalid(m) => Status::invalid_argument(m),
        CpError::NotFound(m) => Status::not_found(m),
        e @ (CpError::AuditUnavailable(_) | CpError::Store(_)) => {
            Status::unavailable(e.to_string())
        }
        e => Status::internal(e.to_string()),
    }
}

/// One identity for one machine, exactly: the authorization behind a machine SVID (at join
/// or renewal) and the control plane's own.
struct Exactly(IssuanceAuthorization);

impl IssuanceAuthority for Exactly {
    fn authorize(
        &self,
        machine: &MachineId,
        spiffe_id: &SpiffeId,
    ) -> Result<IssuanceAuthorization, String> {
        if machine == &self.0.machine && spiffe_id == &self.0.spiffe_id {
            Ok(self.0.clone())
        } else {
            Err(format!(
                "only {} may be issued here, for machine {}",
                self.0.spiffe_id,
                self.0.machine.as_str()
            ))
        }
    }
}

/// A join token as stored (under the hash of the token; the token itself is shown once).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinToken {
    machine: String,
    expires_at: UnixTime,
    by: String,
}

/// A machine that joined (its SVID may be renewed while this exists).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Joined {
    joined_at: UnixTime,
}

fn key(segments: &[&str]) -> Result<Key, Status> {
    Key::from_segments(segments.iter().copied())
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

impl State {
    fn issuer_for(&self, machine: &MachineId, id: &SpiffeId) -> Result<IssuanceService, Status> {
        exact_issuer(
            &self.parts.ca,
            &self.parts.audit,
            &self.parts.clock,
            machine,
            id,
        )
        .map_err(Status::internal)
    }

    fn machine_id(&self, m: &MachineId) -> Result<SpiffeId, Status> {
        self.td
            .workload(&["machine", m.as_str()])
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// The machine the caller's certificate names.
    fn machine_of<T>(&self, req: &Request<T>) -> Result<MachineId, Status> {
        let peer = Peer::of(req)
            .ok_or_else(|| Status::unauthenticated("this call needs a machine SVID"))?;
        match peer.path().strip_prefix("/machine/") {
            Some(m) if peer.is_member_of(&self.td) => {
                MachineId::parse(m).map_err(|e| Status::permission_denied(format!("{peer}: {e}")))
            }
            _ => Err(Status::permission_denied(format!(
                "{peer} is not a machine of {}",
                self.td
            ))),
        }
    }

    /// The caller, if it is a service workload of this trust domain
    /// (`/ns/<namespace>/svc/<service>`).
    fn service_of<T>(&self, req: &Request<T>) -> Option<SpiffeId> {
        let peer = Peer::of(req)?;
        if !peer.is_member_of(&self.td) {
            return None;
        }
        let parts: Vec<&str> = peer.path().trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "svc", svc]
                if ringfence_core::Name::parse(ns).is_ok()
                    && ringfence_core::Name::parse(svc).is_ok() =>
            {
                Some(peer)
            }
            _ => None,
        }
    }

    /// The person the caller's certificate names.
    fn user_of<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let peer = Peer::of(req)
            .ok_or_else(|| Status::unauthenticated("this call needs a user certificate"))?;
        match peer.path().strip_prefix("/user/") {
            Some(u) if peer.is_member_of(&self.td) && !u.contains('/') => Ok(u.to_owned()),
            _ => Err(Status::permission_denied(format!(
                "{peer} is not a person of {} (admin calls need a /user/<name> certificate)",
                self.td
            ))),
        }
    }

    async fn record(&self, event: Event) -> Result<(), Status> {
        self.parts.audit.record(&event).await.map_err(|e| {
            Status::unavailable(format!(
                "the audit log could not record this, so it was not done: {e}"
            ))
        })
    }

    fn event(&self, action: &str, target: String, d: Decision, why: &str) -> Result<Event, Status> {
        let actor = self
            .td
            .workload(&["ringfence", "controlplane"])
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Event::new(
            self.parts.clock.now(),
            actor,
            action,
            target,
            d,
            why,
        ))
    }

    fn svid_reply(&self, svid: ringfence_identity::Svid) -> pb::SvidReply {
        pb::SvidReply {
            spiffe_id: svid.spiffe_id.to_string(),
            cert_der: svid.cert_der,
            intermediates: svid.intermediates,
            bundle_der: self.parts.ca.bundle_der(self.parts.clock.now()),
            not_after_ms: svid.not_after.as_millis(),
        }
    }

    async fn refuse_join(&self, why: &str) -> Result<pb::SvidReply, Status> {
        let event = self.event("machine.join", "machine/?".into(), Decision::Deny, why)?;
        self.record(event).await?;
        Err(Status::permission_denied(why.to_owned()))
    }

    async fn join(&self, req: pb::JoinRequest) -> Result<pb::SvidReply, Status> {
        if req.token.is_empty() || req.token.len() > MAX_TOKEN {
            return self
                .refuse_join("the join token is missing or malformed")
                .await;
        }
        // The CSR is checked before the token is spent, so a bad CSR does not burn it.
        let csr = match ringfence_identity::parse_csr(&req.csr_der) {
            Ok(c) => c,
            Err(e) => return Err(Status::invalid_argument(format!("CSR: {e}"))),
        };
        let k = key(&["cp", "join-tokens", Sha256::of(req.token.as_bytes()).hex()])?;
        let Some(stored) = self
            .parts
            .store
            .get(&k)
            .await
            .map_err(|e| status(e.into()))?
        else {
            return self.refuse_join("unknown or already used join token").await;
        };
        let token: JoinToken = serde_json::from_slice(&stored.value)
            .map_err(|e| Status::internal(format!("stored join token: {e}")))?;
        let machine = MachineId::parse(&token.machine)
            .map_err(|e| Status::internal(format!("stored join token: {e}")))?;
        let id = self.machine_id(&machine)?;
        if csr.spiffe_id() != &id {
            // Refused (and audited) without spending the token.
            return self
                .refuse_join(&format!(
                    "this join token is for {id}, the CSR asks for {}",
                    csr.spiffe_id()
                ))
                .await;
        }
        // Spent now, whatever follows: a token is good for one join.
        if self
            .parts
            .store
            .delete(&k, Expect::Revision(stored.mod_revision))
            .await
            .is_err()
        {
            return self.refuse_join("unknown or already used join token").await;
        }
        if self.parts.clock.now() >= token.expires_at {
            return self
                .refuse_join(&format!("the join token for {} has expired", token.machine))
                .await;
        }
        let joined = serde_json::to_vec(&Joined {
            joined_at: self.parts.clock.now(),
        })
        .map_err(|e| Status::internal(e.to_string()))?;
        self.parts
            .store
            .put(
                &key(&["cp", "joined", machine.as_str()])?,
                joined,
                Expect::Any,
            )
            .await
            .map_err(|e| status(e.into()))?;
        let event = self
            .event(
                "machine.join",
                format!("machine/{}", machine.as_str()),
                Decision::Allow,
                "joined with a one-time token (development mode: no host attestation)",
            )?
            .with_detail("token_by", &token.by);
        self.record(event).await?;
        let svid = self
            .issuer_for(&machine, &id)?
            .issue(&req.csr_der, &machine)
            .await
            .map_err(issue_status)?;
        Ok(self.svid_reply(svid))
    }

    async fn renew_machine(&self, machine: MachineId, csr: &[u8]) -> Result<pb::SvidReply, Status> {
        if self
            .parts
            .store
            .get(&key(&["cp", "joined", machine.as_str()])?)
            .await
            .map_err(|e| status(e.into()))?
            .is_none()
        {
            return Err(Status::permission_denied(format!(
                "machine {} has not joined (or was removed): it needs a new join token",
                machine.as_str()
            )));
        }
        let id = self.machine_id(&machine)?;
        let svid = self
            .issuer_for(&machine, &id)?
            .issue(csr, &machine)
            .await
            .map_err(issue_status)?;
        Ok(self.svid_reply(svid))
    }

    async fn fetch_image(
        &self,
        machine: MachineId,
        digest: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<pb::ImageChunk, Status>>, Status> {
        let d = Sha256::parse(digest).map_err(|e| Status::invalid_argument(format!("{e}")))?;
        let assigned = self
            .parts
            .cp
            .assignments(machine.as_str())
            .await
            .map_err(status)?;
        if !assigned.iter().any(|a| a.digest == d.to_string()) {
            return Err(Status::permission_denied(format!(
                "no task assigned to machine {} runs image {d}",
                machine.as_str()
            )));
        }
        let mut nonce = [0u8; 8];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| Status::internal("no randomness"))?;
        let dir = self
            .parts
            .scratch
            .join(format!("{}.{}", d.hex(), Sha256::of(&nonce).hex()));
        let artifacts = self.parts.artifacts.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let out = dir.clone();
        tokio::task::spawn_blocking(move || {
            let send = |r: Result<pb::ImageChunk, Status>| tx.blocking_send(r).is_ok();
            let result = (|| -> Result<(), Status> {
                artifacts.export(&d, &out).map_err(|e| match e {
                    ArtifactError::NotFound(m) => Status::not_found(m),
                    e => Status::internal(e.to_string()),
                })?;
                let mut files = vec!["oci-layout".to_owned(), "index.json".to_owned()];
                let blobs = out.join("blobs").join("sha256");
                let mut names: Vec<String> = std::fs::read_dir(&blobs)
                    .map_err(|e| Status::internal(e.to_string()))?
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect();
                names.sort();
                files.extend(names.into_iter().map(|n| format!("blobs/sha256/{n}")));
                for f in files {
                    let bytes =
                        std::fs::read(out.join(&f)).map_err(|e| Status::internal(e.to_string()))?;
                    if bytes.is_empty()
                        && !send(Ok(pb::ImageChunk {
                            path: f.clone(),
                            data: vec![],
                        }))
                    {
                        return Ok(());
                    }
                    for chunk in bytes.chunks(ringfence_api::IMAGE_CHUNK) {
                        if !send(Ok(pb::ImageChunk {
                            path: f.clone(),
                            data: chunk.to_vec(),
                        })) {
                            return Ok(());
                        }
                    }
                }
                Ok(())
            })();
            if let Err(e) = result {
                send(Err(e));
            }
            let _ = std::fs::remove_dir_all(&out);
        });
        Ok(rx)
    }

    async fn submit(&self, by: String, req: pb::SubmitJobRequest) -> Result<String, Status> {
        let (_, job) = ringfence_bab::manifest::JobManifest::parse(&req.manifest)
            .map_err(Status::invalid_argument)?;
        let attestations: Vec<Attestation> = if req.attestations.is_empty() {
            match ringfence_admission::verdict::parse_image(&job.image) {
                // Admission refuses the reference itself, with the reason.
                Err(_) => Vec::new(),
                Ok(r) => match self.parts.artifacts.attestations(&r.digest) {
                    Ok(a) => a
                        .into_iter()
                        .map(|(source, envelope)| Attestation { source, envelope })
                        .collect(),
                    Err(ArtifactError::NotFound(_)) => Vec::new(),
                    Err(e) => return Err(Status::internal(e.to_string())),
                },
            }
        } else {
            req.attestations
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    ringfence_provenance::dsse::parse(b)
                        .map(|envelope| Attestation {
                            source: format!("attestation {}", i + 1),
                            envelope,
                        })
                        .map_err(|e| {
                            Status::invalid_argument(format!("attestation {}: {e}", i + 1))
                        })
                })
                .collect::<Result<_, _>>()?
        };
        let request = if req.break_glass.is_empty() {
            AdmissionRequest::Normal
        } else {
            AdmissionRequest::BreakGlass {
                justification: req.break_glass,
                by: by.clone(),
            }
        };
        let record = self
            .parts
            .cp
            .submit(&req.manifest, &attestations, &request, &by)
            .await
            .map_err(status)?;
        to_json(&record)
    }

    async fn create_token(
        &self,
        by: String,
        req: pb::CreateJoinTokenRequest,
    ) -> Result<pb::JoinTokenReply, Status> {
        let machine = MachineId::parse(&req.machine)
            .map_err(|e| Status::invalid_argument(format!("machine: {e}")))?;
        let ttl = if req.ttl_seconds == 0 {
            TOKEN_TTL
        } else {
            Duration::from_secs(u64::from(req.ttl_seconds))
        };
        if ttl > TOKEN_TTL_MAX {
            return Err(Status::invalid_argument(format!(
                "a join token lasts at most {} s",
                TOKEN_TTL_MAX.as_secs()
            )));
        }
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| Status::internal("no randomness"))?;
        let token = format!("rfjt.{}", hex(&secret));
        let expires_at = self.parts.clock.now().saturating_add(ttl);
        let event = self
            .event(
                "machine.join-token",
                format!("machine/{}", machine.as_str()),
                Decision::Info,
                &format!("one-time join token made, valid {} s", ttl.as_secs()),
            )?
            .with_detail("by", &by);
        self.record(event).await?;
        let stored = serde_json::to_vec(&JoinToken {
            machine: machine.as_str().to_owned(),
            expires_at,
            by,
        })
        .map_err(|e| Status::internal(e.to_string()))?;
        self.parts
            .store
            .put(
                &key(&["cp", "join-tokens", Sha256::of(token.as_bytes()).hex()])?,
                stored,
                Expect::Absent,
            )
            .await
            .map_err(|e| status(e.into()))?;
        Ok(pb::JoinTokenReply {
            token,
            expires_ms: expires_at.as_millis(),
        })
    }

    async fn refuse_login(&self, name: &str, why: String) -> Status {
        let target = if name.is_empty() {
            "user/?".to_owned()
        } else {
            format!("user/{name}")
        };
        match self.event("user.login", target, Decision::Deny, &why) {
            Ok(e) => {
                if let Err(s) = self.record(e).await {
                    return s;
                }
                Status::permission_denied(why)
            }
            Err(s) => s,
        }
    }

    async fn login(&self, req: pb::LoginRequest) -> Result<pb::SvidReply, Status> {
        let envelope = ringfence_provenance::dsse::parse(&req.envelope)
            .map_err(|e| Status::invalid_argument(format!("login envelope: {e}")))?;
        // The name picks the key; nothing else in the payload is believed before the
        // signature is checked with that key.
        let claimed: LoginClaims = {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&envelope.payload)
                .map_err(|e| Status::invalid_argument(format!("login payload: {e}")))?;
            serde_json::from_slice(&raw)
                .map_err(|e| Status::invalid_argument(format!("login payload: {e}")))?
        };
        let name = claimed.name.clone();
        if ringfence_core::Name::parse(&name).is_err() {
            return Err(Status::invalid_argument(format!(
                "login: {name:?} is not a valid name"
            )));
        }
        let Some(path) = &self.parts.people else {
            return Err(self
                .refuse_login(&name, "nobody is enrolled on this control plane".into())
                .await);
        };
        let people = People::load(path).map_err(Status::failed_precondition)?;
        let Some(key) = people.key(&name).map_err(Status::failed_precondition)? else {
            return Err(self
                .refuse_login(&name, format!("no person {name} is enrolled"))
                .await);
        };
        let verified = match ringfence_provenance::dsse::verify(
            &envelope,
            LOGIN_PAYLOAD_TYPE,
            &[ringfence_provenance::dsse::TrustedKey {
                name: name.clone(),
                keyid: None,
                key,
            }],
            1,
        ) {
            Ok(v) => v,
            Err(e) => {
                return Err(self
                    .refuse_login(
                        &name,
                        format!("the login is not signed by {name}'s enrolled key: {e}"),
                    )
                    .await);
            }
        };
        let claims: LoginClaims = serde_json::from_slice(verified.payload())
            .map_err(|e| Status::invalid_argument(format!("login payload: {e}")))?;
        if claims.trust_domain != self.td.to_string() {
            return Err(self
                .refuse_login(
                    &name,
                    format!(
                        "the login is for trust domain {}, this is {}",
                        claims.trust_domain, self.td
                    ),
                )
                .await);
        }
        let now = self.parts.clock.now().as_millis();
        if now.abs_diff(claims.time_ms) > LOGIN_SKEW.as_millis() as u64 {
            return Err(self
                .refuse_login(
                    &name,
                    format!(
                        "the login was signed {} s away from this server's clock (at most {} s)",
                        now.abs_diff(claims.time_ms) / 1000,
                        LOGIN_SKEW.as_secs()
                    ),
                )
                .await);
        }
        if claims.csr_sha256 != Sha256::of(&req.csr_der).hex() {
            return Err(self
                .refuse_login(&name, "the login was signed for another CSR".into())
                .await);
        }
        let id = self
            .td
            .workload(&["user", &name])
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let machine =
            MachineId::parse(LOGIN_MACHINE).map_err(|e| Status::internal(e.to_string()))?;
        let svid = self
            .issuer_for(&machine, &id)?
            .issue(&req.csr_der, &machine)
            .await
            .map_err(issue_status)?;
        let event = self.event(
            "user.login",
            format!("user/{name}"),
            Decision::Allow,
            "logged in with the enrolled key",
        )?;
        self.record(event).await?;
        Ok(self.svid_reply(svid))
    }

    async fn render_metrics(&self) -> String {
        let mut out = String::from(
            "# HELP ringfence_api_calls_total Control-plane API calls by method and gRPC status.\n# TYPE ringfence_api_calls_total counter\n",
        );
        let calls = self
            .metrics
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for ((method, code), n) in calls {
            out.push_str(&format!(
                "ringfence_api_calls_total{{method=\"{method}\",code=\"{code}\"}} {n}\n"
            ));
        }
        let now = self.parts.clock.now();
        if let Ok(machines) = self.parts.cp.machines().await {
            out.push_str("# HELP ringfence_machines Registered machines by pool and liveness.\n# TYPE ringfence_machines gauge\n");
            let mut by: BTreeMap<(String, bool), u64> = BTreeMap::new();
            for m in machines {
                let alive = now.since(m.last_seen) < self.parts.cp.settings().machine_timeout;
                *by.entry((m.pool.to_string(), alive)).or_default() += 1;
            }
            for ((pool, alive), n) in by {
                out.push_str(&format!(
                    "ringfence_machines{{pool=\"{pool}\",alive=\"{alive}\"}} {n}\n"
                ));
            }
        }
        if let Ok(jobs) = self.parts.cp.jobs().await {
            out.push_str("# HELP ringfence_jobs Jobs by state.\n# TYPE ringfence_jobs gauge\n");
            let mut by: BTreeMap<&'static str, u64> = BTreeMap::new();
            for j in &jobs {
                *by.entry(j.state.name()).or_default() += 1;
            }
            for (state, n) in by {
                out.push_str(&format!("ringfence_jobs{{state=\"{state}\"}} {n}\n"));
            }
        }
        if let Ok(tasks) = self.parts.cp.task_statuses().await {
            out.push_str("# HELP ringfence_tasks Tasks by reported state and whether they hold an SVID.\n# TYPE ringfence_tasks gauge\n");
            let mut by: BTreeMap<(String, bool), u64> = BTreeMap::new();
            for s in tasks.values() {
                *by.entry((s.report.state.clone(), s.report.svid))
                    .or_default() += 1;
            }
            for ((state, svid), n) in by {
                out.push_str(&format!(
                    "ringfence_tasks{{state=\"{state}\",svid=\"{svid}\"}} {n}\n"
                ));
            }
        }
        out
    }

    async fn health(&self) -> Result<(), String> {
        self.parts
            .store
            .revision()
            .await
            .map_err(|e| format!("store: {e}"))?;
        Ok(())
    }
}

/// The payload type of a login envelope (PAE binds it: a signature over anything else, such
/// as an attestation, is not a login).
pub const LOGIN_PAYLOAD_TYPE: &str = "application/vnd.ringfence.login.v1+json";
/// How far a login's time may be from the server's clock.
pub const LOGIN_SKEW: Duration = Duration::from_secs(120);
/// The requester recorded for user certificates.
const LOGIN_MACHINE: &str = "people";

/// What a person signs to log in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginClaims {
    /// The person.
    pub name: String,
    /// The trust domain the certificate is for.
    pub trust_domain: String,
    /// When it was signed, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// SHA-256 (hex) of the CSR sent with it.
    pub csr_sha256: String,
}

/// The organisation's people: `[people.<name>]` tables with `public_key` (SPKI PEM, P-256 or
/// Ed25519). Unknown keys are refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct People {
    people: BTreeMap<String, Person>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Person {
    public_key: String,
}

impl People {
    /// Reads the file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The enrolled key of `name`, if enrolled.
    pub fn key(&self, name: &str) -> Result<Option<ringfence_provenance::dsse::PublicKey>, String> {
        match self.people.get(name) {
            None => Ok(None),
            Some(p) => ringfence_provenance::dsse::PublicKey::from_spki_pem(&p.public_key)
                .map(Some)
                .map_err(|e| format!("the enrolled key of {name}: {e}")),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn to_json<T: Serialize>(v: &T) -> Result<String, Status> {
    serde_json::to_string(v).map_err(|e| Status::internal(e.to_string()))
}

fn issue_status(e: ServiceError) -> Status {
    match e {
        ServiceError::Refused(e) => Status::permission_denied(e.to_string()),
        e @ ServiceError::AuditUnavailable(_) => Status::unavailable(e.to_string()),
    }
}

fn to_pb(a: Assignment) -> pb::Assignment {
    pb::Assignment {
        task: a.task,
        job: a.job,
        spiffe_id: a.spiffe_id.to_string(),
        digest: a.digest,
        args: a.args,
        env: a.env,
        ring: a.ring.to_string(),
        resources: Some(pb::Resources {
            cpu_milli: a.resources.cpu_milli,
            memory_mib: a.resources.memory_mib,
        }),
        memory_limit: a.memory_limit,
        cpu_limit: a.cpu_limit,
        ports: a
            .ports
            .into_iter()
            .map(|(name, port)| pb::Port {
                name,
                port: u32::from(port),
            })
            .collect(),
    }
}

/// An assignment as the agent receives it (every field checked again).
pub fn from_pb(a: pb::Assignment) -> Result<Assignment, String> {
    Ok(Assignment {
        spiffe_id: SpiffeId::parse(&a.spiffe_id).map_err(|e| format!("spiffe id: {e}"))?,
        ring: crate::plane::parse_ring(Some(&a.ring)).map_err(|e| e.to_string())?,
        resources: a.resources.map_or(Resources::default(), |r| Resources {
            cpu_milli: r.cpu_milli,
            memory_mib: r.memory_mib,
        }),
        ports: a
            .ports
            .into_iter()
            .map(|p| {
                u16::try_from(p.port)
                    .map(|port| (p.name, port))
                    .map_err(|_| format!("port {} out of range", p.port))
            })
            .collect::<Result<_, _>>()?,
        task: a.task,
        job: a.job,
        digest: a.digest,
        args: a.args,
        env: a.env,
        memory_limit: a.memory_limit,
        cpu_limit: a.cpu_limit,
    })
}

/// The Node service.
struct NodeApi(Arc<State>);

type ImageStream = Pin<Box<dyn Stream<Item = Result<pb::ImageChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Node for NodeApi {
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::SvidReply>, Status> {
        let r = self.0.join(req.into_inner()).await;
        self.0.metrics.observe("Node/Join", &r);
        r.map(Response::new)
    }

    async fn renew_machine(
        &self,
        req: Request<pb::CsrRequest>,
    ) -> Result<Response<pb::SvidReply>, Status> {
        let r = match self.0.machine_of(&req) {
            Ok(m) => self.0.renew_machine(m, &req.get_ref().csr_der).await,
            Err(e) => Err(e),
        };
        self.0.metrics.observe("Node/RenewMachine", &r);
        r.map(Response::new)
    }

    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::MachineReply>, Status> {
        let r = async {
            let machine = self.0.machine_of(&req)?;
            let body = req.into_inner();
            let capacity = body.capacity.unwrap_or_default();
            let record = self
                .0
                .parts
                .cp
                .register(
                    &Registration {
                        machine: machine.as_str().to_owned(),
                        capacity: Resources {
                            cpu_milli: capacity.cpu_milli,
                            memory_mib: capacity.memory_mib,
                        },
                        address: body.address,
                    },
                    // Over the network, nothing vouches for the host yet.
                    HostTrust::Development,
                )
                .await
                .map_err(status)?;
            Ok(pb::MachineReply {
                pool: record.pool.to_string(),
                trust: serde_json::to_value(record.trust)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            })
        }
        .await;
        self.0.metrics.observe("Node/Register", &r);
        r.map(Response::new)
    }

    async fn assignments(
        &self,
        req: Request<pb::AssignmentsRequest>,
    ) -> Result<Response<pb::AssignmentsReply>, Status> {
        let r = async {
            let machine = self.0.machine_of(&req)?;
            let assigned = self
                .0
                .parts
                .cp
                .assignments(machine.as_str())
                .await
                .map_err(status)?;
            Ok(pb::AssignmentsReply {
                assignments: assigned.into_iter().map(to_pb).collect(),
                bundle_der: self.0.parts.ca.bundle_der(self.0.parts.clock.now()),
            })
        }
        .await;
        self.0.metrics.observe("Node/Assignments", &r);
        r.map(Response::new)
    }

    async fn report(
        &self,
        req: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportReply>, Status> {
        let r = async {
            let machine = self.0.machine_of(&req)?;
            let reports = req.into_inner().reports;
            if reports.len() > MAX_REPORTS {
                return Err(Status::invalid_argument(format!(
                    "{} task reports in one call; at most {MAX_REPORTS}",
                    reports.len()
                )));
            }
            let reports: Vec<TaskReport> = reports
                .into_iter()
                .map(|r| TaskReport {
                    task: r.task,
                    state: r.state,
                    detail: r.detail,
                    restarts: r.restarts,
                    svid: r.svid,
                })
                .collect();
            self.0
                .parts
                .cp
                .report(machine.as_str(), &reports)
                .await
                .map_err(status)?;
            Ok(pb::ReportReply {})
        }
        .await;
        self.0.metrics.observe("Node/Report", &r);
        r.map(Response::new)
    }

    type FetchImageStream = ImageStream;

    async fn fetch_image(
        &self,
        req: Request<pb::FetchImageRequest>,
    ) -> Result<Response<ImageStream>, Status> {
        let r = match self.0.machine_of(&req) {
            Ok(m) => self.0.fetch_image(m, &req.get_ref().digest).await,
            Err(e) => Err(e),
        };
        self.0.metrics.observe("Node/FetchImage", &r);
        r.map(|rx| {
            Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as ImageStream)
        })
    }

    async fn audit(
        &self,
        req: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditReply>, Status> {
        let r = match (self.0.machine_of(&req), self.0.service_of(&req)) {
            (Ok(m), _) => self.0.agent_audit(m, req.into_inner().events).await,
            (Err(_), Some(proxy)) => self.0.mesh_audit(&proxy, req.into_inner().events).await,
            (Err(e), None) => Err(Status::permission_denied(format!(
                "{}; only machines (agent.* events) and services' mesh proxies (mesh.* events) record audit events here",
                e.message()
            ))),
        };
        self.0.metrics.observe("Node/Audit", &r);
        r.map(|()| Response::new(pb::AuditReply {}))
    }

    async fn issue_svid(
        &self,
        req: Request<pb::CsrRequest>,
    ) -> Result<Response<pb::SvidReply>, Status> {
        let r = async {
            let machine = self.0.machine_of(&req)?;
            let svid = self
                .0
                .tasks
                .issue(&req.get_ref().csr_der, &machine)
                .await
                .map_err(issue_status)?;
            Ok(self.0.svid_reply(svid))
        }
        .await;
        self.0.metrics.observe("Node/IssueSvid", &r);
        r.map(Response::new)
    }
}

/// How often a discovery watch looks for changes.
const DISCOVERY_POLL: Duration = Duration::from_secs(1);

/// The Discovery service.
struct DiscoveryApi(Arc<State>);

type EndpointStream = Pin<Box<dyn Stream<Item = Result<pb::EndpointsReply, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryApi {
    type WatchEndpointsStream = EndpointStream;

    async fn watch_endpoints(
        &self,
        req: Request<pb::EndpointsRequest>,
    ) -> Result<Response<EndpointStream>, Status> {
        let r = (|| {
            let peer =
                Peer::of(&req).ok_or_else(|| Status::unauthenticated("discovery needs an SVID"))?;
            if !peer.is_member_of(&self.0.td) {
                return Err(Status::permission_denied(format!(
                    "{peer} is not of {}",
                    self.0.td
                )));
            }
            let body = req.get_ref();
            for (what, v) in [("namespace", &body.namespace), ("service", &body.service)] {
                ringfence_core::Name::parse(v)
                    .map_err(|e| Status::invalid_argument(format!("{what}: {e}")))?;
            }
            Ok((body.namespace.clone(), body.service.clone()))
        })();
        self.0.metrics.observe("Discovery/WatchEndpoints", &r);
        let (namespace, service) = r?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let state = Arc::clone(&self.0);
        tokio::spawn(async move {
            let mut last: Option<Vec<crate::Endpoint>> = None;
            loop {
                match state.parts.cp.endpoints(&namespace, &service).await {
                    Ok(now) if last.as_ref() != Some(&now) => {
                        let reply = pb::EndpointsReply {
                            endpoints: now
                                .iter()
                                .map(|e| pb::Endpoint {
                                    task: e.task.clone(),
                                    machine: e.machine.clone(),
                                    address: e.address.clone(),
                                    port_name: e.port_name.clone(),
                                    port: u32::from(e.port),
                                })
                                .collect(),
                        };
                        if tx.send(Ok(reply)).await.is_err() {
                            return;
                        }
                        last = Some(now);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(DISCOVERY_POLL) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as EndpointStream,
        ))
    }
}

/// The People service.
struct PeopleApi(Arc<State>);

#[tonic::async_trait]
impl PeopleApiTrait for PeopleApi {
    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::SvidReply>, Status> {
        let r = self.0.login(req.into_inner()).await;
        self.0.metrics.observe("People/Login", &r);
        r.map(Response::new)
    }
}

/// The transaction-token service key in `dir/txn-token-key.pk8` (PKCS#8, mode 0600), made on
/// first use.
pub fn token_service(
    dir: &std::path::Path,
    td: &TrustDomain,
) -> Result<ringfence_identity::txn::TokenService, String> {
    use ringfence_identity::txn::TokenService;
    let path = dir.join("txn-token-key.pk8");
    match std::fs::read(&path) {
        Ok(der) => TokenService::from_pkcs8(td.clone(), &der)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let service = TokenService::generate(td.clone()).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            f.write_all(service.pkcs8())
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(service)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The Tokens service.
struct TokensApi(Arc<State>);

/// The most context entries a minted token may carry.
pub const MAX_TOKEN_CONTEXT: usize = 16;

impl State {
    async fn mint_token(
        &self,
        user: String,
        body: pb::MintTokenRequest,
    ) -> Result<pb::MintTokenReply, Status> {
        use ringfence_identity::txn;
        let for_workload = SpiffeId::parse(&body.for_workload)
            .map_err(|e| Status::invalid_argument(format!("for_workload: {e}")))?;
        if body.context.len() > MAX_TOKEN_CONTEXT
            || body
                .context
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 256)
        {
            return Err(Status::invalid_argument(format!(
                "context: at most {MAX_TOKEN_CONTEXT} entries, keys 1 to 64 bytes, values up to 256"
            )));
        }
        let ttl = match body.ttl_seconds {
            0 => txn::DEFAULT_TTL,
            s => Duration::from_secs(u64::from(s)),
        };
        let now = self.parts.clock.now();
        let req = txn::MintRequest {
            subject: user.clone(),
            for_workload: for_workload.clone(),
            purpose: (!body.purpose.is_empty()).then_some(body.purpose),
            context: body.context.into_iter().collect(),
            ttl,
        };
        let token = self
            .parts
            .tokens
            .mint(&req, now)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let actor = self
            .td
            .workload(&["user", &user])
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.record(Event::new(
            now,
            actor,
            "txn.mint",
            for_workload.to_string(),
            Decision::Allow,
            format!("transaction token for {user}, {} s", ttl.as_secs()),
        ))
        .await?;
        Ok(pb::MintTokenReply {
            token,
            expires_at: now.saturating_add(ttl).as_secs(),
        })
    }
}

#[tonic::async_trait]
impl TokensApiTrait for TokensApi {
    async fn mint(
        &self,
        req: Request<pb::MintTokenRequest>,
    ) -> Result<Response<pb::MintTokenReply>, Status> {
        let r = match self.0.user_of(&req) {
            Ok(user) => self.0.mint_token(user, req.into_inner()).await,
            Err(e) => Err(e),
        };
        self.0.metrics.observe("Tokens/Mint", &r);
        r.map(Response::new)
    }

    async fn keys(
        &self,
        req: Request<pb::TokenKeysRequest>,
    ) -> Result<Response<pb::TokenKeysReply>, Status> {
        let r = match Peer::of(&req) {
            Some(p) if p.is_member_of(&self.0.td) => Ok(pb::TokenKeysReply {
                jwks: self.0.parts.tokens.jwks(),
            }),
            Some(p) => Err(Status::permission_denied(format!(
                "{p} is not of {}",
                self.0.td
            ))),
            None => Err(Status::unauthenticated("token keys need an SVID")),
        };
        self.0.metrics.observe("Tokens/Keys", &r);
        r.map(Response::new)
    }
}

/// The Admin service.
struct AdminApi(Arc<State>);

/// The most events one `Audit` call may carry.
pub const MAX_AUDIT_EVENTS: usize = 256;

impl State {
    async fn agent_audit(&self, machine: MachineId, events: Vec<Vec<u8>>) -> Result<(), Status> {
        if events.len() > MAX_AUDIT_EVENTS {
            return Err(Status::invalid_argument(format!(
                "{} events in one call; at most {MAX_AUDIT_EVENTS}",
                events.len()
            )));
        }
        let actor = self.machine_id(&machine)?;
        // All checked before any is recorded.
        let mut checked = Vec::with_capacity(events.len());
        for (i, bytes) in events.iter().enumerate() {
            let e = Event::decode(bytes)
                .map_err(|e| Status::invalid_argument(format!("event {}: {e}", i + 1)))?;
            if e.actor != actor {
                return Err(Status::permission_denied(format!(
                    "event {}: its actor is {}, but the caller is {actor}",
                    i + 1,
                    e.actor
                )));
            }
            if !e.action.starts_with("agent.") {
                return Err(Status::permission_denied(format!(
                    "event {}: an agent records only agent.* actions, not {:?}",
                    i + 1,
                    e.action
                )));
            }
            checked.push(e);
        }
        for e in &checked {
            self.parts.audit.record_once(e).await.map_err(|e| {
                Status::unavailable(format!("the audit log could not record it: {e}"))
            })?;
        }
        Ok(())
    }
}

impl State {
    /// Events a service's mesh proxy forwards from its spool: `mesh.*` actions only, each
    /// naming the caller as the proxy that recorded it (`details.proxy`), decided allow, deny
    /// or would-deny, not dated in the future, at most [`MAX_MESH_EVENT`] bytes, and at most
    /// [`MESH_AUDIT_PER_WINDOW`] per identity in a window. What a proxy says it saw is its own
    /// claim: the log records the proxy as the actor and the peer it saw as `details.peer`,
    /// so no workload can enter an event in another's name.
    async fn mesh_audit(&self, proxy: &SpiffeId, events: Vec<Vec<u8>>) -> Result<(), Status> {
        if events.len() > MAX_AUDIT_EVENTS {
            return Err(Status::invalid_argument(format!(
                "{} events in one call; at most {MAX_AUDIT_EVENTS}",
                events.len()
            )));
        }
        {
            let mut budget = self
                .mesh_budget
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let instant = std::time::Instant::now();
            budget.retain(|_, (since, _)| instant.duration_since(*since) < MESH_AUDIT_WINDOW);
            let (_, used) = budget.entry(proxy.to_string()).or_insert((instant, 0));
            if *used + events.len() > MESH_AUDIT_PER_WINDOW {
                return Err(Status::resource_exhausted(format!(
                    "{proxy} offered {used} mesh events in the last {}s; at most {MESH_AUDIT_PER_WINDOW} per identity: send the rest later",
                    MESH_AUDIT_WINDOW.as_secs()
                )));
            }
            *used += events.len();
        }
        let now = self.parts.clock.now();
        let mut checked = Vec::with_capacity(events.len());
        for (i, bytes) in events.iter().enumerate() {
            if bytes.len() > MAX_MESH_EVENT {
                return Err(Status::invalid_argument(format!(
                    "event {}: {} bytes; a mesh event is at most {MAX_MESH_EVENT}",
                    i + 1,
                    bytes.len()
                )));
            }
            let mut e = Event::decode(bytes)
                .map_err(|e| Status::invalid_argument(format!("event {}: {e}", i + 1)))?;
            if !e.action.starts_with("mesh.") {
                return Err(Status::permission_denied(format!(
                    "event {}: a mesh proxy records only mesh.* actions, not {:?}",
                    i + 1,
                    e.action
                )));
            }
            match e.details.get("proxy") {
                Some(p) if p == proxy.as_str() => {}
                other => {
                    return Err(Status::permission_denied(format!(
                        "event {}: recorded by proxy {}, but the caller is {proxy}",
                        i + 1,
                        other.map_or("(none)", String::as_str)
                    )));
                }
            }
            if !matches!(
                e.decision,
                Decision::Allow | Decision::Deny | Decision::WouldDeny
            ) {
                return Err(Status::permission_denied(format!(
                    "event {}: a mesh proxy records allow, deny or would-deny, not {}",
                    i + 1,
                    e.decision
                )));
            }
            if e.time_ms > now.as_millis().saturating_add(60_000) {
                return Err(Status::invalid_argument(format!(
                    "event {}: dated {} ms in the future",
                    i + 1,
                    e.time_ms - now.as_millis()
                )));
            }
            if e.actor != *proxy {
                e.details.insert("peer".into(), e.actor.to_string());
                e.actor = proxy.clone();
            }
            checked.push(e);
        }
        for e in &checked {
            self.parts.audit.record_once(e).await.map_err(|e| {
                Status::unavailable(format!("the audit log could not record it: {e}"))
            })?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::RecordReply>, Status> {
        let r = match self.0.user_of(&req) {
            Ok(by) => self.0.submit(by, req.into_inner()).await,
            Err(e) => Err(e),
        };
        self.0.metrics.observe("Admin/SubmitJob", &r);
        r.map(|json| Response::new(pb::RecordReply { json }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::RecordsReply>, Status> {
        let r = async {
            self.0.user_of(&req)?;
            let jobs = self.0.parts.cp.jobs().await.map_err(status)?;
            jobs.iter().map(to_json).collect::<Result<Vec<_>, _>>()
        }
        .await;
        self.0.metrics.observe("Admin/ListJobs", &r);
        r.map(|json| Response::new(pb::RecordsReply { json }))
    }

    async fn stop_job(
        &self,
        req: Request<pb::JobRef>,
    ) -> Result<Response<pb::RecordReply>, Status> {
        let r = async {
            let by = self.0.user_of(&req)?;
            let j = req.into_inner();
            let record = self
                .0
                .parts
                .cp
                .stop(&j.namespace, &j.name, &by)
                .await
                .map_err(status)?;
            to_json(&record)
        }
        .await;
        self.0.metrics.observe("Admin/StopJob", &r);
        r.map(|json| Response::new(pb::RecordReply { json }))
    }

    async fn list_machines(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::RecordsReply>, Status> {
        let r = async {
            self.0.user_of(&req)?;
            let m = self.0.parts.cp.machines().await.map_err(status)?;
            m.iter().map(to_json).collect::<Result<Vec<_>, _>>()
        }
        .await;
        self.0.metrics.observe("Admin/ListMachines", &r);
        r.map(|json| Response::new(pb::RecordsReply { json }))
    }

    async fn task_statuses(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::RecordsReply>, Status> {
        let r = async {
            self.0.user_of(&req)?;
            let s = self.0.parts.cp.task_statuses().await.map_err(status)?;
            s.iter()
                .map(|(task, status)| to_json(&serde_json::json!({"task": task, "status": status})))
                .collect::<Result<Vec<_>, _>>()
        }
        .await;
        self.0.metrics.observe("Admin/TaskStatuses", &r);
        r.map(|json| Response::new(pb::RecordsReply { json }))
    }

    async fn assign_pool(
        &self,
        req: Request<pb::AssignPoolRequest>,
    ) -> Result<Response<pb::RecordReply>, Status> {
        let r = async {
            let by = self.0.user_of(&req)?;
            let body = req.into_inner();
            let pool: Pool = serde_json::from_value(serde_json::Value::String(body.pool.clone()))
                .map_err(|_| {
                Status::invalid_argument(format!(
                    "pool {:?}: use foundational, production or development",
                    body.pool
                ))
            })?;
            self.0
                .parts
                .cp
                .assign_pool(&body.machine, pool, &by)
                .await
                .map_err(status)?;
            to_json(&serde_json::json!({"machine": body.machine, "pool": pool}))
        }
        .await;
        self.0.metrics.observe("Admin/AssignPool", &r);
        r.map(|json| Response::new(pb::RecordReply { json }))
    }

    async fn list_policies(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::RecordsReply>, Status> {
        let r = async {
            self.0.user_of(&req)?;
            let set = self
                .0
                .parts
                .cp
                .gate()
                .policies()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            set.policies()
                .iter()
                .map(|p| to_json(&p.doc))
                .collect::<Result<Vec<_>, _>>()
        }
        .await;
        self.0.metrics.observe("Admin/ListPolicies", &r);
        r.map(|json| Response::new(pb::RecordsReply { json }))
    }

    async fn apply_policy(
        &self,
        req: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::RecordReply>, Status> {
        let r = async {
            let by = self.0.user_of(&req)?;
            let yaml = String::from_utf8(req.into_inner().policy)
                .map_err(|_| Status::invalid_argument("the policy is not UTF-8"))?;
            let applied = self
                .0
                .parts
                .cp
                .gate()
                .apply_policy(&yaml, &by)
                .await
                .map_err(|e| match e {
                    e @ (ringfence_bab::GateError::Policy(_)
                    | ringfence_bab::GateError::Invalid(_)) => {
                        Status::invalid_argument(e.to_string())
                    }
                    e => Status::unavailable(e.to_string()),
                })?;
            let p = &applied.policy;
            let flagged: Vec<String> = applied
                .statuses
                .iter()
                .filter(|s| !s.now.conforms())
                .map(|s| format!("{}/{}", s.job.namespace, s.job.name))
                .collect();
            to_json(&serde_json::json!({
                "name": p.name(), "namespace": p.spec().namespace, "service": p.spec().service,
                "digest": p.digest.to_string(), "created": applied.created, "nonConforming": flagged,
            }))
        }
        .await;
        self.0.metrics.observe("Admin/ApplyPolicy", &r);
        r.map(|json| Response::new(pb::RecordReply { json }))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenReply>, Status> {
        let r = match self.0.user_of(&req) {
            Ok(by) => self.0.create_token(by, req.into_inner()).await,
            Err(e) => Err(e),
        };
        self.0.metrics.observe("Admin/CreateJoinToken", &r);
        r.map(Response::new)
    }
}

/// The audited CA, authorized for exactly `id` requested by `machine` (for the next minute).
fn exact_issuer(
    ca: &Arc<CaSet>,
    audit: &Arc<dyn AuditSink>,
    clock: &Arc<dyn Clock>,
    machine: &MachineId,
    id: &SpiffeId,
) -> Result<IssuanceService, String> {
    IssuanceService::new(
        Arc::clone(ca),
        Arc::new(Exactly(IssuanceAuthorization {
            spiffe_id: id.clone(),
            machine: machine.clone(),
            not_after: clock.now().saturating_add(Duration::from_secs(60)),
        })),
        Arc::clone(audit),
        Arc::clone(clock),
    )
    .map_err(|e| e.to_string())
}

/// Obtains an SVID for `id` straight from the CA (the control plane's own, a bootstrap
/// admin's): `machine` is recorded as the requester in the audit log.
pub async fn self_issue(
    ca: &Arc<CaSet>,
    audit: &Arc<dyn AuditSink>,
    clock: &Arc<dyn Clock>,
    machine: &str,
    id: &SpiffeId,
) -> Result<X509Material, String> {
    let machine = MachineId::parse(machine).map_err(|e| e.to_string())?;
    let service = exact_issuer(ca, audit, clock, &machine, id)?;
    obtain_from(
        &LocalIssuer::new(Arc::new(service), machine),
        id,
        clock.as_ref(),
    )
    .await
    .map(|(m, _)| m)
}

/// A running server's addresses.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The gRPC API.
    pub api: SocketAddr,
    /// `/healthz` and `/metrics`.
    pub http: Option<SocketAddr>,
}

/// Serves the API on `api` (and HTTP on `http`) until `shutdown` turns true. `bound` learns
/// the addresses once both listen (port 0 picks free ones). With `reverify_every`, the
/// control plane's background work runs here too ([`ControlPlane::run`]); `None` when the
/// caller runs it.
pub async fn serve(
    parts: ServerParts,
    api: SocketAddr,
    http: Option<SocketAddr>,
    reverify_every: Option<Duration>,
    bound: tokio::sync::oneshot::Sender<Bound>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let td = parts.ca.trust_domain().clone();
    let clock = Arc::clone(&parts.clock);
    // Our own SVID, renewed at half-life like every other.
    let own_id = td
        .workload(&["ringfence", "controlplane"])
        .map_err(|e| e.to_string())?;
    let own_machine = MachineId::parse(SELF_MACHINE).map_err(|e| e.to_string())?;
    let own_service = Arc::new(
        IssuanceService::new(
            Arc::clone(&parts.ca),
            Arc::new(SelfAuthority {
                id: own_id.clone(),
                machine: own_machine.clone(),
                clock: Arc::clone(&clock),
            }),
            Arc::clone(&parts.audit),
            Arc::clone(&clock),
        )
        .map_err(|e| e.to_string())?,
    );
    let (own_tx, own) = watch::channel(None);
    let rotator = tokio::spawn(run_rotator_from(
        Arc::new(LocalIssuer::new(own_service, own_machine)),
        own_id.clone(),
        Arc::clone(&clock),
        own_tx,
    ));
    let mut wait = own.clone();
    tokio::time::timeout(Duration::from_secs(10), wait.wait_for(Option::is_some))
        .await
        .map_err(|_| "the control plane could not obtain its own SVID".to_owned())?
        .map_err(|e| e.to_string())?;

    let verifier = Arc::new(OptionalClientAuth(Arc::new(SvidVerifier::new(
        own.clone(),
        PeerPolicy::AnyInTrustDomain,
        Arc::clone(&clock),
    ))));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SvidResolver::new(own)));
    tls.alpn_protocols = vec![b"h2".to_vec()];

    let tasks = Arc::new(
        IssuanceService::new(
            Arc::clone(&parts.ca),
            parts.cp.authority(),
            Arc::clone(&parts.audit),
            Arc::clone(&clock),
        )
        .map_err(|e| e.to_string())?,
    );
    std::fs::create_dir_all(&parts.scratch)
        .map_err(|e| format!("{}: {e}", parts.scratch.display()))?;
    // Placements from before a restart are authorized from the start.
    parts.cp.refresh().await.map_err(|e| e.to_string())?;
    let state = Arc::new(State {
        parts,
        td,
        tasks,
        metrics: Metrics::default(),
        mesh_budget: Mutex::new(BTreeMap::new()),
    });

    let listener = tokio::net::TcpListener::bind(api)
        .await
        .map_err(|e| format!("cannot listen on {api}: {e}"))?;
    let api_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let http_task = match http {
        None => None,
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let local = l.local_addr().map_err(|e| e.to_string())?;
            Some((
                local,
                tokio::spawn(serve_http(l, Arc::clone(&state), shutdown.clone())),
            ))
        }
    };
    let _ = bound.send(Bound {
        api: api_addr,
        http: http_task.as_ref().map(|(a, _)| *a),
    });
    tracing::info!(%api_addr, id = %own_id, "control-plane API listening (mTLS)");

    let cp = state.parts.cp.clone();
    let cv_stop = shutdown.clone();
    let background = tokio::spawn(async move {
        match reverify_every {
            Some(every) => cp.run(every, cv_stop).await,
            None => Ok(()),
        }
    });
    let mut stop = shutdown.clone();
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(
            NodeServer::new(NodeApi(Arc::clone(&state)))
                .max_decoding_message_size(ringfence_api::MAX_MESSAGE)
                .max_encoding_message_size(ringfence_api::MAX_MESSAGE),
        )
        .add_service(DiscoveryServer::new(DiscoveryApi(Arc::clone(&state))))
        .add_service(TokensServer::new(TokensApi(Arc::clone(&state))))
        .add_service(
            PeopleServer::new(PeopleApi(Arc::clone(&state)))
                .max_decoding_message_size(ringfence_api::MAX_MESSAGE),
        )
        .add_service(
            AdminServer::new(AdminApi(Arc::clone(&state)))
                .max_decoding_message_size(ringfence_api::MAX_MESSAGE)
                .max_encoding_message_size(ringfence_api::MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming(listener, Arc::new(tls)), async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    rotator.abort();
    if let Some((_, h)) = http_task {
        let _ = h.await;
    }
    let bg = background.await;
    grpc.map_err(|e| format!("the API server stopped: {e}"))?;
    match bg {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the control plane's background work stopped: {e}")),
    }
}

/// The control plane's own identity, on its own host.
struct SelfAuthority {
    id: SpiffeId,
    machine: MachineId,
    clock: Arc<dyn Clock>,
}

impl IssuanceAuthority for SelfAuthority {
    fn authorize(
        &self,
        machine: &MachineId,
        spiffe_id: &SpiffeId,
    ) -> Result<IssuanceAuthorization, String> {
        Exactly(IssuanceAuthorization {
            spiffe_id: self.id.clone(),
            machine: self.machine.clone(),
            not_after: self.clock.now().saturating_add(Duration::from_secs(60)),
        })
        .authorize(machine, spiffe_id)
    }
}

async fn serve_http(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let health = Arc::clone(&state);
    let app = axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let s = Arc::clone(&health);
                async move {
                    match s.health().await {
                        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
                        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let s = Arc::clone(&state);
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        s.render_metrics().await,
                    )
                }
            }),
        );
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "the HTTP endpoint stopped");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::People;

    #[test]
    fn the_people_file_refuses_unknown_fields_and_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("people.toml");
        std::fs::write(&p, "[people.alice]\npublic_key = 'x'\nrole = 'admin'\n").unwrap();
        let e = People::load(&p).unwrap_err();
        assert!(e.contains("unknown field `role`"), "{e}");
        std::fs::write(&p, "[people.alice]\npublic_key = 'not a key'\n").unwrap();
        let people = People::load(&p).unwrap();
        let e = people.key("alice").unwrap_err();
        assert!(e.contains("the enrolled key of alice"), "{e}");
        assert!(people.key("bob").unwrap().is_none());
        std::fs::write(&p, "[persons.alice]\n").unwrap();
        assert!(People::load(&p).is_err());
    }
}
