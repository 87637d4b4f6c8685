//! The root filesystem a sandbox runs: an OCI image layout (verified blob by blob, then its
//! layers unpacked in order with whiteouts) or a directory; and the index of its executables
//! that drift prevention checks every `execve` against.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use ringfence_provenance::oci::{ImageLayout, LAYER_TAR};
use ringfence_provenance::statement::Sha256;

/// Largest executable hashed at run time, in bytes.
pub const MAX_EXEC_HASH: u64 = 512 * 1024 * 1024;

/// Why a root filesystem cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The layout failed verification.
    #[error("image {path}: {source}")]
    Layout {
        /// The layout.
        path: PathBuf,
        /// Why.
        source: ringfence_provenance::oci::OciError,
    },
    /// A layer could not be unpacked.
    #[error("layer {digest}: {why}")]
    Layer {
        /// The layer digest.
        digest: String,
        /// Why.
        why: String,
    },
    /// Filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The rootfs is not usable.
    #[error("{0}")]
    Rootfs(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Unpacks the single image of the layout at `layout` into `dest` (created). Returns the
/// image's manifest digest.
pub fn unpack(layout: &Path, dest: &Path) -> Result<Sha256, ImageError> {
    let l = ImageLayout::open(layout).map_err(|source| ImageError::Layout {
        path: layout.to_owned(),
        source,
    })?;
    let image = l.single().map_err(|source| ImageError::Layout {
        path: layout.to_owned(),
        source,
    })?;
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755)).map_err(io(dest))?;
    for layer in &image.layers {
        let digest = Sha256::parse(layer.digest.trim_start_matches("sha256:")).map_err(|e| {
            ImageError::Layer {
                digest: layer.digest.clone(),
                why: e.to_string(),
            }
        })?;
        let path = l.blob_path(&digest);
        let file = std::fs::File::open(&path).map_err(io(&path))?;
        let reader: Box<dyn Read> = match layer.media_type.as_str() {
            LAYER_TAR => Box::new(file),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                Box::new(flate2::read::GzDecoder::new(file))
            }
            other => {
                return Err(ImageError::Layer {
                    digest: layer.digest.clone(),
                    why: format!("media type {other} is not supported (tar or tar+gzip)"),
                });
            }
        };
        apply_layer(reader, dest).map_err(|why| ImageError::Layer {
            digest: layer.digest.clone(),
            why,
        })?;
    }
    strip_setid_bits(dest).map_err(io(dest))?;
    Ok(image.digest.clone())
}

/// Clears setuid and setgid bits in an unpacked image: inside the sandbox they mean nothing
/// (`nosuid`), and on the host a setuid-root copy must never exist.
fn strip_setid_bits(root: &Path) -> std::io::Result<()> {
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let m = std::fs::symlink_metadata(&path)?;
            if m.is_dir() {
                stack.push(path.clone());
            }
            if !m.file_type().is_symlink() && m.mode() & 0o6000 != 0 {
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(m.mode() & 0o1777),
                )?;
            }
        }
    }
    Ok(())
}

/// Applies one tar layer onto `dest`: whiteouts delete, everything else is unpacked with the
/// archive's permissions (setuid bits included: the sandbox neutralises them), owned by the
/// unpacking user. Paths that climb out of `dest`, directly or through a symlink the layer
/// planted, are refused. (Public for the fuzz target.)
pub fn apply_layer(reader: impl Read, dest: &Path) -> Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    // Never a setuid or setgid file on the host, not even between two layers.
    archive.set_mask(0o6000);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
        {
            return Err(format!("entry {} climbs out of the image", path.display()));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let rel: PathBuf = path
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .collect();
            let parent_rel = rel.parent().unwrap_or(Path::new(""));
            // A whiteout may only remove what lies inside `dest`: a directory on the way that
            // an earlier entry made a symlink (`x -> /etc`, then `x/.wh..opq`) would point the
            // removal at the host.
            // The hidden name must be one plain entry: `.wh...` would name the parent of
            // `dest` itself.
            let plain =
                !hidden.is_empty() && hidden != "." && hidden != ".." && !hidden.contains('/');
            if !plain {
                return Err(format!(
                    "whiteout {} names no entry of the image",
                    path.display()
                ));
            }
            if !no_symlink_on_the_way(dest, parent_rel) {
                return Err(format!(
                    "whiteout {} goes through a symlink out of the image",
                    path.display()
                ));
            }
            let parent = dest.join(parent_rel);
            if hidden == ".wh..opq" {
                if let Ok(rd) = std::fs::read_dir(&parent) {
                    for e in rd.flatten() {
                        remove(&e.path());
                    }
                }
            } else {
                remove(&parent.join(hidden));
            }
            continue;
        }
        let ok = entry
            .unpack_in(dest)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !ok {
            return Err(format!("entry {} climbs out of the image", path.display()));
        }
    }
    Ok(())
}

