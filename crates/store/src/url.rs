//! The `--store` setting: which backend, where.
//!
//! - `redb` (the default): `store.redb` in the data directory;
//! - `redb:///absolute/path/file.redb`: a specific file;
//! - `etcd://host:port[,host:port...]`: an etcd cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Store;
use crate::error::StoreError;
use crate::etcd::{EtcdOptions, EtcdStore};
use crate::redb_backend::{RedbOptions, RedbStore};

/// A parsed `--store` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// The embedded store; `None` means `store.redb` in the data directory.
    Redb(Option<PathBuf>),
    /// An etcd cluster's client endpoints (`host:port`).
    Etcd(Vec<String>),
}

impl StoreUrl {
    /// Parses a `--store` value.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if url == "redb" || url == "redb://" {
            return Ok(Self::Redb(None));
        }
        if let Some(path) = url.strip_prefix("redb://") {
            if !path.starts_with('/') {
                return Err(invalid(
                    "a redb path must be absolute: redb:///path/to/store.redb",
                ));
            }
            return Ok(Self::Redb(Some(PathBuf::from(path))));
        }
        if let Some(list) = url.strip_prefix("etcd://") {
            let mut endpoints = Vec::new();
            for endpoint in list.split(',') {
                let (host, port) = endpoint
                    .rsplit_once(':')
                    .ok_or_else(|| invalid("each etcd endpoint is host:port"))?;
                if host.is_empty() || host.contains('/') || host.contains('@') {
                    return Err(invalid("each etcd endpoint is host:port"));
                }
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| invalid("an etcd port is a number from 1 to 65535"))?;
                endpoints.push(endpoint.to_owned());
            }
            return Ok(Self::Etcd(endpoints));
        }
        Err(invalid(
            "use redb, redb:///path/to/file.redb or etcd://host:port[,host:port...]",
        ))
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Redb(None) => f.write_str("redb"),
            Self::Redb(Some(p)) => write!(f, "redb://{}", p.display()),
            Self::Etcd(eps) => write!(f, "etcd://{}", eps.join(",")),
        }
    }
}

/// Opens the store `url` names, with default options; `data_dir` locates the default redb file.
pub async fn open_store(url: &StoreUrl, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::Redb(path) => {
            let path = path
                .clone()
                .unwrap_or_else(|| data_dir.join(crate::redb_backend::STORE_FILE_NAME));
            // Opening verifies every page; keep that off the async reactor.
            let store =
                tokio::task::spawn_blocking(move || RedbStore::open(&path, RedbOptions::default()))
                    .await
                    .map_err(|e| StoreError::Backend {
                        backend: "redb",
                        reason: format!("open task failed: {e}"),
                    })??;
            Ok(Arc::new(store))
        }
        StoreUrl::Etcd(endpoints) => Ok(Arc::new(
            EtcdStore::connect(endpoints, EtcdOptions::default()).await?,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(StoreUrl::parse("redb").unwrap(), StoreUrl::Redb(None));
        assert_eq!(
            StoreUrl::parse("redb:///var/lib/rf/s.redb").unwrap(),
            StoreUrl::Redb(Some(PathBuf::from("/var/lib/rf/s.redb")))
        );
        assert_eq!(
            StoreUrl::parse("etcd://127.0.0.1:2379,[::1]:2380").unwrap(),
            StoreUrl::Etcd(vec!["127.0.0.1:2379".into(), "[::1]:2380".into()])
        );
    }

    #[test]
    fn refuses_malformed_urls_with_reasons() {
        for (url, want) in [
            ("", "use redb"),
            ("postgres://x", "use redb"),
            ("redb://relative.redb", "absolute"),
            ("etcd://", "host:port"),
            ("etcd://host", "host:port"),
            ("etcd://host:0", "1 to 65535"),
            ("etcd://host:99999", "1 to 65535"),
            ("etcd://user@host:1", "host:port"),
            ("etcd://h:1,", "host:port"),
        ] {
            match StoreUrl::parse(url) {
                Err(StoreError::InvalidUrl { reason, .. }) => {
                    assert!(reason.contains(want), "{url}: {reason}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
