//! DSSE envelopes from untrusted bytes: parsing and verification never panic, and nothing
//! verifies against a key that signed nothing.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use ringfence_provenance::dsse::{self, SigningKey, TrustedKey};

static KEY: LazyLock<TrustedKey> = LazyLock::new(|| {
    let key = SigningKey::generate_p256().map(|(k, _)| k).ok();
    let key = key.map(|k| k.public_key());
    TrustedKey {
        name: "fuzz".into(),
        keyid: None,
        key: key.unwrap_or(dsse::PublicKey::Ed25519([0; 32])),
    }
});

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = dsse::parse(data) {
        // A key generated at start signed nothing the fuzzer could know: never accepted.
        assert!(dsse::verify(&env, &env.payload_type, std::slice::from_ref(&*KEY), 1).is_err());
    }
});
