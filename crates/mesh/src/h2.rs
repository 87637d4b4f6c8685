//! HTTP/2 (gRPC included) through both sides, with hyper. The same checks as HTTP/1.1, in the
//! same order, on the pseudo-headers hyper has parsed: the method, `:path` through the one
//! normalizer, `:authority` (or `Host`) against the service's name, the token and its chain,
//! the Cedar decision. A request with `content-type: application/grpc…` is decided as
//! `Action::"grpc"` with its service and method, and refused the gRPC way too (`grpc-status`
//! 7 or 16 with `grpc-message`), so gRPC clients see a status rather than a broken stream.
//!
//! The application side speaks HTTP/2 without TLS (prior knowledge, `h2c`) on loopback; one
//! HTTP/2 connection per upstream is shared by all streams and opened again when it closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ringfence_audit::Decision as AuditDecision;
use ringfence_core::SpiffeId;
use ringfence_identity::txn;
use ringfence_policy::{
    AccessRequest, Action, Method, Refusal, ServiceName, check_authority, grpc_call,
    normalize_target,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;

use crate::proxy::{Mesh, OWN_FIELDS};
use crate::telemetry::Outcome;

/// A response body.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// The HTTP/2 connection preface a client sends first.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The answer to a refused request: plain text, and for gRPC the status in trailers-only form.
fn refusal(r: &Refusal, grpc: bool) -> Response<Body> {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut b = Response::builder().status(if grpc { StatusCode::OK } else { status });
    if grpc {
        // PERMISSION_DENIED for policy, UNAUTHENTICATED for tokens, INVALID_ARGUMENT else.
        let code = match r.status {
            403 => "7",
            401 => "16",
            502..=504 => "14",
            _ => "3",
        };
        b = b
            .header("content-type", "application/grpc")
            .header("grpc-status", code)
            .header(
                "grpc-message",
                percent_encode_message(&format!("ringfence: {}", r.caller_message())),
            );
        return b
            .body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed())
            .unwrap_or_default();
    }
    b.header("content-type", "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(format!("ringfence: {}\n", r.caller_message())))
                .map_err(|n| match n {})
                .boxed(),
        )
        .unwrap_or_default()
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, the rest escaped.
fn percent_encode_message(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Concurrent streams one connection may open.
pub const MAX_STREAMS: u32 = 128;

/// The HTTP/2 server settings both sides use: a capped head and stream count, and pings that
/// close a connection whose peer stopped answering.
fn server_builder() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.max_header_list_size(crate::h1::MAX_HEAD as u32)
        .max_concurrent_streams(MAX_STREAMS)
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    b
}

/// Requests of one connection in flight, and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    since: std::sync::Mutex<std::time::Instant>,
}

/// Counts a request in flight until dropped (also when the request is cancelled).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> Self {
        a.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(Arc::clone(a))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Serves one HTTP/2 connection with `handle` for each request. A connection with no request
/// in flight for `idle` is shut down gracefully (GOAWAY; streams already open would finish),
/// as an HTTP/1.1 connection is closed after `idle` without a request: pings alone keep a
/// connection alive only as long as its peer answers them, which an idle peer does forever.
async fn serve_h2<S, H, Fut>(io: S, idle: std::time::Duration, handle: H)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Arc::new(Activity {
        in_flight: std::sync::atomic::AtomicUsize::new(0),
        since: std::sync::Mutex::new(std::time::Instant::now()),
    });
    let handle = Arc::new(handle);
    let counted = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = InFlight::new(&counted);
        let fut = handle(req);
        async move {
            let resp = fut.await;
            drop(guard);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = server_builder().serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let tick = (idle / 4).clamp(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_secs(5),
    );
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = tokio::time::sleep(tick) => {
                let quiet = activity.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0
                    && activity
                        .since
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .elapsed()
                        >= idle;
                if quiet {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                    return;
                }
            }
        }
    }
}

/// One lazily opened, shared HTTP/2 connection, and when a request last started on it.
#[derive(Debug, Default)]
pub struct Upstream(
    Mutex<
        Option<(
            hyper::client::conn::http2::SendRequest<Incoming>,
            std::time::Instant,
        )>,
    >,
);

