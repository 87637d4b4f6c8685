//! `ringfence attest`: make signing keys, sign in-toto statements, and verify an image and its
//! attestations against a service policy offline (exit 0 admit, 1 deny).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use ringfence_admission::policy::{Policy, PolicySet};
use ringfence_admission::verdict::{Attestation, Job, Request, evaluate};
use ringfence_bab::artifacts::{ArtifactError, ArtifactStore};
use ringfence_bab::manifest::JobManifest;
use ringfence_core::{Clock, SystemClock};
use ringfence_provenance::dsse::{self, SigningKey};
use ringfence_provenance::oci::ImageLayout;
use ringfence_provenance::statement::{self, Sha256};

use crate::config::Settings;
use crate::exit;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Human-readable
    Text,
    /// JSON
    Json,
}

#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Create an ECDSA P-256 signing key (PKCS#8 PEM, mode 0600) and its public key (FILE.pub)
    Keygen {
        /// Where to write the private key
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign an in-toto Statement v1 as a DSSE envelope (for builders, review systems and tests)
    Sign {
        /// Private key(s) (PKCS#8 PEM); each adds a signature
        #[arg(long = "key", value_name = "FILE", required = true)]
        keys: Vec<PathBuf>,
        /// A complete statement (JSON) to sign; `-` reads stdin
        #[arg(long, value_name = "FILE", conflicts_with_all = ["predicate_type", "predicate", "subjects"])]
        statement: Option<PathBuf>,
        /// Build the statement: its predicate type
        #[arg(long, value_name = "URI", requires = "predicate")]
        predicate_type: Option<String>,
        /// Build the statement: the predicate (JSON file)
        #[arg(long, value_name = "FILE", requires = "predicate_type")]
        predicate: Option<PathBuf>,
        /// Build the statement: a subject, NAME=sha256:HEX or NAME=gitCommit:HEX (repeatable)
        #[arg(long = "subject", value_name = "NAME=DIGEST")]
        subjects: Vec<String>,
        /// Write the envelope here instead of stdout
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Verify a sigstore bundle offline, with a managed key or a signer identity and issuer
    /// (exit 0 verified, 1 refused)
    VerifyBundle {
        /// The bundle (`.sigstore.json`)
        #[arg(long, value_name = "FILE")]
        bundle: PathBuf,
        /// The signed artifact
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "digest",
            required_unless_present = "digest"
        )]
        artifact: Option<PathBuf>,
        /// Or its digest: sha256:HEX (an image), or sha512:HEX
        #[arg(long, value_name = "DIGEST")]
        digest: Option<String>,
        /// The managed public key (PEM)
        #[arg(long, value_name = "FILE", conflicts_with_all = ["identity", "issuer"], required_unless_present = "identity")]
        key: Option<PathBuf>,
        /// The signer's certificate identity (email or URI)
        #[arg(long, value_name = "SAN", requires = "issuer")]
        identity: Option<String>,
        /// The signer's OIDC issuer
        #[arg(long, value_name = "URL", requires = "identity")]
        issuer: Option<String>,
        /// The Sigstore instance's trusted root (default: the public-good instance's)
        #[arg(long, value_name = "FILE")]
        trusted_root: Option<PathBuf>,
    },
    /// Verify an image and its attestations against a service policy (exit 0 admit, 1 deny)
    Verify {
        /// The service policy (YAML)
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The image: an OCI layout directory, `sha256:HEX`, or `REPOSITORY@sha256:HEX`
        #[arg(long, value_name = "IMAGE")]
        image: String,
        /// The image's repository, when --image is a layout or a bare digest
        #[arg(long, value_name = "REPO")]
        repository: Option<String>,
        /// Attestation envelopes (default: those kept with the image in the artifact store)
        #[arg(long = "attestation", value_name = "FILE")]
        attestations: Vec<PathBuf>,
        /// The job manifest (its digest is the configuration that must have been reviewed)
        #[arg(long, value_name = "FILE")]
        job: Option<PathBuf>,
        /// The environment to evaluate for (default: the policy's first, or production)
        #[arg(long, value_name = "ENV")]
        environment: Option<String>,
        /// Evaluate at this time (RFC 3339) instead of now
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

pub async fn run(cmd: AttestCommand, settings: &Settings) -> Result<u8> {
    match cmd {
        AttestCommand::Keygen { out } => keygen(&out),
        AttestCommand::Sign {
            keys,
            statement,
            predicate_type,
            predicate,
            subjects,
            out,
        } => sign(&keys, statement, predicate_type, predicate, &subjects, out),
        AttestCommand::VerifyBundle {
            bundle,
            artifact,
            digest,
            key,
            identity,
            issuer,
            trusted_root,
        } => verify_bundle(
            &bundle,
            artifact,
            digest,
            key,
            identity,
            issuer,
            trusted_root,
        ),
        AttestCommand::Verify {
            policy,
            image,
            repository,
            attestations,
            job,
            environment,
            at,
            output,
        } => verify(
            settings,
            &policy,
            &image,
            repository,
            &attestations,
            job.as_deref(),
            environment,
            at,
            output,
        ),
    }
}

fn keygen(out: &Path) -> Result<u8> {
    let (key, der) = SigningKey::generate_p256()?;
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der));
    crate::secrets::write_new(out, pem.as_bytes())?;
    let public = key.public_key().spki_pem();
    let pub_path = PathBuf::from(format!("{}.pub", out.display()));
    std::fs::write(&pub_path, &public)
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    eprintln!(
        "wrote {} (private, 0600) and {}; key id {}",
        out.display(),
        pub_path.display(),
        key.keyid()
    );
    print!("{public}");
    Ok(exit::SUCCESS)
}

