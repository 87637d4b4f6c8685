//! `ringfence identity ...`: the SPIFFE CA and a Workload API socket for one workload.
//!
//! The CA lives in `<data-dir>/identity/` (`ca.key` mode 0600, `ca.pem`, `trust-domain`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use ringfence_core::{Clock, MachineId, SpiffeId, SystemClock, TrustDomain, UnixTime};
use ringfence_identity::jwt::{DEFAULT_JWT_TTL, JwtIssuer};
use ringfence_identity::workload_api::{JwtContext, WorkloadApi, run_rotator};
use ringfence_identity::{
    Ca, CaSet, IssuanceAuthority, IssuanceAuthorization, IssuanceService, pem_certificate,
};
use tokio::sync::watch;

use crate::config::Settings;
use crate::exit;

/// Subcommands of `ringfence identity`.
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// The certificate authority
    #[command(subcommand)]
    Ca(CaCommand),
    /// Serve the SPIFFE Workload API for one workload on a unix socket, renewing its SVID at
    /// half-life, until interrupted (for tests and bootstrap; agents serve one per task)
    WorkloadApi {
        /// The socket to create
        #[arg(long)]
        socket: PathBuf,
        /// The workload's SPIFFE ID (the one identity this socket is authorized to serve)
        #[arg(long)]
        spiffe_id: String,
        /// SVID lifetime in seconds
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Print a certificate's SPIFFE ID, validity and whether this CA issued it
    Inspect {
        /// A PEM or DER certificate
        cert: PathBuf,
    },
}

/// `identity ca`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA (P-256 root) for a trust domain
    Init {
        /// The trust domain, e.g. example.org
        #[arg(long)]
        trust_domain: String,
        /// Validity of the root, in days
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// Print the trust bundle (PEM)
    Bundle,
}