impl Upstream {
    /// The shared connection, or a new one from `open` when there is none, it closed, or no
    /// request started on it for `fresh_for`: a server closes a connection idle for its own
    /// idle time, and a request sent just as it does would fail, so the connection is left
    /// well before (half the proxy's own idle time; both proxies have the same one).
    async fn sender<S, F, Fut>(
        &self,
        open: F,
        fresh_for: std::time::Duration,
    ) -> Result<hyper::client::conn::http2::SendRequest<Incoming>, Refusal>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<S, Refusal>>,
    {
        let mut slot = self.0.lock().await;
        if let Some((s, used)) = slot.as_mut()
            && !s.is_closed()
            && used.elapsed() < fresh_for
        {
            *used = std::time::Instant::now();
            return Ok(s.clone());
        }
        let io = open().await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| Refusal {
                status: 502,
                reason: format!("HTTP/2 handshake upstream: {e}"),
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *slot = Some((sender.clone(), std::time::Instant::now()));
        Ok(sender)
    }
}

/// Rebuilds `req` for upstream with `path`, dropping `drop` and adding `extra`.
fn rebuild(
    req: Request<Incoming>,
    authority: &str,
    path: &str,
    drop: &[&str],
    extra: &[(&str, Vec<u8>)],
) -> Result<Request<Incoming>, Refusal> {
    let (mut parts, body) = req.into_parts();
    let uri = hyper::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| Refusal {
            status: 400,
            reason: format!("request target: {e}"),
        })?;
    parts.uri = uri;
    for d in drop {
        parts.headers.remove(*d);
    }
    parts.headers.remove(hyper::header::HOST);
    for (n, v) in extra {
        let name = hyper::header::HeaderName::from_bytes(n.as_bytes()).map_err(|e| Refusal {
            status: 500,
            reason: e.to_string(),
        })?;
        let value = hyper::header::HeaderValue::from_bytes(v).map_err(|e| Refusal {
            status: 500,
            reason: e.to_string(),
        })?;
        parts.headers.insert(name, value);
    }
    Ok(Request::from_parts(parts, body))
}

impl Mesh {
    /// Serves one inbound HTTP/2 connection from `peer`; admitted requests go to the
    /// application at `forward` over h2c.
    pub(crate) async fn inbound_h2<S>(self: Arc<Self>, io: S, peer: SpiffeId, forward: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let upstream = Arc::new(Upstream::default());
        let idle = self.limits().idle;
        serve_h2(io, idle, move |req: Request<Incoming>| {
            let this = Arc::clone(&self);
            let peer = peer.clone();
            let upstream = Arc::clone(&upstream);
            async move {
                this.inbound_h2_request(req, &peer, forward, &upstream)
                    .await
            }
        })
        .await;
    }

