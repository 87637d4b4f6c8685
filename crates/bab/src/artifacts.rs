//! The artifact store: content-addressed OCI images and their attestations, on local disk.
//!
//! Layout under the root: `blobs/sha256/<hex>` (manifests, configs, layers, attestation
//! envelopes) and `images/<hex>.json` (one record per image: its layers, when it was pushed,
//! which attestation blobs belong to it). A push verifies the OCI layout blob by blob first,
//! and every blob is written to a temporary file, hashed, and renamed into place only if it
//! hashes to its name, so the store never holds a blob under a wrong name.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use ringfence_core::UnixTime;
use ringfence_provenance::dsse::{self, Envelope};
use ringfence_provenance::oci::{Descriptor, ImageLayout, OciError};
use ringfence_provenance::statement::Sha256;
use serde::{Deserialize, Serialize};

/// Why the artifact store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The layout did not verify.
    #[error(transparent)]
    Layout(#[from] OciError),
    /// File system.
    #[error("artifact store {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not in the store.
    #[error("no image {0} in the artifact store (see `ringfence artifact list`)")]
    NotFound(String),
    /// An attestation was refused.
    #[error("attestation {name}: {why}")]
    Attestation {
        /// Which.
        name: String,
        /// Why.
        why: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An attestation kept with an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredAttestation {
    /// The name it was pushed under (its file name).
    pub name: String,
    /// The envelope blob.
    pub digest: Sha256,
    /// Its predicate type (unverified; verification happens at admission).
    pub predicate_type: String,
}

/// One image's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// Manifest digest.
    pub digest: Sha256,
    /// The layout's ref name annotation, if any (informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_name: Option<String>,
    /// Config descriptor.
    pub config: Descriptor,
    /// Layer descriptors.
    pub layers: Vec<Descriptor>,
    /// Manifest size in bytes.
    pub manifest_size: u64,
    /// Total bytes of config and layers.
    pub size: u64,
    /// When first pushed.
    pub pushed_at: UnixTime,
    /// Attestations.
    pub attestations: Vec<StoredAttestation>,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The image record after the push.
    pub record: ImageRecord,
    /// Blobs written (the rest were already present).
    pub new_blobs: usize,
    /// Bytes written.
    pub new_bytes: u64,
}

/// The store.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

impl ArtifactStore {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<Self, ArtifactError> {
        for d in ["blobs/sha256", "images"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    fn blob_path(&self, d: &Sha256) -> PathBuf {
        self.root.join("blobs").join("sha256").join(d.hex())
    }

    fn record_path(&self, d: &Sha256) -> PathBuf {
        self.root.join("images").join(format!("{}.json", d.hex()))
    }

    /// Copies `src` in as blob `digest`, verifying it; returns the bytes written (0 if present).
    fn put_blob_file(&self, src: &Path, digest: &Sha256) -> Result<u64, ArtifactError> {
        let dst = self.blob_path(digest);
        if dst.exists() {
            return Ok(0);
        }
        let tmp = dst.with_extension(format!("tmp.{}", ringfence_audit::event::new_event_id()));
        let mut input = std::fs::File::open(src).map_err(io(src))?;
        let mut out = std::fs::File::create_new(&tmp).map_err(io(&tmp))?;
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut n_total = 0u64;
        loop {
            let n = input.read(&mut buf).map_err(io(src))?;
            if n == 0 {
                break;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            ctx.update(chunk);
            out.write_all(chunk).map_err(io(&tmp))?;
            n_total += n as u64;
        }
        out.sync_all().map_err(io(&tmp))?;
        let got = Sha256::from_raw(ctx.finish().as_ref());
        if &got != digest {
            let _ = std::fs::remove_file(&tmp);
            return Err(ArtifactError::Layout(OciError::Mismatch {
                digest: digest.to_string(),
                why: format!("changed while copying (now {got})"),
            }));
        }
        std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
        Ok(n_total)
    }

    fn put_blob_bytes(&self, bytes: &[u8]) -> Result<(Sha256, u64), ArtifactError> {
        let digest = Sha256::of(bytes);
        let dst = self.blob_path(&digest);
        if dst.exists() {
            return Ok((digest, 0));
        }
        let tmp = dst.with_extension(format!("tmp.{}", ringfence_audit::event::new_event_id()));
        let mut f = std::fs::File::create_new(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
        Ok((digest, bytes.len() as u64))
    }

    /// Pushes the single image of the OCI layout at `dir`, with attestations (name, JSON
    /// bytes). Each attestation must be a DSSE envelope whose statement names this image; its
    /// signatures are checked at admission, against the policy's keys.
    pub fn push(
        &self,
        dir: &Path,
        attestations: &[(String, Vec<u8>)],
        now: UnixTime,
    ) -> Result<Pushed, ArtifactError> {
        let layout = ImageLayout::open(dir)?;
        let image = layout.single()?.clone();
        let mut stored = Vec::new();
        for (name, bytes) in attestations {
            let (envelope, predicate_type) = check_attestation(name, bytes, &image.digest)?;
            stored.push((name.clone(), envelope, predicate_type));
        }
        let mut new_blobs = 0;
        let mut new_bytes = 0;
        let manifest_src = layout.blob_path(&image.digest);
        let manifest_size = std::fs::metadata(&manifest_src)
            .map_err(io(&manifest_src))?
            .len();
        for desc in std::iter::once(&image.config).chain(&image.layers) {
            let d = Sha256::parse(&desc.digest).map_err(|e| OciError::Invalid(e.to_string()))?;
            let n = self.put_blob_file(&layout.blob_path(&d), &d)?;
            new_blobs += usize::from(n > 0);
            new_bytes += n;
        }
        // The manifest last: an image is present only when everything it names is.
        let n = self.put_blob_file(&manifest_src, &image.digest)?;
        new_blobs += usize::from(n > 0);
        new_bytes += n;
        let mut record = match self.get(&image.digest) {
            Ok(r) => r,
            Err(ArtifactError::NotFound(_)) => ImageRecord {
                digest: image.digest.clone(),
                ref_name: image.ref_name.clone(),
                config: image.config.clone(),
                layers: image.layers.clone(),
                manifest_size,
                size: image.size,
                pushed_at: now,
                attestations: Vec::new(),
            },
            Err(e) => return Err(e),
        };
        for (name, envelope, predicate_type) in stored {
            let json = serde_json::to_vec(&envelope).unwrap_or_default();
            let (digest, n) = self.put_blob_bytes(&json)?;
            new_blobs += usize::from(n > 0);
            new_bytes += n;
            if !record.attestations.iter().any(|a| a.digest == digest) {
                record.attestations.push(StoredAttestation {
                    name,
                    digest,
                    predicate_type,
                });
            }
        }
        let path = self.record_path(&image.digest);
        let tmp = path.with_extension(format!(
            "json.tmp.{}",
            ringfence_audit::event::new_event_id()
        ));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&record).unwrap_or_default())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(Pushed {
            record,
            new_blobs,
            new_bytes,
        })
    }

    /// One image's record.
    pub fn get(&self, digest: &Sha256) -> Result<ImageRecord, ArtifactError> {
        let path = self.record_path(digest);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArtifactError::NotFound(digest.to_string()));
            }
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| io(&path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
    }

    /// Every image, newest first.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ArtifactError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Ok(d) = Sha256::parse(hex) {
                out.push(self.get(&d)?);
            }
        }
        out.sort_by(|a, b| b.pushed_at.cmp(&a.pushed_at).then(a.digest.cmp(&b.digest)));
        Ok(out)
    }

    /// The attestations kept with an image, re-read and re-hashed from their blobs.
    pub fn attestations(&self, digest: &Sha256) -> Result<Vec<(String, Envelope)>, ArtifactError> {
        let record = self.get(digest)?;
        record
            .attestations
            .iter()
            .map(|a| {
                let path = self.blob_path(&a.digest);
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                if Sha256::of(&bytes) != a.digest {
                    return Err(ArtifactError::Layout(OciError::Mismatch {
                        digest: a.digest.to_string(),
                        why: "the stored attestation changed".into(),
                    }));
                }
                let env = dsse::parse(&bytes).map_err(|e| ArtifactError::Attestation {
                    name: a.name.clone(),
                    why: e.to_string(),
                })?;
                Ok((a.name.clone(), env))
            })
            .collect()
    }

    /// Writes the image as a one-image OCI layout to `dir` (for agents and for inspection),
    /// verifying every blob on the way out.
    pub fn export(&self, digest: &Sha256, dir: &Path) -> Result<(), ArtifactError> {
        let record = self.get(digest)?;
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        let out = ArtifactStore {
            root: dir.to_owned(),
        };
        for desc in std::iter::once(&record.config).chain(&record.layers) {
            let d = Sha256::parse(&desc.digest).map_err(|e| OciError::Invalid(e.to_string()))?;
            out.put_blob_file(&self.blob_path(&d), &d)?;
        }
        out.put_blob_file(&self.blob_path(digest), digest)?;
        let mut desc = Descriptor {
            media_type: ringfence_provenance::oci::MANIFEST_V1.into(),
            digest: digest.to_string(),
            size: record.manifest_size,
            annotations: Default::default(),
        };
        if let Some(r) = &record.ref_name {
            desc.annotations
                .insert("org.opencontainers.image.ref.name".into(), r.clone());
        }
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
        let p = dir.join("index.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&index).unwrap_or_default())
            .map_err(io(&p))?;
        let p = dir.join("oci-layout");
        std::fs::write(&p, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(&p))?;
        // And check what was written, as any consumer would.
        ImageLayout::open(dir)?;
        Ok(())
    }
}

