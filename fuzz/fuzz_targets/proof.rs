//! Proof documents and raw proofs from untrusted bytes: parsing and verification never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_audit::proof::ProofDoc;
use ringfence_audit::rfc9162::{Hash, verify_consistency, verify_inclusion};

fuzz_target!(|data: &[u8]| {
    let _ = ProofDoc::parse(data);
    // Interpret the bytes as (index, size, hashes...) for the raw verifiers.
    if data.len() >= 16 {
        let (head, rest) = data.split_at(16);
        let a = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        let b = u64::from_le_bytes(head[8..].try_into().unwrap_or_default());
        let hashes: Vec<Hash> = rest
            .chunks_exact(32)
            .take(70)
            .map(|c| c.try_into().unwrap_or([0; 32]))
            .collect();
        let (leaf, root) = ([1u8; 32], [2u8; 32]);
        let _ = verify_inclusion(a, b, &leaf, &hashes, &root);
        let _ = verify_consistency(a, b, &hashes, &leaf, &root);
    }
});
