//! Stored audit entries from untrusted bytes: decoding never panics, and whatever decodes
//! re-encodes to exactly the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_audit::Event;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = Event::decode(data) {
        assert_eq!(event.encode().ok().as_deref(), Some(data));
    }
});
