//! `ringfence server`: the control plane as a network service. It opens the Store, the audit
//! log and the CA in the data directory (creating the audit key and the CA on first start),
//! writes the trust bundle agents join with (`<data-dir>/identity/bundle.pem`) and a bootstrap
//! admin certificate (`<data-dir>/admin`, `/user/admin`, renewed while the server runs), then
//! serves the API until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use ringfence_bab::artifacts::ArtifactStore;
use ringfence_controlplane::server::{Bound, ServerParts, self_issue, serve};
use ringfence_controlplane::{ControlPlane, Settings as CpSettings};
use ringfence_core::{Clock, SystemClock};
use ringfence_identity::files;

use crate::config::Settings;
use crate::exit;

/// `ringfence server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Where the gRPC API listens (mTLS)
    #[arg(long, default_value = "127.0.0.1:7443", value_name = "ADDR")]
    listen: SocketAddr,
    /// Where /healthz and /metrics are served (plain HTTP; keep it on a private address)
    #[arg(long, default_value = "127.0.0.1:7444", value_name = "ADDR")]
    http: SocketAddr,
    /// Trust domain of the CA created on first start
    #[arg(long, default_value = "ringfence.local", value_name = "NAME")]
    trust_domain: String,
    /// Re-verify every running job at least this often (and at every policy change)
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    reverify: Duration,
    /// A machine not heard from for this long is considered gone; its tasks move
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    machine_timeout: Duration,
    /// The organisation's people and their enrolled keys (`[people.<name>] public_key =
    /// "<PEM>"`), read at every login [default: <data-dir>/people.toml]
    #[arg(long, value_name = "FILE")]
    people: Option<std::path::PathBuf>,
    /// Lifetime of the SVIDs the CA issues (user certificates included)
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    svid_ttl: Duration,
}

/// The bootstrap admin's name.
const ADMIN: &str = "admin";