/// True when every directory from `dest` down to `dest/rel` exists as a real directory (or
/// does not exist yet), never a symlink.
fn no_symlink_on_the_way(dest: &Path, rel: &Path) -> bool {
    let mut p = dest.to_owned();
    for c in rel.components() {
        let Component::Normal(part) = c else {
            return false;
        };
        p.push(part);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return false,
            Ok(m) if !m.is_dir() => return false,
            Ok(_) => {}
            Err(_) => return true,
        }
    }
    true
}

fn remove(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Checks a root filesystem directory and creates the mount points the sandbox needs
/// (`proc`, `tmp`, `dev`) if it lacks them.
pub fn prepare_rootfs(rootfs: &Path) -> Result<PathBuf, ImageError> {
    let root = std::fs::canonicalize(rootfs).map_err(io(rootfs))?;
    if !root.is_dir() {
        return Err(ImageError::Rootfs(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    if root == Path::new("/") {
        return Err(ImageError::Rootfs(
            "the host's / cannot be a sandbox rootfs".into(),
        ));
    }
    // The sandbox's unprivileged uid must be able to reach the rootfs to bind-mount it.
    let mut p = root.as_path();
    loop {
        let mode = std::fs::metadata(p).map_err(io(p))?.mode();
        if mode & 0o001 == 0 {
            return Err(ImageError::Rootfs(format!(
                "{} is not searchable by other users (mode {:o}); the sandbox runs as an \
                 unprivileged uid and must reach the rootfs: chmod o+x it or move the rootfs",
                p.display(),
                mode & 0o7777
            )));
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    for dir in ["proc", "tmp", "dev"] {
        let d = root.join(dir);
        match std::fs::symlink_metadata(&d) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ImageError::Rootfs(format!(
                    "{} must be a directory (a mount point)",
                    d.display()
                )));
            }
            Err(_) => {
                std::fs::create_dir(&d).map_err(io(&d))?;
            }
        }
    }
    Ok(root)
}

/// Makes sure `inside` (an absolute, normalized path) exists as a directory in the rootfs
/// without following a symlink anywhere on the way: a rootfs could otherwise point a volume's
/// mount point outside itself.
pub fn volume_target(rootfs: &Path, inside: &str) -> Result<PathBuf, ImageError> {
    let mut p = rootfs.to_owned();
    for part in inside.split('/').filter(|c| !c.is_empty()) {
        p.push(part);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ImageError::Rootfs(format!(
                    "{} is not a directory (a symlink or a file) and cannot be a volume's mount point",
                    p.display()
                )));
            }
            Err(_) => std::fs::create_dir(&p).map_err(io(&p))?,
        }
    }
    Ok(p)
}

/// One executable of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executable {
    /// Path inside the rootfs (`/bin/sh`).
    pub path: String,
    /// Content digest.
    pub sha256: Sha256,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// The executables of a verified root filesystem, by inode and by content.
#[derive(Debug, Clone, Default)]
pub struct ExecIndex {
    by_inode: HashMap<(u64, u64), Executable>,
    by_hash: HashMap<String, String>,
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// The change time: set by the kernel on every write or metadata change, and (unlike the
/// modification time) not settable by a file's owner.
fn ctime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
}

/// Digests remembered between runs, keyed by what identifies an unchanged file.
#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct HashCache {
    /// `dev:ino:size:mtime_ns:ctime_ns` → sha256 hex.
    files: HashMap<String, String>,
}