/// Parses an attestation file and checks (without signatures) that it is an in-toto statement
/// naming `image`; returns the envelope and its predicate type.
fn check_attestation(
    name: &str,
    bytes: &[u8],
    image: &Sha256,
) -> Result<(Envelope, String), ArtifactError> {
    let refuse = |why: String| ArtifactError::Attestation {
        name: name.to_owned(),
        why,
    };
    let env = dsse::parse(bytes).map_err(|e| refuse(e.to_string()))?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&env.payload)
        .map_err(|_| refuse("payload is not base64".into()))?;
    let v: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|e| refuse(format!("payload is not JSON: {e}")))?;
    let predicate_type = v
        .get("predicateType")
        .and_then(|p| p.as_str())
        .ok_or_else(|| refuse("not an in-toto statement (no predicateType)".into()))?
        .to_owned();
    let names_image = v
        .get("subject")
        .and_then(|s| s.as_array())
        .is_some_and(|subjects| {
            subjects
                .iter()
                .any(|s| s.pointer("/digest/sha256").and_then(|d| d.as_str()) == Some(image.hex()))
        });
    // A review attests a commit and configurations, not the image: keep it with the image the
    // commit was built into.
    if !names_image && predicate_type != ringfence_provenance::review::PREDICATE_TYPE {
        return Err(refuse(format!("its statement does not name image {image}")));
    }
    Ok((env, predicate_type))
}
