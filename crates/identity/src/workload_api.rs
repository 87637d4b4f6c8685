//! The SPIFFE Workload API server (the official `workload.proto`, gRPC over a unix socket),
//! and the rotator that keeps one workload's X.509-SVID fresh.
//!
//! Every call must carry the `workload.spiffe.io: true` metadata header, as the Workload API
//! specification requires; calls without it are refused with `InvalidArgument`. The X.509
//! SVID stream sends the current SVID at once and again after every rotation; the rotator
//! renews at half-life (the key is generated here, next to the workload, and only a CSR goes
//! to the CA).
//!
//! JWT-SVIDs are minted for the workload's own SPIFFE ID only (an audience is required) and
//! validated against the trust domain's JWT bundle; a service built without a JWT key
//! answers the JWT methods with `Unimplemented`.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rcgen::{CertificateParams, KeyPair, SanType};
use ringfence_core::{Clock, MachineId, SpiffeId, TrustDomain};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

use crate::service::IssuanceService;

#[allow(
    missing_docs,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod pb {
    // Generated from proto/workload.proto by build.rs.
    tonic::include_proto!("_");
}

use pb::spiffe_workload_api_server::SpiffeWorkloadApi;
pub use pb::spiffe_workload_api_server::SpiffeWorkloadApiServer;

/// The header every Workload API call must carry.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// One workload's current credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Material {
    /// The SVID's identity.
    pub spiffe_id: SpiffeId,
    /// The SVID certificate, DER.
    pub cert_der: Vec<u8>,
    /// Certificates between it and the bundle (an intermediate CA), DER.
    pub intermediates: Vec<Vec<u8>>,
    /// Its private key, PKCS#8 DER.
    pub key_pkcs8_der: Vec<u8>,
    /// The trust bundle: CA certificates, concatenated DER.
    pub bundle_der: Vec<u8>,
    /// The trust domain of the bundle.
    pub trust_domain: TrustDomain,
}

/// What the JWT methods need: the signer, whose identity it signs for, and the time.
#[derive(Debug)]
pub struct JwtContext {
    /// The trust domain's JWT signer.
    pub issuer: crate::jwt::JwtIssuer,
    /// The one SPIFFE ID this socket may mint JWT-SVIDs for.
    pub spiffe_id: SpiffeId,
    /// Token lifetime.
    pub ttl: Duration,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

impl X509Material {
    /// Material with a trust bundle and no certificate yet, for a client that must check a
    /// server before it holds an SVID (joining, logging in): it presents nothing. `spiffe_id`
    /// is the identity being sought.
    pub fn bundle_only(spiffe_id: SpiffeId, bundle_der: Vec<u8>) -> Self {
        Self {
            trust_domain: spiffe_id.trust_domain(),
            spiffe_id,
            cert_der: Vec::new(),
            intermediates: Vec::new(),
            key_pkcs8_der: Vec::new(),
            bundle_der,
        }
    }

