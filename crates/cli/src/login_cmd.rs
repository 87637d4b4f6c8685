//! `ringfence login`: a short-lived user certificate (`spiffe://<td>/user/<name>`) for a key
//! enrolled in the organisation's people file. The enrolled key never leaves this machine: it
//! signs a login (a DSSE envelope binding the name, the trust domain, the time and the CSR's
//! digest); the certificate carries a fresh key made here, kept with it (mode 0600).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use ringfence_api::pb;
use ringfence_api::pb::people_client::PeopleClient;
use ringfence_controlplane::server::{LOGIN_PAYLOAD_TYPE, LoginClaims};
use ringfence_core::{Clock, SystemClock, TrustDomain};
use ringfence_identity::files;
use ringfence_identity::workload_api::X509Material;
use ringfence_provenance::statement::Sha256;

use crate::client::call_error;
use crate::config::Settings;
use crate::exit;

/// `ringfence login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Your name, as enrolled
    #[arg(long)]
    name: String,
    /// Your enrolled private key (PKCS#8 PEM, from `ringfence attest keygen`)
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The control plane's trust bundle [default: <data-dir>/identity/bundle.pem]
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// Trust domain
    #[arg(long, default_value = "ringfence.local", value_name = "NAME")]
    trust_domain: String,
    /// Where to keep the certificate [default: <data-dir>/users/<name>]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub async fn run(args: LoginArgs, settings: &Settings) -> Result<u8> {
    let server = settings
        .server
        .context("login asks a control plane: pass --server ADDR (or set RINGFENCE_SERVER)")?;
    let td = TrustDomain::parse(&args.trust_domain)?;
    let id = td.workload(&["user", &args.name])?;
    let enrolled = crate::attest_cmd::load_key(&args.key)?;
    let bundle_path = args
        .bundle
        .clone()
        .unwrap_or_else(|| settings.data_dir.join("identity").join(files::BUNDLE));
    let bundle = files::read_bundle(&bundle_path).map_err(anyhow::Error::msg)?;
    // The certificate's own key, and a CSR for it.
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![rcgen::SanType::URI(id.as_str().try_into()?)];
    let csr = params.serialize_request(&key)?.der().to_vec();
    let claims = LoginClaims {
        name: args.name.clone(),
        trust_domain: td.to_string(),
        time_ms: SystemClock.now().as_millis(),
        csr_sha256: Sha256::of(&csr).hex().to_owned(),
    };
    let envelope = ringfence_provenance::dsse::sign(
        LOGIN_PAYLOAD_TYPE,
        &serde_json::to_vec(&claims)?,
        &[&enrolled],
    )?;
    // No certificate to present yet: the bundle only, to check the server with.
    let (_keep, rx) =
        tokio::sync::watch::channel(Some(X509Material::bundle_only(id.clone(), bundle)));
    let mut people = PeopleClient::new(
        ringfence_api::transport::control_plane_channel(server, rx, Arc::new(SystemClock))
            .map_err(anyhow::Error::msg)?,
    );
    let reply = people
        .login(pb::LoginRequest {
            envelope: serde_json::to_vec(&envelope)?,
            csr_der: csr,
        })
        .await
        .map_err(|s| call_error("login", s))?
        .into_inner();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| settings.data_dir.join("users").join(&args.name));
    files::save(
        &out,
        &X509Material {
            spiffe_id: id.clone(),
            cert_der: reply.cert_der,
            intermediates: reply.intermediates,
            key_pkcs8_der: key.serialize_der(),
            bundle_der: reply.bundle_der,
            trust_domain: td,
        },
    )
    .with_context(|| format!("cannot keep the certificate in {}", out.display()))?;
    println!(
        "logged in as {id} until {}",
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(reply.not_after_ms)
        )
    );
    println!(
        "  use it with: ringfence --server {server} --credentials {} ...",
        out.display()
    );
    Ok(exit::SUCCESS)
}
