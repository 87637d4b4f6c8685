//! An SVID kept on disk, as an agent keeps its machine SVID and a person their user
//! certificate: a directory (mode 0700) with `svid.pem` (mode 0600: the certificate, its
//! intermediates, then its PKCS#8 private key; one file, replaced atomically, so a reader
//! never pairs a new key with an old certificate) and `bundle.pem` (the trust bundle). A
//! `svid.pem` readable by anyone else is refused.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ringfence_core::SpiffeId;
use rustls_pki_types::CertificateDer;

use crate::tls::{spiffe_id_of, split_der_certificates};
use crate::workload_api::X509Material;

/// The certificate chain and key.
pub const CERT: &str = "svid.pem";
/// The trust bundle file.
pub const BUNDLE: &str = "bundle.pem";

fn pems(tag: &str, ders: impl IntoIterator<Item = Vec<u8>>) -> String {
    ders.into_iter()
        .map(|d| crate::ca::pem_lf(&pem::Pem::new(tag, d)))
        .collect()
}

fn write(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("partial");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Writes `m` into `dir` (created 0700 if missing); each file is replaced atomically.
pub fn save(dir: &Path, m: &X509Material) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    write(
        &dir.join(BUNDLE),
        bundle_pem(&m.bundle_der).as_bytes(),
        0o644,
    )?;
    let mut text = pems(
        "CERTIFICATE",
        std::iter::once(m.cert_der.clone()).chain(m.intermediates.iter().cloned()),
    );
    text.push_str(&pems("PRIVATE KEY", [m.key_pkcs8_der.clone()]));
    write(&dir.join(CERT), text.as_bytes(), 0o600)
}

/// A trust bundle (concatenated DER) as PEM.
pub fn bundle_pem(bundle_der: &[u8]) -> String {
    pems(
        "CERTIFICATE",
        split_der_certificates(bundle_der)
            .into_iter()
            .map(|c| c.as_ref().to_vec()),
    )
}

/// Reads certificates from a PEM file, as concatenated DER.
pub fn read_bundle(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = pem::parse_many(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let der: Vec<u8> = certs
        .iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .flat_map(|p| p.contents().to_vec())
        .collect();
    if der.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(der)
}

/// Reads the SVID in `dir`.
pub fn load(dir: &Path) -> Result<X509Material, String> {
    let path = dir.join(CERT);
    let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{}: readable by others (mode {:o}); it holds a private key and must be 0600",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let blocks = pem::parse_many(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut chain = blocks
        .iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.contents().to_vec());
    let keys: Vec<&pem::Pem> = blocks.iter().filter(|p| p.tag() == "PRIVATE KEY").collect();
    let [key] = keys.as_slice() else {
        return Err(format!(
            "{}: expected one PKCS#8 private key, found {}",
            path.display(),
            keys.len()
        ));
    };
    let leaf = chain
        .next()
        .ok_or_else(|| format!("{}: no certificate", path.display()))?;
    let spiffe_id: SpiffeId = spiffe_id_of(&CertificateDer::from(leaf.as_slice()))
        .ok_or_else(|| format!("{}: no SPIFFE ID in it", path.display()))?;
    Ok(X509Material {
        trust_domain: spiffe_id.trust_domain(),
        spiffe_id,
        cert_der: leaf,
        intermediates: chain.collect(),
        key_pkcs8_der: key.contents().to_vec(),
        bundle_der: read_bundle(&dir.join(BUNDLE))?,
    })
}

/// When the certificate in `m` expires, milliseconds since the Unix epoch.
pub fn not_after_ms(m: &X509Material) -> Option<u64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, c) = X509Certificate::from_der(&m.cert_der).ok()?;
    u64::try_from(c.validity().not_after.timestamp())
        .ok()
        .map(|s| s * 1000)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use ringfence_core::{ManualClock, TrustDomain, UnixTime};
    use std::sync::Arc;

    async fn material() -> X509Material {
        let td = TrustDomain::parse("files.test").unwrap();
        let clock = Arc::new(ManualClock::new(UnixTime::from_secs(1_800_000_000)));
        let ca = crate::Ca::generate(
            td.clone(),
            ringfence_core::Clock::now(clock.as_ref()),
            std::time::Duration::from_secs(86_400),
        )
        .unwrap();
        let id = td.workload(&["machine", "m1"]).unwrap();
        let machine = ringfence_core::MachineId::parse("m1").unwrap();
        struct Any(SpiffeId, ringfence_core::MachineId);
        impl crate::IssuanceAuthority for Any {
            fn authorize(
                &self,
                _: &ringfence_core::MachineId,
                _: &SpiffeId,
            ) -> Result<crate::IssuanceAuthorization, String> {
                Ok(crate::IssuanceAuthorization {
                    spiffe_id: self.0.clone(),
                    machine: self.1.clone(),
                    not_after: UnixTime::from_secs(u64::MAX / 2000),
                })
            }
        }
        let audit = Arc::new(ringfence_audit::MemorySink::default());
        let service = Arc::new(
            crate::IssuanceService::new(
                Arc::new(crate::CaSet::new(ca)),
                Arc::new(Any(id.clone(), machine.clone())),
                audit,
                clock.clone(),
            )
            .unwrap(),
        );
        crate::workload_api::obtain(&service, &machine, &id, clock.as_ref())
            .await
            .unwrap()
            .0
    }

    #[tokio::test]
    async fn an_svid_survives_the_round_trip_and_its_file_is_private() {
        let m = material().await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("svid");
        save(&d, &m).unwrap();
        assert_eq!(load(&d).unwrap(), m);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join(CERT)), 0o600);
        // Saving again replaces it whole.
        save(&d, &m).unwrap();
        assert_eq!(load(&d).unwrap(), m);
    }

    #[tokio::test]
    async fn a_key_file_readable_by_others_or_with_two_keys_is_refused() {
        let m = material().await;
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &m).unwrap();
        let cert = dir.path().join(CERT);
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.contains("readable by others (mode 644)"), "{e}");
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut text = std::fs::read_to_string(&cert).unwrap();
        text.push_str(&pems("PRIVATE KEY", [m.key_pkcs8_der.clone()]));
        std::fs::write(&cert, text).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(
            e.contains("expected one PKCS#8 private key, found 2"),
            "{e}"
        );
        std::fs::write(&cert, "").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.contains("found 0"), "{e}");
    }
}