pub async fn run(args: ServerArgs, settings: &Settings) -> Result<u8> {
    let stop_rx = crate::stop_on_signals()?;
    let data = &settings.data_dir;
    std::fs::create_dir_all(data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    let audit_dir = data.join("audit");
    crate::audit_cmd::ensure_log_key(&audit_dir)?;
    let id_dir = data.join("identity");
    if crate::identity_cmd::ensure_ca(&id_dir, &args.trust_domain)? {
        println!(
            "created the CA for {} in {}",
            args.trust_domain,
            id_dir.display()
        );
    }
    let store = ringfence_store::open_store(&settings.store, data)
        .await
        .context("cannot open the store")?;
    let log = crate::audit_cmd::open_log_on(Arc::clone(&store), &audit_dir).await?;
    let _publisher = log.spawn_publisher();
    let audit: Arc<dyn ringfence_audit::AuditSink> = Arc::new(log);
    let gate = crate::bab_cmd::gate_with(settings, Arc::clone(&store), Arc::clone(&audit))?;
    let ca = Arc::new(crate::identity_cmd::load_set(&id_dir, args.svid_ttl)?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut cp_settings = CpSettings::new(ca.trust_domain().clone());
    cp_settings.machine_timeout = args.machine_timeout;
    let cp = ControlPlane::new(
        Arc::clone(&store),
        Arc::clone(&audit),
        gate,
        Arc::clone(&clock),
        cp_settings,
    )?;
    let parts = ServerParts {
        cp,
        store,
        audit,
        ca: Arc::clone(&ca),
        artifacts: ArtifactStore::open(&data.join("artifacts"))?,
        scratch: data.join("server-scratch"),
        people: Some(
            args.people
                .clone()
                .unwrap_or_else(|| data.join("people.toml")),
        ),
        clock: Arc::clone(&clock),
        tokens: Arc::new(
            ringfence_controlplane::server::token_service(&id_dir, ca.trust_domain())
                .map_err(anyhow::Error::msg)?,
        ),
    };
    let (bound, server, renewer) = start(
        parts,
        args.listen,
        Some(args.http),
        Some(args.reverify),
        args.svid_ttl,
        data,
        stop_rx,
    )
    .await?;
    println!(
        "ringfence server: API on {} (mTLS as spiffe://{}/ringfence/controlplane)",
        bound.api,
        ca.trust_domain()
    );
    if let Some(h) = bound.http {
        println!("  health and metrics: http://{h}/healthz, http://{h}/metrics");
    }
    let bundle = id_dir.join(files::BUNDLE);
    println!("  trust bundle for agents: {}", bundle.display());
    println!(
        "  bootstrap admin certificate (/user/{ADMIN}): {}",
        data.join("admin").display()
    );
    println!(
        "  a machine joins with: ringfence --server {} machine token <name>, then on it: ringfence agent --server {} --machine <name> --bundle {} --join-token <token>",
        bound.api,
        bound.api,
        bundle.display()
    );
    let r = server.await;
    renewer.abort();
    match r {
        Ok(Ok(())) => {
            println!("ringfence server: stopped");
            Ok(exit::SUCCESS)
        }
        Ok(Err(e)) => Err(anyhow::anyhow!(e)),
        Err(e) => Err(anyhow::anyhow!("the server failed: {e}")),
    }
}

/// Starts the API over `parts`: writes the trust bundle agents join with
/// (`<data>/identity/bundle.pem`) and the bootstrap admin's certificate (`<data>/admin`,
/// renewed at half of `svid_ttl` by the returned task), then serves until `stop`. Returns
/// once it listens (or with the reason it cannot).
pub(crate) async fn start(
    parts: ServerParts,
    listen: SocketAddr,
    http: Option<SocketAddr>,
    reverify: Option<Duration>,
    svid_ttl: Duration,
    data: &std::path::Path,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(
    Bound,
    tokio::task::JoinHandle<std::result::Result<(), String>>,
    tokio::task::JoinHandle<()>,
)> {
    let (ca, audit, clock) = (
        Arc::clone(&parts.ca),
        Arc::clone(&parts.audit),
        Arc::clone(&parts.clock),
    );
    let bundle = data.join("identity").join(files::BUNDLE);
    std::fs::write(&bundle, files::bundle_pem(&ca.bundle_der(clock.now())))
        .with_context(|| format!("cannot write {}", bundle.display()))?;
    let admin_dir = data.join("admin");
    let admin_id = ca.trust_domain().workload(&["user", ADMIN])?;
    let issue_admin = move || {
        let (ca, audit, clock, dir, id) = (
            Arc::clone(&ca),
            Arc::clone(&audit),
            Arc::clone(&clock),
            admin_dir.clone(),
            admin_id.clone(),
        );
        async move {
            let m = self_issue(&ca, &audit, &clock, "controlplane", &id)
                .await
                .map_err(anyhow::Error::msg)?;
            files::save(&dir, &m).with_context(|| format!("{}", dir.display()))
        }
    };
    issue_admin()
        .await
        .context("cannot issue the bootstrap admin certificate")?;
    let renew_every = svid_ttl / 2;
    let renewer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(renew_every).await;
            if let Err(e) = issue_admin().await {
                tracing::warn!(error = %format!("{e:#}"), "cannot renew the bootstrap admin certificate");
            }
        }
    });
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel::<Bound>();
    let server = tokio::spawn(serve(parts, listen, http, reverify, bound_tx, stop));
    match bound_rx.await {
        Ok(b) => Ok((b, server, renewer)),
        Err(_) => {
            renewer.abort();
            match server.await {
                Ok(Err(e)) => Err(anyhow::anyhow!(e)),
                Ok(Ok(())) => Err(anyhow::anyhow!("the API stopped before it listened")),
                Err(e) => Err(anyhow::anyhow!("the API failed: {e}")),
            }
        }
    }
}
