//! OCI image layouts (image-spec v1.1 `oci-layout`, `index.json`, `blobs/sha256/...`): an image
//! is named by its manifest's digest, never by a tag, and opening a layout checks every blob
//! it names against its digest and size, so a changed byte anywhere no longer verifies.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::statement::Sha256;

/// The manifest media type.
pub const MANIFEST_V1: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config media type.
pub const CONFIG_V1: &str = "application/vnd.oci.image.config.v1+json";
/// An uncompressed tar layer.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Largest index or manifest read, in bytes.
pub const MAX_JSON: u64 = 4 * 1024 * 1024;

/// Why a layout is refused.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Missing or unreadable file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a valid layout.
    #[error("invalid OCI image layout: {0}")]
    Invalid(String),
    /// A blob's content does not match its digest or size.
    #[error("blob {digest} does not match: {why}")]
    Mismatch {
        /// The digest named.
        digest: String,
        /// What differs.
        why: String,
    },
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations (`org.opencontainers.image.ref.name`, say).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// One verified image of a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The manifest digest: the image's name.
    pub digest: Sha256,
    /// `org.opencontainers.image.ref.name`, if annotated (informative only).
    pub ref_name: Option<String>,
    /// The config descriptor.
    pub config: Descriptor,
    /// The layers.
    pub layers: Vec<Descriptor>,
    /// Total bytes of config and layers.
    pub size: u64,
}

/// A verified layout.
#[derive(Debug, Clone)]
pub struct ImageLayout {
    root: PathBuf,
    images: Vec<Image>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        path: path.to_owned(),
        source,
    }
}

impl ImageLayout {
    /// Opens `dir` and verifies every manifest, config and layer blob it names.
    pub fn open(dir: &Path) -> Result<Self, OciError> {
        let marker = dir.join("oci-layout");
        let text = std::fs::read_to_string(&marker).map_err(io(&marker))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| OciError::Invalid(format!("oci-layout: {e}")))?;
        if v.get("imageLayoutVersion").and_then(|x| x.as_str()) != Some("1.0.0") {
            return Err(OciError::Invalid(
                "oci-layout: imageLayoutVersion is not 1.0.0".into(),
            ));
        }
        let index_path = dir.join("index.json");
        let index: Index = serde_json::from_slice(&read_limited(&index_path, MAX_JSON)?)
            .map_err(|e| OciError::Invalid(format!("index.json: {e}")))?;
        if index.schema_version != 2 {
            return Err(OciError::Invalid(
                "index.json: schemaVersion is not 2".into(),
            ));
        }
        let mut images = Vec::new();
        for desc in index.manifests {
            if desc.media_type != MANIFEST_V1 {
                continue; // nested indexes and other artifacts are not images we run
            }
            let bytes = read_blob(dir, &desc, MAX_JSON)?;
            let manifest: Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| OciError::Invalid(format!("manifest {}: {e}", desc.digest)))?;
            if manifest.schema_version != 2 {
                return Err(OciError::Invalid(format!(
                    "manifest {}: schemaVersion is not 2",
                    desc.digest
                )));
            }
            let mut size = 0u64;
            for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
                verify_blob(dir, blob)?;
                size = size.saturating_add(blob.size);
            }
            images.push(Image {
                digest: parse_digest(&desc.digest)?,
                ref_name: desc
                    .annotations
                    .get("org.opencontainers.image.ref.name")
                    .cloned(),
                config: manifest.config,
                layers: manifest.layers,
                size,
            });
        }
        if images.is_empty() {
            return Err(OciError::Invalid(
                "index.json names no image manifest".into(),
            ));
        }
        Ok(Self {
            root: dir.to_owned(),
            images,
        })
    }

    /// The images, in index order.
    pub fn images(&self) -> &[Image] {
        &self.images
    }

    /// The one image of a single-image layout.
    pub fn single(&self) -> Result<&Image, OciError> {
        match self.images.as_slice() {
            [one] => Ok(one),
            _ => Err(OciError::Invalid(format!(
                "the layout holds {} images; name one by digest",
                self.images.len()
            ))),
        }
    }

    /// The path of a blob.
    pub fn blob_path(&self, digest: &Sha256) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }
}