    async fn inbound_h2_request(
        &self,
        req: Request<Incoming>,
        peer: &SpiffeId,
        forward: SocketAddr,
        upstream: &Upstream,
    ) -> Response<Body> {
        let grpc = is_grpc(&req);
        let raw_target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let raw_action = format!(
            "{} {}",
            req.method(),
            raw_target.chars().take(128).collect::<String>()
        );
        let checked = (|| {
            let method = Method::parse(req.method().as_str())?;
            let target = normalize_target(&raw_target)?;
            let authority = req
                .uri()
                .authority()
                .map(|a| a.as_str().to_owned())
                .or_else(|| {
                    req.headers()
                        .get(hyper::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                });
            check_authority(authority.as_deref(), &self.service().to_string())?;
            let one = |name: &str| -> Result<Option<Vec<u8>>, Refusal> {
                let mut it = req.headers().get_all(name).iter();
                let first = it.next().map(|v| v.as_bytes().to_vec());
                if it.next().is_some() {
                    return Err(Refusal {
                        status: 400,
                        reason: format!("more than one {name} field"),
                    });
                }
                Ok(first)
            };
            let user = self.verify_ticket(
                peer,
                one(txn::TOKEN_HEADER)?.as_deref(),
                one(txn::CHAIN_HEADER)?.as_deref(),
            )?;
            Ok::<_, Refusal>((method, target, user))
        })();
        let (method, target, user) = match checked {
            Ok(x) => x,
            Err(r) => {
                self.refused(peer, &raw_action, &r, Outcome::Refused);
                return refusal(&r, grpc);
            }
        };
        // gRPC is POST only: another method with a gRPC content type is decided as the HTTP
        // request it is, so a caller cannot pick its Cedar action by its content type.
        let call = if grpc && method == Method::Post {
            grpc_call(&target.path)
        } else {
            None
        };
        let action = match call {
            Some((service, m)) => Action::Grpc {
                path: &target.path,
                service,
                method: m,
            },
            None => Action::Http {
                method,
                path: &target.path,
            },
        };
        let action_text = action.describe();
        let decision = self.policy().current().decide(&AccessRequest {
            caller: peer,
            callee: self.service(),
            action,
            user: user.as_ref(),
        });
        if !decision.allowed {
            let r = Refusal::denied(&decision.reason);
            self.refused(peer, &action_text, &r, Outcome::Deny);
            return refusal(&r, grpc);
        }
        let outcome = if decision.denied_by_policy {
            Outcome::DryRunDeny
        } else {
            Outcome::Allow
        };
        let mut extra: Vec<(&str, Vec<u8>)> =
            vec![("ringfence-caller", peer.as_str().as_bytes().to_vec())];
        if let Some(u) = &user {
            extra.push(("ringfence-user", u.subject.as_bytes().to_vec()));
        }
        let authority = self.service().to_string();
        let forwarded = match rebuild(
            req,
            &authority,
            &target.to_origin_form(),
            &OWN_FIELDS,
            &extra,
        ) {
            Ok(r) => r,
            Err(r) => return refusal(&r, grpc),
        };
        let sender = upstream
            .sender(
                || async move {
                    self.connect_local(forward).await.map_err(|e| {
                        // The port is for the operator, not the caller.
                        tracing::warn!(port = %forward, error = %e, "the service's local port does not answer");
                        Refusal {
                            status: 502,
                            reason: "the service does not answer on its local port".into(),
                        }
                    })
                },
                self.limits().idle / 2,
            )
            .await;
        let response = self.send_within(sender, forwarded, "the service").await;
        match response {
            Ok(resp) => {
                let status = resp.status().as_u16();
                self.allowed(peer, &action_text, outcome, status, &decision.reason);
                resp.map(BodyExt::boxed)
            }
            Err(r) => {
                self.refused(peer, &action_text, &r, Outcome::Refused);
                refusal(&r, grpc)
            }
        }
    }

    /// Serves one outbound HTTP/2 connection from the local workload (prior knowledge).
    pub(crate) async fn outbound_h2<S>(self: Arc<Self>, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let idle = self.limits().idle;
        serve_h2(io, idle, move |req: Request<Incoming>| {
            let this = Arc::clone(&self);
            async move { this.outbound_h2_request(req).await }
        })
        .await;
    }

    async fn outbound_h2_request(&self, req: Request<Incoming>) -> Response<Body> {
        let grpc = is_grpc(&req);
        let me = self.id().clone();
        let checked = (|| {
            Method::parse(req.method().as_str())?;
            let target = normalize_target(
                req.uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or_default(),
            )?;
            let authority = req
                .uri()
                .authority()
                .map(|a| a.host().to_owned())
                .or_else(|| {
                    req.headers()
                        .get(hyper::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(|h| h.rsplit_once(':').map_or(h, |(a, _)| a).to_owned())
                })
                .ok_or_else(|| Refusal {
                    status: 400,
                    reason: "missing :authority: name the service as <service>.<namespace>".into(),
                })?;
            let service = ServiceName::parse(&authority).map_err(|_| Refusal {
                status: 400,
                reason: format!(
                    ":authority {authority:?} does not name a mesh service <service>.<namespace> (lower case)"
                ),
            })?;
            for name in [txn::TOKEN_HEADER, txn::CHAIN_HEADER] {
                if req.headers().get_all(name).iter().nth(1).is_some() {
                    return Err(Refusal {
                        status: 400,
                        reason: format!("more than one {name} field"),
                    });
                }
            }
            let mut extra: Vec<(&str, Vec<u8>)> = Vec::new();
            if let Some(token) = req.headers().get(txn::TOKEN_HEADER) {
                let link = self.link_for(token.as_bytes(), &service)?;
                let chain = match req.headers().get(txn::CHAIN_HEADER) {
                    Some(c) if !c.is_empty() => {
                        format!("{},{link}", String::from_utf8_lossy(c.as_bytes()))
                    }
                    _ => link,
                };
                extra.push((txn::CHAIN_HEADER, chain.into_bytes()));
            }
            Ok::<_, Refusal>((target, service, extra))
        })();
        let (target, service, extra) = match checked {
            Ok(x) => x,
            Err(r) => {
                self.telemetry()
                    .count(me.as_str(), "?", Outcome::Refused, r.status);
                return refusal(&r, grpc);
            }
        };
        let name = service.to_string();
        let forwarded = match rebuild(
            req,
            &name,
            &target.to_origin_form(),
            &[txn::CHAIN_HEADER],
            &extra,
        ) {
            Ok(r) => r,
            Err(r) => return refusal(&r, grpc),
        };
        let upstream = self.h2_upstream(&service);
        let sender = upstream
            .sender(
                || async { self.connect_alpn(&service, b"h2").await },
                self.limits().idle / 2,
            )
            .await;
        let response = self.send_within(sender, forwarded, &name).await;
        match response {
            Ok(resp) => {
                self.telemetry()
                    .count(me.as_str(), &name, Outcome::Allow, resp.status().as_u16());
                resp.map(BodyExt::boxed)
            }
            Err(r) => {
                self.telemetry()
                    .count(me.as_str(), &name, Outcome::Refused, r.status);
                refusal(&r, grpc)
            }
        }
    }

    /// Sends `req` on the upstream connection (if there is one) and waits for the response
    /// head within the response limit; `who` names the upstream in refusals.
    async fn send_within(
        &self,
        sender: Result<hyper::client::conn::http2::SendRequest<Incoming>, Refusal>,
        req: Request<Incoming>,
        who: &str,
    ) -> Result<Response<Incoming>, Refusal> {
        let mut s = sender?;
        let wait = self.limits().response;
        match tokio::time::timeout(wait, s.send_request(req)).await {
            Ok(r) => r.map_err(|e| Refusal {
                status: 502,
                reason: format!("{who} did not answer: {e}"),
            }),
            Err(_) => Err(Refusal {
                status: 504,
                reason: format!("{who} did not answer within {wait:?}"),
            }),
        }
    }

    /// Counts and audits a refusal (HTTP/2 side).
    fn refused(&self, peer: &SpiffeId, action: &str, r: &Refusal, outcome: Outcome) {
        self.telemetry().count(
            peer.as_str(),
            &self.service().to_string(),
            outcome,
            r.status,
        );
        self.telemetry().audit(
            self.audit_event(
                peer,
                format!("{} {action}", self.service()),
                AuditDecision::Deny,
                &r.reason,
            )
            .with_detail("status", r.status.to_string()),
        );
    }

    /// Counts and (sampled) audits an admitted request (HTTP/2 side).
    fn allowed(&self, peer: &SpiffeId, action: &str, outcome: Outcome, status: u16, reason: &str) {
        self.telemetry()
            .count(peer.as_str(), &self.service().to_string(), outcome, status);
        let target = format!("{} {action}", self.service());
        if outcome == Outcome::DryRunDeny {
            self.telemetry().audit(self.audit_event(
                peer,
                target,
                AuditDecision::WouldDeny,
                reason,
            ));
        } else {
            self.telemetry()
                .audit_allow(|| self.audit_event(peer, target, AuditDecision::Allow, reason));
        }
    }
}
