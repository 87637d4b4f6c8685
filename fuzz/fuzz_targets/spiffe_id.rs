//! SPIFFE IDs and trust domains from untrusted strings: never panic; what parses prints back
//! byte for byte, and its parts rebuild it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_core::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(id) = SpiffeId::parse(s) {
        assert_eq!(id.as_str(), s);
        assert_eq!(format!("spiffe://{}{}", id.trust_domain_str(), id.path()), s);
        assert!(id.segments().all(|seg| !seg.is_empty() && seg != "." && seg != ".."));
    }
    let _ = TrustDomain::parse(s);
});
