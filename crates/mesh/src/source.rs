//! The proxy's SVID from a SPIFFE Workload API socket: the one the agent gives each task, or
//! any other implementation of the standard API (a SPIRE agent's, say). The first X.509
//! context is awaited before the proxy listens; every later one (rotation, bundle change)
//! replaces the material in place, so new handshakes use it and live connections stay up. A
//! broken stream is opened again with backoff, keeping the last material meanwhile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use ringfence_core::{SpiffeId, TrustDomain};
use ringfence_identity::workload_api::X509Material;
use tokio::sync::watch;

/// Converts one X.509 context (its default SVID and that SVID's trust bundle).
pub fn material_of(ctx: &spiffe::X509Context) -> Result<X509Material, String> {
    let svid = ctx
        .default_svid()
        .ok_or("the Workload API sent no X.509-SVID")?;
    let spiffe_id = SpiffeId::parse(&svid.spiffe_id().to_string())
        .map_err(|e| format!("the Workload API's SVID: {e}"))?;
    let trust_domain = TrustDomain::parse(svid.spiffe_id().trust_domain_name())
        .map_err(|e| format!("the Workload API's SVID: {e}"))?;
    let bundle = ctx
        .bundle_set()
        .get(svid.spiffe_id().trust_domain())
        .ok_or_else(|| format!("the Workload API sent no bundle for {trust_domain}"))?;
    let mut chain = svid.cert_chain().iter();
    let cert_der = chain
        .next()
        .map(|c| c.as_ref().to_vec())
        .ok_or("the Workload API's SVID has no certificate")?;
    let bundle_der = bundle
        .authorities()
        .iter()
        .flat_map(|c| c.as_ref().iter().copied())
        .collect();
    Ok(X509Material {
        spiffe_id,
        cert_der,
        intermediates: chain.map(|c| c.as_ref().to_vec()).collect(),
        key_pkcs8_der: svid.private_key().as_ref().to_vec(),
        bundle_der,
        trust_domain,
    })
}

fn endpoint(socket: &Path) -> String {
    format!("unix:{}", socket.display())
}

type XStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<spiffe::X509Context, spiffe::WorkloadApiError>> + Send>,
>;

async fn stream(socket: &Path) -> Result<XStream, String> {
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(socket))
        .await
        .map_err(|e| format!("Workload API {}: {e}", socket.display()))?;
    let s = client
        .stream_x509_contexts()
        .await
        .map_err(|e| format!("Workload API {}: {e}", socket.display()))?;
    Ok(Box::pin(s))
}

/// The first material the socket sends, within `wait`; then the stream is followed in the
/// background into the returned channel.
pub async fn follow(
    socket: PathBuf,
    wait: Duration,
) -> Result<watch::Receiver<Option<X509Material>>, String> {
    let first = async {
        let mut s = stream(&socket).await?;
        match s.next().await {
            Some(Ok(ctx)) => Ok((material_of(&ctx)?, s)),
            Some(Err(e)) => Err(format!("Workload API {}: {e}", socket.display())),
            None => Err(format!(
                "Workload API {}: the stream ended before an SVID",
                socket.display()
            )),
        }
    };
    let (material, s) = tokio::time::timeout(wait, first).await.map_err(|_| {
        format!(
            "Workload API {}: no SVID within {wait:?} (is the task admitted and placed?)",
            socket.display()
        )
    })??;
    tracing::info!(spiffe_id = %material.spiffe_id, socket = %socket.display(), "mesh SVID from the Workload API");
    let pinned = material.spiffe_id.clone();
    let (tx, rx) = watch::channel(Some(material));
    tokio::spawn(keep_following(socket, s, tx, pinned));
    Ok(rx)
}

/// Follows the stream; an SVID for another SPIFFE ID than the first is refused (the proxy's
/// service, trust domain and policy were set up for that one).
async fn keep_following(
    socket: PathBuf,
    first: XStream,
    tx: watch::Sender<Option<X509Material>>,
    pinned: SpiffeId,
) {
    let mut current = Some(first);
    let mut backoff = Duration::from_millis(200);
    loop {
        let next = match current.as_mut() {
            Some(s) => s.next().await,
            None => None,
        };
        match next {
            Some(Ok(ctx)) => {
                backoff = Duration::from_millis(200);
                match material_of(&ctx) {
                    Ok(m) if m.spiffe_id != pinned => tracing::error!(
                        got = %m.spiffe_id,
                        expected = %pinned,
                        "Workload API sent an SVID for another identity: refused, the current one stays (restart the proxy to change identity)"
                    ),
                    Ok(m) => {
                        tracing::info!(spiffe_id = %m.spiffe_id, "mesh SVID rotated (Workload API)");
                        if tx.send(Some(m)).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "Workload API update ignored"),
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Workload API stream failed; reconnecting");
                current = None;
            }
            None => {
                current = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                match stream(&socket).await {
                    Ok(s) => current = Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "Workload API unreachable; keeping the last SVID");
                    }
                }
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}