    /// The SVID and its intermediates, concatenated DER (leaf first), as the Workload API
    /// sends them.
    pub fn chain_der(&self) -> Vec<u8> {
        let mut out = self.cert_der.clone();
        for c in &self.intermediates {
            out.extend_from_slice(c);
        }
        out
    }
}

/// The Workload API service for one workload.
#[derive(Debug, Clone)]
pub struct WorkloadApi {
    x509: watch::Receiver<Option<X509Material>>,
    jwt: Option<Arc<JwtContext>>,
    owner: Option<u32>,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl WorkloadApi {
    /// A service that serves whatever `x509` holds.
    pub fn new(x509: watch::Receiver<Option<X509Material>>) -> Self {
        Self {
            x509,
            jwt: None,
            owner: None,
        }
    }

    /// The socket file is handed to this uid (and its gid of the same number) once bound, so
    /// only that workload (and root) can connect; each connection's peer uid (`SO_PEERCRED`)
    /// is checked as well.
    pub fn with_socket_owner(mut self, uid: u32) -> Self {
        self.owner = Some(uid);
        self
    }

    /// Also serves JWT-SVIDs.
    pub fn with_jwt(mut self, jwt: JwtContext) -> Self {
        self.jwt = Some(Arc::new(jwt));
        self
    }

    fn jwt(&self) -> Result<&JwtContext, Status> {
        self.jwt.as_deref().ok_or_else(|| {
            Status::unimplemented("JWT-SVIDs are not served on this socket (no JWT key)")
        })
    }

    /// Serves on the unix socket at `path` until `shutdown` resolves. A stale socket file is
    /// replaced; the socket is created with mode 0600 (the agent hands it to the task's uid).
    pub async fn serve(
        self,
        path: &Path,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = tokio::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        if let Some(uid) = self.owner {
            std::os::unix::fs::lchown(path, Some(uid), Some(uid))?;
        }
        let owner = self.owner;
        let service = SpiffeWorkloadApiServer::with_interceptor(self, check_security_header);
        // Each client connection goes through the authority bridge (see `authority_fix`) to
        // the gRPC server over an in-memory pipe.
        let (conns, incoming) =
            tokio::sync::mpsc::channel::<std::io::Result<tokio::io::DuplexStream>>(64);
        let acceptor = tokio::spawn(async move {
            loop {
                let (client, _) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "workload API accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Besides the socket's mode and owner, the connecting process itself: only
                // the workload's uid (or root) is served.
                if let Some(uid) = owner {
                    match client.peer_cred() {
                        Ok(c) if c.uid() == uid || c.uid() == 0 => {}
                        Ok(c) => {
                            tracing::warn!(
                                peer_uid = c.uid(),
                                peer_pid = c.pid(),
                                owner = uid,
                                "workload API: refused a connection from another uid"
                            );
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "workload API: no peer credentials; refused");
                            continue;
                        }
                    }
                }
                let (server_side, bridge_side) = tokio::io::duplex(64 * 1024);
                tokio::spawn(bridge(client, bridge_side));
                if conns.send(Ok(server_side)).await.is_err() {
                    return;
                }
            }
        });
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(incoming),
                shutdown,
            )
            .await
            .map_err(|e| std::io::Error::other(e.to_string()));
        acceptor.abort();
        served
    }

    fn updates(&self) -> impl Stream<Item = X509Material> + Send + 'static {
        WatchStream::new(self.x509.clone()).filter_map(|m| m)
    }
}

/// Joins a client connection to the server side of an in-memory pipe: client frames through
/// the authority bridge, server frames back unchanged.
async fn bridge(client: tokio::net::UnixStream, pipe: tokio::io::DuplexStream) {
    let (client_read, mut client_write) = client.into_split();
    let (mut pipe_read, pipe_write) = tokio::io::split(pipe);
    let up = crate::authority_fix::forward_client_frames(client_read, pipe_write);
    let down = tokio::io::copy(&mut pipe_read, &mut client_write);
    // When the client side ends (or is refused), the pipe closes, the server ends the
    // connection, and the copy back to the client ends too.
    let (up, _) = tokio::join!(up, down);
    if let Err(e) = up {
        tracing::debug!(error = %e, "workload API client connection closed");
    }
}

