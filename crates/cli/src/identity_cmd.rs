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
use ringfence_identity::tls::split_der_certificates;
use ringfence_identity::workload_api::{JwtContext, WorkloadApi, run_rotator};
use ringfence_identity::{
    Ca, CaSet, IssuanceAuthority, IssuanceAuthorization, IssuanceService, SoftwareKeyFile,
    pem_certificate,
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
    /// Issue an X.509-SVID for a CSR (bootstrap and tests), under the authorization given
    /// here, recorded in the audit log; prints the certificate (PEM)
    Issue {
        /// The CSR (PEM or DER); its key must be ECDSA P-256
        #[arg(long)]
        csr: PathBuf,
        /// The SPIFFE ID authorized (the CSR must ask for exactly this)
        #[arg(long)]
        spiffe_id: String,
        /// The machine the SVID is for
        #[arg(long, default_value = "local")]
        machine: String,
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
    /// Create the CA for a trust domain: a new P-256 root, or an intermediate under an
    /// upstream root given as files
    Init {
        /// The trust domain, e.g. example.org
        #[arg(long)]
        trust_domain: String,
        /// Validity of a new root, in days
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// An intermediate CA certificate (PEM) signed by the upstream root
        #[arg(long, requires_all = ["intermediate_key", "upstream_bundle"])]
        intermediate_cert: Option<PathBuf>,
        /// The intermediate's private key (PKCS#8 PEM, mode 0600)
        #[arg(long, requires = "intermediate_cert")]
        intermediate_key: Option<PathBuf>,
        /// The upstream root certificate(s) (PEM): the trust bundle
        #[arg(long, requires = "intermediate_cert")]
        upstream_bundle: Option<PathBuf>,
    },
    /// Print the trust bundle (PEM): the active CA, a prepared next CA, and former CAs whose
    /// SVIDs may still be valid
    Bundle,
    /// Rotate the CA key with overlap: --prepare puts a new CA in the bundle without signing;
    /// --activate (at least one SVID lifetime later) makes it sign
    Rotate {
        /// Step 1: make the next CA and publish it in the bundle
        #[arg(
            long,
            conflicts_with = "activate",
            required_unless_present = "activate"
        )]
        prepare: bool,
        /// Step 2: the prepared CA starts signing; the old one stays trusted while its SVIDs live
        #[arg(long)]
        activate: bool,
        /// Validity of a new root, in days
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

/// Runs an `identity` subcommand.
pub async fn run(cmd: IdentityCommand, settings: &Settings) -> Result<u8> {
    let dir = settings.data_dir.join("identity");
    match cmd {
        IdentityCommand::Ca(CaCommand::Init {
            trust_domain,
            days,
            intermediate_cert,
            intermediate_key,
            upstream_bundle,
        }) => {
            if dir.join("ca.key").exists() {
                bail!(
                    "{} already exists: this data dir has a CA",
                    dir.join("ca.key").display()
                );
            }
            let td = TrustDomain::parse(&trust_domain).context("invalid --trust-domain")?;
            let ca = match (intermediate_cert, intermediate_key, upstream_bundle) {
                (Some(cert), Some(key), Some(upstream)) => {
                    Ca::load_intermediate(&SoftwareKeyFile::new(key), &cert, &upstream, td.clone())
                        .context(
                            "the intermediate CA files do not form a CA under the upstream root",
                        )?
                }
                _ => Ca::generate(
                    td.clone(),
                    SystemClock.now(),
                    Duration::from_secs(days.saturating_mul(86_400)),
                )?,
            };
            let cert_pem: String = ca
                .trust_anchors()
                .iter()
                .map(|c| pem_certificate(c))
                .collect();
            save_new_ca(&dir, ca)?;
            print!("{cert_pem}");
            Ok(exit::SUCCESS)
        }
        IdentityCommand::Ca(CaCommand::Bundle) => {
            let set = load_set(&dir, Duration::from_secs(3600))?;
            for cert in split_der_certificates(&set.bundle_der(SystemClock.now())) {
                print!("{}", pem_certificate(cert.as_ref()));
            }
            Ok(exit::SUCCESS)
        }
        IdentityCommand::Ca(CaCommand::Rotate {
            prepare,
            activate,
            days,
        }) => {
            let set = load_set(&dir, Duration::from_secs(3600))?;
            let now = SystemClock.now();
            if prepare {
                set.prepare_next(now, Duration::from_secs(days.saturating_mul(86_400)))?;
                eprintln!(
                    "the next CA is in the trust bundle; run `ringfence identity ca rotate --activate` after at least one SVID lifetime"
                );
            } else if activate {
                set.activate_next(now)?;
                eprintln!(
                    "the new CA signs from now on; the old one stays in the bundle until its SVIDs have expired"
                );
            }
            set.save(&dir)?;
            Ok(exit::SUCCESS)
        }
        IdentityCommand::Issue {
            csr,
            spiffe_id,
            machine,
            ttl,
        } => {
            let set = Arc::new(load_set(&dir, Duration::from_secs(ttl))?);
            let raw =
                std::fs::read(&csr).with_context(|| format!("cannot read {}", csr.display()))?;
            let der = match pem::parse(&raw) {
                Ok(p) => p.contents().to_vec(),
                Err(_) => raw,
            };
            let machine = MachineId::parse(&machine).context("invalid --machine")?;
            let authority = Arc::new(Given {
                machine: machine.clone(),
                spiffe_id: SpiffeId::parse(&spiffe_id).context("invalid --spiffe-id")?,
            });
            let audit = crate::audit_cmd::open_log(settings, &settings.data_dir.join("audit"))
                .await
                .context("issuance is recorded in the audit log")?;
            let service = IssuanceService::new(
                set,
                authority,
                Arc::new(audit.clone()),
                Arc::new(SystemClock),
            )?;
            let svid = service.issue(&der, &machine).await?;
            audit.publish_checkpoint().await?;
            print!("{}", pem_certificate(&svid.cert_der));
            Ok(exit::SUCCESS)
        }
        IdentityCommand::WorkloadApi {
            socket,
            spiffe_id,
            ttl,
        } => {
            let ca = Arc::new(load_set(&dir, Duration::from_secs(ttl))?);
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
    // The authorization named on the command line, whatever was asked: the CA itself then
    // refuses a CSR for another identity or a request from another machine, with its own
    // precise messages.
    fn authorize(
        &self,
        _machine: &MachineId,
        _spiffe_id: &SpiffeId,
    ) -> Result<IssuanceAuthorization, String> {
        Ok(IssuanceAuthorization {
            spiffe_id: self.spiffe_id.clone(),
            machine: self.machine.clone(),
            not_after: UnixTime::from_millis(u64::MAX),
        })
    }
}

/// Creates a CA for `trust_domain` in `dir` unless there is one; whether it made one.
pub(crate) fn ensure_ca(dir: &Path, trust_domain: &str) -> Result<bool> {
    if dir.join("ca.key").exists() {
        return Ok(false);
    }
    let td = TrustDomain::parse(trust_domain)?;
    let ca = Ca::generate(
        td,
        ringfence_core::Clock::now(&ringfence_core::SystemClock),
        Duration::from_secs(365 * 86_400),
    )?;
    save_new_ca(dir, ca)?;
    Ok(true)
}

/// Writes a new CA into `dir`: its key and certificate, a JWT signing key, the trust domain.
pub(crate) fn save_new_ca(dir: &Path, ca: Ca) -> Result<()> {
    let td = ca.trust_domain().clone();
    CaSet::new(ca)
        .save(dir)
        .with_context(|| format!("cannot write the CA into {}", dir.display()))?;
    let jwt = JwtIssuer::generate(td.clone())?;
    write_secret_pem(&dir.join("jwt.key"), jwt.pkcs8())?;
    std::fs::write(dir.join("trust-domain"), format!("{td}\n"))?;
    Ok(())
}

fn write_secret_pem(path: &Path, pkcs8: &[u8]) -> Result<()> {
    let pem = ringfence_identity::pem_lf(&pem::Pem::new("PRIVATE KEY", pkcs8.to_vec()));
    crate::secrets::write_new(path, pem.as_bytes())
}

fn load_jwt(dir: &Path, td: TrustDomain) -> Result<JwtIssuer> {
    let path = dir.join("jwt.key");
    let bytes = crate::secrets::read(&path, "run `ringfence identity ca init`")?;
    let parsed = pem::parse(bytes).with_context(|| format!("{} is not PEM", path.display()))?;
    Ok(JwtIssuer::from_pkcs8(td, parsed.contents())?)
}

fn trust_domain(dir: &Path) -> Result<TrustDomain> {
    let td_text = std::fs::read_to_string(dir.join("trust-domain")).with_context(|| {
        format!(
            "no CA in {}: run `ringfence identity ca init --trust-domain ...`",
            dir.display()
        )
    })?;
    TrustDomain::parse(td_text.trim()).context("invalid trust-domain file")
}

pub(crate) fn load_set(dir: &Path, ttl: Duration) -> Result<CaSet> {
    Ok(CaSet::load(dir, trust_domain(dir)?, ttl)?)
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
    let status = match load_set(dir, Duration::from_secs(3600)) {
        Ok(set) => {
            // Issued by any CA in the trust bundle (active, next or still-trusted former).
            let bundle = split_der_certificates(&set.bundle_der(SystemClock.now()));
            let signed = bundle.iter().any(|ca| {
                X509Certificate::from_der(ca.as_ref())
                    .map(|(_, c)| cert.verify_signature(Some(c.public_key())).is_ok())
                    .unwrap_or(false)
            });
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