fn parse_digest(d: &str) -> Result<Sha256, OciError> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| OciError::Invalid(format!("digest {d:?} is not sha256:<hex>")))?;
    Sha256::parse(hex).map_err(|e| OciError::Invalid(e.to_string()))
}

fn blob_path(dir: &Path, desc: &Descriptor) -> Result<PathBuf, OciError> {
    let digest = parse_digest(&desc.digest)?;
    Ok(dir.join("blobs").join("sha256").join(digest.hex()))
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, OciError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut out = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(io(path))?;
    if out.len() as u64 > limit {
        return Err(OciError::Invalid(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(out)
}

fn read_blob(dir: &Path, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, OciError> {
    if desc.size > limit {
        return Err(OciError::Invalid(format!(
            "{} is {} bytes; at most {limit} are read",
            desc.digest, desc.size
        )));
    }
    let path = blob_path(dir, desc)?;
    let bytes = read_limited(&path, limit)?;
    check(desc, bytes.len() as u64, &Sha256::of(&bytes))?;
    Ok(bytes)
}

fn verify_blob(dir: &Path, desc: &Descriptor) -> Result<(), OciError> {
    let path = blob_path(dir, desc)?;
    let file = std::fs::File::open(&path).map_err(io(&path))?;
    let (got, len) = Sha256::of_reader(file, desc.size).map_err(io(&path))?;
    check(desc, len, &got)
}

fn check(desc: &Descriptor, len: u64, got: &Sha256) -> Result<(), OciError> {
    if len != desc.size {
        let read = if len > desc.size { "more than " } else { "" };
        return Err(OciError::Mismatch {
            digest: desc.digest.clone(),
            why: format!(
                "{read}{} bytes, descriptor says {}",
                len.min(desc.size),
                desc.size
            ),
        });
    }
    if got.to_string() != desc.digest {
        return Err(OciError::Mismatch {
            digest: desc.digest.clone(),
            why: format!("content hashes to {got}"),
        });
    }
    Ok(())
}

/// Writes a single-image layout to `dir` from a config and layers; returns the image's
/// manifest digest. Used by builders, the demo and tests.
pub fn write_layout(
    dir: &Path,
    config: &serde_json::Value,
    layers: &[Vec<u8>],
    ref_name: &str,
) -> Result<Sha256, OciError> {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let put = |media_type: &str, bytes: &[u8]| -> Result<Descriptor, OciError> {
        let digest = Sha256::of(bytes);
        let path = blobs.join(digest.hex());
        std::fs::write(&path, bytes).map_err(io(&path))?;
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest: digest.to_string(),
            size: bytes.len() as u64,
            annotations: Default::default(),
        })
    };
    let config_bytes = serde_json::to_vec(config).unwrap_or_default();
    let config = put(CONFIG_V1, &config_bytes)?;
    let layers = layers
        .iter()
        .map(|l| put(LAYER_TAR, l))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_V1,
        "config": config,
        "layers": layers,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    let mut desc = put(MANIFEST_V1, &manifest_bytes)?;
    desc.annotations.insert(
        "org.opencontainers.image.ref.name".into(),
        ref_name.to_owned(),
    );
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
    let write = |name: &str, bytes: Vec<u8>| -> Result<(), OciError> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))
    };
    write(
        "index.json",
        serde_json::to_vec_pretty(&index).unwrap_or_default(),
    )?;
    write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())?;
    Sha256::parse(&Sha256::of(&manifest_bytes).to_string())
        .map_err(|e| OciError::Invalid(e.to_string()))
}

/// A minimal ustar archive of regular files (`path`, `mode`, `contents`), for building layers.
pub fn tar(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, mode, data) in files {
        let mut header = [0u8; 512];
        for (dst, src) in header.iter_mut().zip(path.as_bytes().iter().take(100)) {
            *dst = *src;
        }
        let octal = |field: &mut [u8], value: u64| {
            let s = format!("{value:0width$o}\0", width = field.len() - 1);
            field.copy_from_slice(s.as_bytes());
        };
        octal(&mut header[100..108], u64::from(*mode));
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], data.len() as u64);
        octal(&mut header[136..148], 0);
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u64 = header.iter().map(|b| u64::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}