fn check_security_header(req: Request<()>) -> Result<Request<()>, Status> {
    match req
        .metadata()
        .get(SECURITY_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some("true") => Ok(req),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

fn svid_response(m: &X509Material) -> pb::X509svidResponse {
    pb::X509svidResponse {
        svids: vec![pb::X509svid {
            spiffe_id: m.spiffe_id.to_string(),
            x509_svid: m.chain_der(),
            x509_svid_key: m.key_pkcs8_der.clone(),
            bundle: m.bundle_der.clone(),
            hint: String::new(),
        }],
        crl: vec![],
        federated_bundles: HashMap::new(),
    }
}

fn bundles_response(m: &X509Material) -> pb::X509BundlesResponse {
    pb::X509BundlesResponse {
        crl: vec![],
        bundles: HashMap::from([(m.trust_domain.to_string(), m.bundle_der.clone())]),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let stream = self.updates().map(|m| Ok(svid_response(&m)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_x509_bundles(
        &self,
        _req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let stream = self.updates().map(|m| Ok(bundles_response(&m)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let jwt = self.jwt()?;
        let req = req.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if !req.spiffe_id.is_empty() && req.spiffe_id != jwt.spiffe_id.as_str() {
            return Err(Status::permission_denied(format!(
                "this workload may only obtain JWT-SVIDs for {}",
                jwt.spiffe_id
            )));
        }
        let token = jwt
            .issuer
            .issue(&jwt.spiffe_id, &req.audience, jwt.clock.now(), jwt.ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::JwtsvidResponse {
            svids: vec![pb::Jwtsvid {
                spiffe_id: jwt.spiffe_id.to_string(),
                svid: token,
                hint: String::new(),
            }],
        }))
    }

    async fn fetch_jwt_bundles(
        &self,
        _req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let jwt = self.jwt()?;
        let response = pb::JwtBundlesResponse {
            bundles: HashMap::from([(
                jwt.spiffe_id.trust_domain_str().to_owned(),
                jwt.issuer.jwks().into_bytes(),
            )]),
        };
        // One answer now; the stream stays open for bundle changes (key rotation).
        let stream =
            futures::stream::once(async move { Ok(response) }).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        let jwt = self.jwt()?;
        let req = req.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let bundle = crate::jwt::JwtBundle::parse(&jwt.issuer.jwks())
            .map_err(|e| Status::internal(e.to_string()))?;
        let td = jwt.spiffe_id.trust_domain();
        let valid = crate::jwt::validate(&req.svid, &req.audience, &bundle, &td, jwt.clock.now())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id: valid.spiffe_id.to_string(),
            claims: Some(to_struct(valid.claims)),
        }))
    }
}

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(m) => Kind::StructValue(to_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Where a rotator obtains SVIDs: the CA in this process ([`LocalIssuer`]) or a control
/// plane across the network (the agent's client). The machine the request is made for is the
/// source's business: a remote control plane takes it from the agent's own machine SVID,
/// never from the request.
#[async_trait::async_trait]
pub trait SvidSource: Send + Sync {
    /// The trust domain SVIDs are issued in.
    fn trust_domain(&self) -> TrustDomain;
    /// Signs `csr_der` (refusals carry the CA's reason).
    async fn issue(&self, csr_der: &[u8]) -> Result<crate::ca::Svid, String>;
    /// The trust bundle as last known at `now` (concatenated DER).
    fn bundle_der(&self, now: ringfence_core::UnixTime) -> Vec<u8>;
    /// Changes whenever the trust bundle changes.
    fn subscribe_bundle(&self) -> watch::Receiver<u64>;
}

/// The audited CA in this process, requested for one machine.
#[derive(Debug, Clone)]
pub struct LocalIssuer {
    service: Arc<IssuanceService>,
    machine: MachineId,
}

impl LocalIssuer {
    /// Requests from `service` on behalf of `machine`.
    pub fn new(service: Arc<IssuanceService>, machine: MachineId) -> Self {
        Self { service, machine }
    }
}

#[async_trait::async_trait]
impl SvidSource for LocalIssuer {
    fn trust_domain(&self) -> TrustDomain {
        self.service.ca_set().trust_domain().clone()
    }
    async fn issue(&self, csr_der: &[u8]) -> Result<crate::ca::Svid, String> {
        self.service
            .issue(csr_der, &self.machine)
            .await
            .map_err(|e| e.to_string())
    }
    fn bundle_der(&self, now: ringfence_core::UnixTime) -> Vec<u8> {
        self.service.ca_set().bundle_der(now)
    }
    fn subscribe_bundle(&self) -> watch::Receiver<u64> {
        self.service.ca_set().subscribe_bundle()
    }
}

/// Obtains one workload's SVID from the CA (key generated here, CSR sent) and renews it at
/// half-life, publishing every new SVID to `out`. A failed renewal is retried every tenth of
/// the SVID lifetime while the old SVID stays in use until it expires (after which peers
/// refuse it: nothing here extends an SVID's life). Every issuance and refusal goes through
/// the audited [`IssuanceService`].
pub async fn run_rotator(
    service: Arc<IssuanceService>,
    machine: MachineId,
    spiffe_id: SpiffeId,
    clock: Arc<dyn Clock>,
    out: watch::Sender<Option<X509Material>>,
) {
    run_rotator_from(
        Arc::new(LocalIssuer::new(service, machine)),
        spiffe_id,
        clock,
        out,
    )
    .await;
}

/// [`run_rotator`] with any [`SvidSource`].
pub async fn run_rotator_from(
    source: Arc<dyn SvidSource>,
    spiffe_id: SpiffeId,
    clock: Arc<dyn Clock>,
    out: watch::Sender<Option<X509Material>>,
) {
    // Until the first SVID, retry quickly; afterwards every tenth of the SVID lifetime, so a
    // CA that comes back is noticed well within one rotation interval (half the lifetime).
    let mut retry = Duration::from_millis(200);
    let mut bundle = source.subscribe_bundle();
    loop {
        let wait = match obtain_from(source.as_ref(), &spiffe_id, clock.as_ref()).await {
            Ok((material, lifetime)) => {
                out.send_replace(Some(material));
                retry = (lifetime / 10).clamp(Duration::from_millis(100), Duration::from_secs(30));
                lifetime / 2
            }
            Err(e) => {
                tracing::warn!(error = %e, %spiffe_id, "SVID renewal failed; retrying in {retry:?}");
                retry
            }
        };
        bundle.borrow_and_update();
        // Wait on the Clock, not on the runtime's timer: renewals follow the same time the
        // certificates are issued and checked with (a manual clock in tests). A bundle change
        // (CA rotation) is pushed to the workload at once, with its current SVID.
        let deadline = clock.now().saturating_add(wait);
        while clock.now() < deadline {
            let step = deadline.since(clock.now()).min(CLOCK_POLL);
            tokio::select! {
                () = tokio::time::sleep(step) => {}
                changed = bundle.changed() => {
                    if changed.is_ok() {
                        bundle.borrow_and_update();
                        let now = clock.now();
                        out.send_modify(|m| {
                            if let Some(m) = m {
                                m.bundle_der = source.bundle_der(now);
                            }
                        });
                    }
                }
                () = out.closed() => return,
            }
        }
    }
}

/// How often a waiting rotator looks at its clock.
const CLOCK_POLL: Duration = Duration::from_millis(100);

/// One issuance from the CA in this process: a fresh key, a CSR, an SVID.
pub async fn obtain(
    service: &Arc<IssuanceService>,
    machine: &MachineId,
    spiffe_id: &SpiffeId,
    clock: &dyn Clock,
) -> Result<(X509Material, Duration), String> {
    obtain_from(
        &LocalIssuer::new(Arc::clone(service), machine.clone()),
        spiffe_id,
        clock,
    )
    .await
}

/// One issuance from `source`: a fresh key, a CSR, an SVID.
pub async fn obtain_from(
    source: &dyn SvidSource,
    spiffe_id: &SpiffeId,
    clock: &dyn Clock,
) -> Result<(X509Material, Duration), String> {
    let signing = |e: rcgen::Error| format!("cannot make the CSR: {e}");
    let key = KeyPair::generate().map_err(signing)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(signing)?;
    params.subject_alt_names = vec![SanType::URI(
        spiffe_id.as_str().try_into().map_err(signing)?,
    )];
    let csr = params.serialize_request(&key).map_err(signing)?;
    let svid = source.issue(csr.der()).await?;
    let now = clock.now();
    Ok((
        X509Material {
            spiffe_id: svid.spiffe_id,
            cert_der: svid.cert_der,
            intermediates: svid.intermediates,
            key_pkcs8_der: key.serialize_der(),
            bundle_der: source.bundle_der(now),
            trust_domain: source.trust_domain(),
        },
        svid.not_after.since(now),
    ))
}
