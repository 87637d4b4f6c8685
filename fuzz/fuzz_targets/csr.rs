//! CSRs from untrusted bytes: the strict parser never panics, and whatever it accepts names
//! a SPIFFE ID that parses again to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_core::SpiffeId;
use ringfence_identity::parse_csr;

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = parse_csr(data) {
        let id = csr.spiffe_id();
        assert_eq!(SpiffeId::parse(id.as_str()).ok().as_ref(), Some(id));
    }
});