/// Runs an `identity` subcommand.
pub async fn run(cmd: IdentityCommand, settings: &Settings) -> Result<u8> {
    let dir = settings.data_dir.join("identity");
    match cmd {
        IdentityCommand::Ca(CaCommand::Init { trust_domain, days }) => {
            if dir.join("ca.key").exists() {
                bail!(
                    "{} already exists: this data dir has a CA",
                    dir.join("ca.key").display()
                );
            }
            let td = TrustDomain::parse(&trust_domain).context("invalid --trust-domain")?;
            let ca = Ca::generate(
                td.clone(),
                SystemClock.now(),
                Duration::from_secs(days.saturating_mul(86_400)),
            )?;
            ca.save(&dir)
                .with_context(|| format!("cannot write the CA into {}", dir.display()))?;
            let jwt = JwtIssuer::generate(td.clone())?;
            write_secret_pem(&dir.join("jwt.key"), jwt.pkcs8())?;
            std::fs::write(dir.join("trust-domain"), format!("{td}\n"))?;
            print!("{}", pem_certificate(ca.certificate_der()));
            Ok(exit::SUCCESS)
        }
        IdentityCommand::Ca(CaCommand::Bundle) => {
            let ca = load_ca(&dir)?;
            print!("{}", pem_certificate(ca.certificate_der()));
            Ok(exit::SUCCESS)
        }
        IdentityCommand::WorkloadApi {
            socket,
            spiffe_id,
            ttl,
        } => {
            let ca = Arc::new(CaSet::new(
                load_ca(&dir)?.with_ttl(Duration::from_secs(ttl)),
            ));
            let id = SpiffeId::parse(&spiffe_id).context("invalid --spiffe-id")?;
            let machine = MachineId::parse("local").context("machine id")?;
            let authority: Arc<dyn IssuanceAuthority> = Arc::new(Given {
                machine: machine.clone(),
                spiffe_id: id.clone(),
            });
            let jwt = JwtContext {
                issuer: load_jwt(&dir, ca.trust_domain().clone())?,
                spiffe_id: id.clone(),
                ttl: DEFAULT_JWT_TTL,
                clock: Arc::new(SystemClock),
            };
            // Every issuance and refusal is recorded in the audit log.
            let audit = crate::audit_cmd::open_log(settings, &settings.data_dir.join("audit"))
                .await
                .context("the Workload API records every issuance in the audit log")?;
            let _publisher = audit.spawn_publisher();
            let service = Arc::new(IssuanceService::new(
                ca,
                authority,
                Arc::new(audit),
                Arc::new(SystemClock),
            )?);
            let (tx, rx) = watch::channel(None);
            let rotator = tokio::spawn(run_rotator(
                service,
                machine,
                id.clone(),
                Arc::new(SystemClock),
                tx,
            ));
            eprintln!("serving the Workload API for {id} on {}", socket.display());
            WorkloadApi::new(rx)
                .with_jwt(jwt)
                .serve(&socket, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .with_context(|| format!("cannot serve on {}", socket.display()))?;
            rotator.abort();
            let _ = std::fs::remove_file(&socket);
            Ok(exit::SUCCESS)
        }
        IdentityCommand::Inspect { cert } => inspect(&dir, &cert),
    }
}

/// The authorization given on the command line: this one identity, on this machine.
struct Given {
    machine: MachineId,
    spiffe_id: SpiffeId,
}

impl IssuanceAuthority for Given {
    fn authorize(
        &self,
        machine: &MachineId,
        spiffe_id: &SpiffeId,
    ) -> Result<IssuanceAuthorization, String> {
        if machine != &self.machine || spiffe_id != &self.spiffe_id {
            return Err(format!(
                "this socket is authorized for {} only",
                self.spiffe_id
            ));
        }
        Ok(IssuanceAuthorization {
            spiffe_id: spiffe_id.clone(),
            machine: machine.clone(),
            not_after: UnixTime::from_millis(u64::MAX),
        })
    }
}

fn write_secret_pem(path: &Path, pkcs8: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.to_vec())).as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn load_jwt(dir: &Path, td: TrustDomain) -> Result<JwtIssuer> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("jwt.key");
    let mode = std::fs::metadata(&path)
        .with_context(|| {
            format!(
                "no JWT key at {}: run `ringfence identity ca init`",
                path.display()
            )
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by other users: run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let parsed = pem::parse(std::fs::read(&path)?)
        .with_context(|| format!("{} is not PEM", path.display()))?;
    Ok(JwtIssuer::from_pkcs8(td, parsed.contents())?)
}

fn load_ca(dir: &Path) -> Result<Ca> {
    let td_text = std::fs::read_to_string(dir.join("trust-domain")).with_context(|| {
        format!(
            "no CA in {}: run `ringfence identity ca init --trust-domain ...`",
            dir.display()
        )
    })?;
    let td = TrustDomain::parse(td_text.trim()).context("invalid trust-domain file")?;
    Ok(Ca::load(dir, td)?)
}

fn inspect(dir: &Path, path: &Path) -> Result<u8> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let der = match pem::parse(&raw) {
        Ok(p) => p.contents().to_vec(),
        Err(_) => raw,
    };
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let mut ids = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = name {
                ids.push((*u).to_owned());
            }
        }
    }
    println!("spiffe id:  {}", ids.join(", "));
    println!("serial:     {}", cert.raw_serial_as_string());
    println!("not before: {}", cert.validity().not_before);
    println!("not after:  {}", cert.validity().not_after);
    let status = match load_ca(dir) {
        Ok(ca) => {
            let (_, ca_cert) = X509Certificate::from_der(ca.certificate_der())
                .map_err(|e| anyhow::anyhow!("CA certificate: {e}"))?;
            let signed = cert.verify_signature(Some(ca_cert.public_key())).is_ok();
            let now = i64::try_from(SystemClock.now().as_secs()).unwrap_or(i64::MAX);
            let valid = cert.validity().not_before.timestamp() <= now
                && now < cert.validity().not_after.timestamp();
            match (signed, valid) {
                (true, true) => "valid, issued by this CA".to_owned(),
                (true, false) => "issued by this CA, but outside its validity period".to_owned(),
                (false, _) => "NOT issued by this CA".to_owned(),
            }
        }
        Err(_) => "unknown (no CA in this data dir)".to_owned(),
    };
    println!("chain:      {status}");
    Ok(exit::SUCCESS)
}