fn cache_key(m: &std::fs::Metadata) -> String {
    format!(
        "{}:{}:{}:{}:{}",
        m.dev(),
        m.ino(),
        m.size(),
        mtime_ns(m),
        ctime_ns(m)
    )
}

/// Checks that `dir` is owned by root and writable by nobody else, so what is kept there
/// (unpacked images, the digest cache) cannot be changed behind the sandbox's back.
pub fn check_private_dir(dir: &Path) -> Result<(), ImageError> {
    let m = std::fs::metadata(dir).map_err(io(dir))?;
    if m.uid() != 0 || m.mode() & 0o022 != 0 {
        return Err(ImageError::Rootfs(format!(
            "{} must be owned by root and writable by no one else (it is uid {}, mode {:o}): \
             what is unpacked or cached there decides what may execute",
            dir.display(),
            m.uid(),
            m.mode() & 0o7777
        )));
    }
    // Nor may anyone else be able to swap a directory on the way to it (a sticky directory
    // such as /tmp lets no one rename another's entry).
    let canonical = std::fs::canonicalize(dir).map_err(io(dir))?;
    for parent in canonical.ancestors().skip(1) {
        let m = std::fs::metadata(parent).map_err(io(parent))?;
        let sticky = m.mode() & 0o1000 != 0;
        if m.uid() != 0 || (m.mode() & 0o022 != 0 && !sticky) {
            return Err(ImageError::Rootfs(format!(
                "{} sits in {}, which someone other than root can change (uid {}, mode {:o})",
                dir.display(),
                parent.display(),
                m.uid(),
                m.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

/// The SHA-256 of a reader, or `None` when it yields more than `limit` bytes.
fn hash_reader(r: impl Read, limit: u64) -> std::io::Result<Option<Sha256>> {
    let (sha, len) = Sha256::of_reader(r, limit)?;
    Ok((len <= limit).then_some(sha))
}

impl ExecIndex {
    /// Hashes every regular file with an execute bit under `root` (symlinks not followed).
    pub fn build(root: &Path) -> Result<ExecIndex, ImageError> {
        Self::build_cached(root, None)
    }

    /// Like [`ExecIndex::build`], reusing digests from `cache` (a file in a directory that
    /// [`check_private_dir`] accepts) for files whose device, inode, size, modification and
    /// change times are unchanged, and saving the digests back.
    pub fn build_cached(root: &Path, cache: Option<&Path>) -> Result<ExecIndex, ImageError> {
        let old: HashCache = cache
            .and_then(|c| std::fs::read(c).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut new = HashCache::default();
        let mut index = ExecIndex::default();
        let mut stack = vec![root.to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
                let entry = entry.map_err(io(&dir))?;
                let path = entry.path();
                let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.is_file() && meta.mode() & 0o111 != 0 {
                    let key = cache_key(&meta);
                    let cached = old.files.get(&key).and_then(|hex| Sha256::parse(hex).ok());
                    let sha256 = match cached {
                        Some(s) => s,
                        None => {
                            let file = std::fs::File::open(&path).map_err(io(&path))?;
                            match hash_reader(file, MAX_EXEC_HASH).map_err(io(&path))? {
                                Some(s) => s,
                                // Too large to check at exec time either: refused then.
                                None => continue,
                            }
                        }
                    };
                    new.files.insert(key, sha256.hex().to_owned());
                    let inside = format!("/{}", path.strip_prefix(root).unwrap_or(&path).display());
                    index
                        .by_hash
                        .entry(sha256.hex().to_owned())
                        .or_insert_with(|| inside.clone());
                    index.by_inode.insert(
                        (meta.dev(), meta.ino()),
                        Executable {
                            path: inside,
                            sha256,
                            size: meta.size(),
                            mtime_ns: mtime_ns(&meta),
                            ctime_ns: ctime_ns(&meta),
                        },
                    );
                }
            }
        }
        if let Some(c) = cache.filter(|_| new.files != old.files)
            && let Ok(bytes) = serde_json::to_vec(&new)
        {
            // A name of its own, so concurrent runs never interleave their writes.
            let tmp = c.with_extension(format!("tmp.{}", std::process::id()));
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, c);
            }
        }
        Ok(index)
    }

    /// How many executables the image has.
    pub fn len(&self) -> usize {
        self.by_inode.len()
    }

    /// Whether the image has no executable.
    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty()
    }

    /// The executables, by path.
    pub fn listing(&self) -> BTreeMap<String, Sha256> {
        self.by_inode
            .values()
            .map(|e| (e.path.clone(), e.sha256.clone()))
            .collect()
    }

    /// Decides whether the open file `file` may be executed: a verified inode unchanged since
    /// it was indexed, or content whose digest is one of the image's executables.
    pub fn check(&self, file: &std::fs::File) -> Result<String, Refusal> {
        let meta = file.metadata().map_err(|e| Refusal {
            sha256: None,
            reason: format!("cannot inspect the file: {e}"),
        })?;
        if !meta.is_file() {
            return Err(Refusal {
                sha256: None,
                reason: "not a regular file".into(),
            });
        }
        if let Some(e) = self.by_inode.get(&(meta.dev(), meta.ino()))
            && e.size == meta.size()
            && e.mtime_ns == mtime_ns(&meta)
            && e.ctime_ns == ctime_ns(&meta)
        {
            return Ok(e.path.clone());
        }
        let sha = hash_reader(file, MAX_EXEC_HASH).map_err(|e| Refusal {
            sha256: None,
            reason: format!("cannot read the file: {e}"),
        })?;
        let Some(sha) = sha else {
            return Err(Refusal {
                sha256: None,
                reason: format!("larger than {MAX_EXEC_HASH} bytes, not checked"),
            });
        };
        match self.by_hash.get(sha.hex()) {
            Some(path) => Ok(path.clone()),
            None => Err(Refusal {
                sha256: Some(sha),
                reason: "not in the verified image (written or brought in at run time)".into(),
            }),
        }
    }
}

/// Why an exec was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The content digest, when it was computed.
    pub sha256: Option<Sha256>,
    /// Why.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfence_provenance::oci;

    #[test]
    fn index_allows_image_files_and_refuses_new_content() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let bin = t.path().join("bin");
        std::fs::create_dir(&bin).ok();
        std::fs::write(bin.join("tool"), b"\x7fELF tool").ok();
        std::fs::set_permissions(bin.join("tool"), std::fs::Permissions::from_mode(0o755)).ok();
        std::fs::write(bin.join("data"), b"not executable").ok();
        let index = ExecIndex::build(t.path()).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(index.len(), 1);
        let open = |p: &Path| std::fs::File::open(p).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            index.check(&open(&bin.join("tool"))).ok().as_deref(),
            Some("/bin/tool")
        );
        // A copy elsewhere with the same bytes is the same code.
        let other = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        std::fs::write(other.path().join("copy"), b"\x7fELF tool").ok();
        assert_eq!(
            index
                .check(&open(&other.path().join("copy")))
                .ok()
                .as_deref(),
            Some("/bin/tool")
        );
        std::fs::write(other.path().join("evil"), b"\x7fELF evil").ok();
        let refusal = index.check(&open(&other.path().join("evil"))).err();
        assert_eq!(
            refusal.as_ref().map(|r| r.reason.as_str()),
            Some("not in the verified image (written or brought in at run time)")
        );
        assert_eq!(
            refusal.and_then(|r| r.sha256),
            Some(Sha256::of(b"\x7fELF evil"))
        );
        // Changing a verified file in place (same inode) is caught by its content.
        std::fs::write(bin.join("tool"), b"\x7fELF tool, patched").ok();
        assert!(index.check(&open(&bin.join("tool"))).is_err());
    }

    #[test]
    fn digest_cache_is_reused_only_for_unchanged_files() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("bin")).ok();
        let tool = root.join("bin/tool");
        std::fs::write(&tool, b"v1").ok();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).ok();
        let cache = t.path().join("cache.json");
        let first =
            ExecIndex::build_cached(&root, Some(&cache)).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(first.listing().get("/bin/tool"), Some(&Sha256::of(b"v1")));
        assert!(cache.exists());
        // Rewriting the file changes its change time: the cached digest is not reused.
        std::fs::write(&tool, b"v2").ok();
        let second =
            ExecIndex::build_cached(&root, Some(&cache)).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(second.listing().get("/bin/tool"), Some(&Sha256::of(b"v2")));
    }

    #[test]
    fn a_work_dir_others_can_write_is_refused() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).ok();
        let err = check_private_dir(t.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("must be owned by root and writable by no one else")
                && err.contains("mode 777"),
            "{err}"
        );
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).ok();
        // Owned by whoever runs the tests: accepted only for root.
        let owner_is_root = std::fs::metadata(t.path())
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        assert_eq!(check_private_dir(t.path()).is_ok(), owner_is_root);
    }

    #[test]
    fn image_layers_unpack_with_whiteouts_and_refuse_escapes() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let layout = t.path().join("img");
        let l1 = oci::tar(&[("bin/tool", 0o755, b"one"), ("etc/old", 0o644, b"x")]);
        let l2 = oci::tar(&[("etc/.wh.old", 0o644, b""), ("bin/tool2", 0o4755, b"two")]);
        oci::write_layout(&layout, &serde_json::json!({}), &[l1, l2], "t")
            .unwrap_or_else(|e| unreachable!("{e}"));
        let dest = t.path().join("rootfs");
        unpack(&layout, &dest).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            std::fs::read(dest.join("bin/tool")).ok(),
            Some(b"one".to_vec())
        );
        assert!(!dest.join("etc/old").exists());
        // Setuid bits never reach the host copy.
        let mode = std::fs::metadata(dest.join("bin/tool2"))
            .map(|m| m.mode())
            .unwrap_or(0);
        assert_eq!(mode & 0o7777, 0o755);

        let evil = t.path().join("evil");
        let bad = oci::tar(&[("../../escaped", 0o644, b"x")]);
        oci::write_layout(&evil, &serde_json::json!({}), &[bad], "t")
            .unwrap_or_else(|e| unreachable!("{e}"));
        let err = unpack(&evil, &t.path().join("rootfs2"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("climbs out of the image"), "{err}");
        assert!(!t.path().join("escaped").exists());
    }

    /// `x -> <outside>` then `x/.wh..opq` or `x/.wh.victim` must not touch the outside.
    #[test]
    fn whiteouts_never_follow_a_symlink_out_of_the_image() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).ok();
        std::fs::write(outside.join("victim"), b"keep").ok();
        let dest = t.path().join("root");
        std::fs::create_dir(&dest).ok();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_cksum();
        b.append_link(&mut h, "x", &outside).ok();
        for name in ["x/.wh.victim", "x/.wh..wh..opq"] {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &b""[..]).ok();
        }
        let bytes = b.into_inner().unwrap_or_default();
        let err = apply_layer(&bytes[..], &dest).err().unwrap_or_default();
        assert!(
            err.contains("goes through a symlink out of the image"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(outside.join("victim")).ok(),
            Some(b"keep".to_vec())
        );
    }

    #[test]
    fn whiteouts_of_dot_or_dot_dot_are_refused() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        std::fs::write(t.path().join("sibling"), b"keep").ok();
        let dest = t.path().join("root");
        std::fs::create_dir(&dest).ok();
        std::fs::write(dest.join("file"), b"keep").ok();
        for name in [".wh...", ".wh..", ".wh."] {
            let layer = oci::tar(&[(name, 0o644, b"")]);
            let err = apply_layer(&layer[..], &dest).err().unwrap_or_default();
            assert!(err.contains("names no entry of the image"), "{name}: {err}");
        }
        assert!(t.path().join("sibling").exists() && dest.join("file").exists());
    }

    #[test]
    fn a_tampered_layer_is_refused_before_unpacking() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let layout = t.path().join("img");
        let layer = oci::tar(&[("bin/tool", 0o755, b"one")]);
        oci::write_layout(
            &layout,
            &serde_json::json!({}),
            std::slice::from_ref(&layer),
            "t",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let blob = layout.join("blobs/sha256").join(Sha256::of(&layer).hex());
        let mut changed = layer;
        if let Some(b) = changed.get_mut(600) {
            *b ^= 1;
        }
        std::fs::write(&blob, changed).ok();
        let err = unpack(&layout, &t.path().join("rootfs"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("does not match"), "{err}");
        assert!(!t.path().join("rootfs/bin/tool").exists());
    }
}