fn verify_bundle(
    bundle: &Path,
    artifact: Option<PathBuf>,
    digest: Option<String>,
    key: Option<PathBuf>,
    identity: Option<String>,
    issuer: Option<String>,
    trusted_root: Option<PathBuf>,
) -> Result<u8> {
    use ringfence_provenance::sigstore::{self, Subject, Trust};
    let bundle_bytes = read_input(bundle)?;
    let root = match trusted_root {
        Some(p) => {
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?
        }
        None => sigstore::PUBLIC_GOOD_TRUSTED_ROOT.to_owned(),
    };
    let trust = match (key, identity, issuer) {
        (Some(k), _, _) => Trust::Key(
            std::fs::read_to_string(&k).with_context(|| format!("cannot read {}", k.display()))?,
        ),
        (None, Some(identity), Some(issuer)) => Trust::Identity { identity, issuer },
        _ => bail!("give --key FILE, or --identity and --issuer"),
    };
    let artifact_bytes;
    let sha256;
    let subject = match (&artifact, &digest) {
        (Some(p), _) => {
            artifact_bytes = read_input(p)?;
            Subject::Bytes(&artifact_bytes)
        }
        (None, Some(d)) => match d.split_once(':') {
            Some(("sha256", hex)) => {
                sha256 = Sha256::parse(hex)?;
                Subject::Digest(&sha256)
            }
            Some(("sha512", hex)) => Subject::Sha512Hex(hex),
            _ => bail!("--digest must be sha256:HEX or sha512:HEX"),
        },
        (None, None) => bail!("give --artifact FILE or --digest"),
    };
    match sigstore::verify(&bundle_bytes, subject, &trust, &root) {
        Ok(v) => {
            println!(
                "VERIFIED {} signed by {}{}{}",
                bundle.display(),
                v.signer,
                v.issuer
                    .map(|i| format!(" (issuer {i})"))
                    .unwrap_or_default(),
                v.integrated_time
                    .map(|t| format!(", logged {}", ringfence_provenance::slsa::format_time(t)))
                    .unwrap_or_default()
            );
            if let Some(env) = v.envelope {
                println!("  DSSE payload type {}", env.payload_type());
            }
            Ok(exit::SUCCESS)
        }
        Err(e) => {
            println!("REFUSED {}: {e}", bundle.display());
            Ok(exit::FAILURE)
        }
    }
}

pub(crate) fn load_key(path: &Path) -> Result<SigningKey> {
    let bytes = crate::secrets::read(path, "create one with `ringfence attest keygen --out FILE`")?;
    let text = String::from_utf8(bytes).context("the key file is not PEM text")?;
    SigningKey::from_pkcs8_pem(&text).with_context(|| format!("invalid key {}", path.display()))
}

fn read_input(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn sign(
    keys: &[PathBuf],
    statement_file: Option<PathBuf>,
    predicate_type: Option<String>,
    predicate: Option<PathBuf>,
    subjects: &[String],
    out: Option<PathBuf>,
) -> Result<u8> {
    let keys = keys
        .iter()
        .map(|k| load_key(k))
        .collect::<Result<Vec<_>>>()?;
    let payload = match (statement_file, predicate_type, predicate) {
        (Some(f), _, _) => {
            let bytes = read_input(&f)?;
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).context("the statement is not JSON")?;
            if v.get("_type").and_then(|t| t.as_str()) != Some(statement::STATEMENT_V1) {
                bail!("the statement's _type is not {}", statement::STATEMENT_V1);
            }
            bytes
        }
        (None, Some(ptype), Some(pfile)) => {
            if subjects.is_empty() {
                bail!("give at least one --subject NAME=sha256:HEX");
            }
            let predicate: serde_json::Value = serde_json::from_slice(&read_input(&pfile)?)
                .context("the predicate is not JSON")?;
            let mut pairs = Vec::new();
            for s in subjects {
                let (name, digest) = s
                    .split_once('=')
                    .with_context(|| format!("subject {s:?} is not NAME=DIGEST"))?;
                match digest.split_once(':') {
                    Some(("sha256", hex)) => {
                        Sha256::parse(hex)?;
                    }
                    Some(("gitCommit", hex)) => {
                        statement::parse_commit(hex)?;
                    }
                    _ => bail!("subject digest {digest:?} is not sha256:HEX or gitCommit:HEX"),
                }
                pairs.push((name, digest));
            }
            serde_json::to_vec(&statement::build(&pairs, &ptype, predicate))?
        }
        _ => bail!("give --statement FILE, or --predicate-type, --predicate and --subject"),
    };
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let envelope = dsse::sign(statement::PAYLOAD_TYPE, &payload, &refs)?;
    let json = serde_json::to_string_pretty(&envelope)? + "\n";
    match out {
        Some(path) => std::fs::write(&path, json)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{json}"),
    }
    Ok(exit::SUCCESS)
}

