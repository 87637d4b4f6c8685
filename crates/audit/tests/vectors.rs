//! Every inclusion and consistency vector of transparency-dev/merkle (see
//! `testdata/merkle/SOURCE.md`), the `wantErr` cases included, against the RFC 9162 verifier.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ringfence_audit::rfc9162::{Hash, verify_consistency, verify_inclusion};
use serde_json::Value;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

/// A 32-byte hash, or `None` for anything else (empty, garbage around it, not base64).
fn hash(v: &Value) -> Option<Hash> {
    B64.decode(v.as_str()?).ok()?.try_into().ok()
}

/// A root. The reference verifier compares roots as byte strings of any length
/// (some vectors use placeholders like "don't care"); ours takes 32-byte hashes, so other
/// lengths are mapped to 32 bytes in a way that keeps equality and can never match a hash
/// the verifier computes: `SHA-256("non-hash" || bytes)`.
fn root(v: &Value) -> Option<Hash> {
    let raw = B64.decode(v.as_str()?).ok()?;
    if let Ok(h) = <[u8; 32]>::try_from(raw.as_slice()) {
        return Some(h);
    }
    let mut tagged = b"non-hash".to_vec();
    tagged.extend_from_slice(&raw);
    Some(sha256(&tagged))
}

fn sha256(data: &[u8]) -> Hash {
    // The RFC 9162 leaf hash is SHA-256 of a prefixed input, which is all this needs.
    ringfence_audit::rfc9162::leaf_hash(data)
}

fn proof(v: &Value) -> Option<Vec<Hash>> {
    match v {
        Value::Null => Some(vec![]),
        Value::Array(items) => items.iter().map(hash).collect(),
        _ => None,
    }
}

fn run(kind: &str, check: impl Fn(&Value) -> bool) -> (usize, usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata/merkle")
        .join(kind);
    let mut all = Vec::new();
    files(&dir, &mut all);
    all.sort();
    let mut errors = 0;
    for path in &all {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let want_err = v["wantErr"].as_bool().unwrap();
        let ok = check(&v);
        assert_eq!(
            ok,
            !want_err,
            "{}: {} (wantErr {want_err})",
            path.display(),
            v["desc"]
        );
        if want_err {
            errors += 1;
        }
    }
    (all.len(), errors)
}

#[test]
fn all_inclusion_vectors() {
    let (n, errors) = run("inclusion", |v| {
        let (Some(root), Some(leaf), Some(proof)) =
            (root(&v["root"]), hash(&v["leafHash"]), proof(&v["proof"]))
        else {
            return false;
        };
        verify_inclusion(
            v["leafIdx"].as_u64().unwrap(),
            v["treeSize"].as_u64().unwrap(),
            &leaf,
            &proof,
            &root,
        )
        .is_ok()
    });
    eprintln!("{n} inclusion vectors, {errors} of them error cases");
    assert!(n >= 90 && errors > n / 2);
}

#[test]
fn all_consistency_vectors() {
    let (n, errors) = run("consistency", |v| {
        let (Some(root1), Some(root2), Some(proof)) =
            (root(&v["root1"]), root(&v["root2"]), proof(&v["proof"]))
        else {
            return false;
        };
        verify_consistency(
            v["size1"].as_u64().unwrap(),
            v["size2"].as_u64().unwrap(),
            &proof,
            &root1,
            &root2,
        )
        .is_ok()
    });
    eprintln!("{n} consistency vectors, {errors} of them error cases");
    assert!(n >= 90 && errors > n / 2);
}
