//! Statements and their predicates from untrusted payloads (signed here, so the fuzzer reaches
//! the parsers behind the signature check): in-toto Statement v1, SLSA Provenance v1 and the
//! code-review predicate never panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use ringfence_provenance::dsse::{self, SigningKey, TrustedKey};
use ringfence_provenance::review::Review;
use ringfence_provenance::slsa::Provenance;
use ringfence_provenance::statement::{self, Statement};

static KEY: LazyLock<Option<(SigningKey, TrustedKey)>> = LazyLock::new(|| {
    let (key, _) = SigningKey::generate_p256().ok()?;
    let trusted = TrustedKey {
        name: "fuzz".into(),
        keyid: Some(key.keyid().into()),
        key: key.public_key(),
    };
    Some((key, trusted))
});

fuzz_target!(|data: &[u8]| {
    let Some((key, trusted)) = KEY.as_ref() else {
        return;
    };
    let Ok(env) = dsse::sign(statement::PAYLOAD_TYPE, data, &[key]) else {
        return;
    };
    let Ok(v) = dsse::verify(&env, statement::PAYLOAD_TYPE, std::slice::from_ref(trusted), 1)
    else {
        return;
    };
    if let Ok(s) = Statement::from_envelope(&v) {
        assert!(!s.subjects().is_empty());
        let _ = Provenance::from_statement(&s);
        if let Ok(r) = Review::from_statement(&s) {
            assert!(r.independent_reviewers().iter().all(|n| *n != r.predicate.author));
        }
    }
});
