//! Service policies from untrusted YAML: the parser never panics, and an accepted policy
//! re-serializes to a document that parses to the same policy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_admission::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = Policy::from_yaml(text) {
        let again = serde_yaml_ng::to_string(&p.doc).ok();
        let reparsed = again.as_deref().and_then(|t| Policy::from_yaml(t).ok());
        assert_eq!(reparsed.map(|r| r.digest), Some(p.digest));
    }
});