pub(crate) fn read_attestations(paths: &[PathBuf]) -> Result<Vec<Attestation>> {
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let envelope = dsse::parse(&bytes)
                .with_context(|| format!("attestation {} refused", p.display()))?;
            Ok(Attestation {
                source: p.file_name().map_or_else(
                    || p.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                ),
                envelope,
            })
        })
        .collect()
}

pub(crate) fn stored_attestations(
    settings: &Settings,
    digest: &Sha256,
) -> Result<Vec<Attestation>> {
    let store = ArtifactStore::open(&settings.data_dir.join("artifacts"))?;
    Ok(store
        .attestations(digest)?
        .into_iter()
        .map(|(source, envelope)| Attestation { source, envelope })
        .collect())
}

/// The attestations kept with a job's image in the artifact store: none when the image (or
/// the store) is not there, an error when the store cannot be read.
pub(crate) fn attestations_for_image(settings: &Settings, image: &str) -> Result<Vec<Attestation>> {
    let Ok(r) = ringfence_admission::verdict::parse_image(image) else {
        return Ok(Vec::new()); // admission refuses the reference itself, with the reason
    };
    if !settings.data_dir.join("artifacts").exists() {
        return Ok(Vec::new());
    }
    match stored_attestations(settings, &r.digest) {
        Ok(a) => Ok(a),
        Err(e)
            if matches!(
                e.downcast_ref::<ArtifactError>(),
                Some(ArtifactError::NotFound(_))
            ) =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e.context(format!(
            "cannot read the attestations of {} from the artifact store {}",
            r.digest,
            settings.data_dir.join("artifacts").display()
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
fn verify(
    settings: &Settings,
    policy_path: &Path,
    image: &str,
    repository: Option<String>,
    attestation_files: &[PathBuf],
    job_file: Option<&Path>,
    environment: Option<String>,
    at: Option<String>,
    output: Output,
) -> Result<u8> {
    let text = std::fs::read_to_string(policy_path)
        .with_context(|| format!("cannot read {}", policy_path.display()))?;
    let policy = Policy::from_yaml(&text)
        .with_context(|| format!("policy {} refused", policy_path.display()))?;
    let image_ref = if Path::new(image).is_dir() {
        let layout = ImageLayout::open(Path::new(image))
            .with_context(|| format!("image layout {image} refused"))?;
        let digest = layout.single()?.digest.clone();
        match &repository {
            Some(r) => format!("{r}@{digest}"),
            None => digest.to_string(),
        }
    } else {
        match (&repository, image.contains('@')) {
            (Some(r), false) => format!("{r}@{image}"),
            _ => image.to_owned(),
        }
    };
    let spec = policy.spec().clone();
    let (job, _) = match job_file {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let (m, mut job) = JobManifest::parse(&bytes).map_err(anyhow::Error::msg)?;
            job.image = image_ref.clone();
            (job, Some(m))
        }
        None => (
            Job {
                name: "verify".into(),
                namespace: spec.namespace.clone(),
                service: spec.service.clone(),
                environment: environment
                    .clone()
                    .or_else(|| spec.environments.first().cloned())
                    .unwrap_or_else(|| "production".into()),
                image: image_ref.clone(),
                // No manifest given: nothing was reviewed as this job's configuration.
                config_digest: Sha256::of(b""),
            },
            None,
        ),
    };
    let attestations = if attestation_files.is_empty() {
        attestations_for_image(settings, &image_ref)?
    } else {
        read_attestations(attestation_files)?
    };
    let now = match at {
        Some(t) => ringfence_provenance::slsa::parse_time(&t).context("invalid --at")?,
        None => SystemClock.now(),
    };
    let set = PolicySet::new(vec![policy])?;
    let verdict = evaluate(&set, &job, &attestations, now, &Request::Normal);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&verdict)?),
        Output::Text => {
            let word = if verdict.admit { "ADMIT" } else { "DENY" };
            println!(
                "{word} {} as {}/{} in {} ({}; policy {})",
                job.image,
                job.namespace,
                job.service,
                job.environment,
                verdict.basis,
                verdict.policy.as_deref().unwrap_or("-")
            );
            for f in &verdict.findings {
                println!("  {f}");
            }
        }
    }
    Ok(if verdict.admit {
        exit::SUCCESS
    } else {
        exit::FAILURE
    })
}
