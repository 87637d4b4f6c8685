//! Signed notes and checkpoint bodies from untrusted bytes: never panic; whatever parses
//! must print back to a body that parses to the same checkpoint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_audit::checkpoint::Checkpoint;
use ringfence_audit::note::Note;

fuzz_target!(|data: &[u8]| {
    if let Ok(note) = Note::parse(data) {
        if let Ok(cp) = Checkpoint::parse_body(&note.text) {
            assert_eq!(Checkpoint::parse_body(&cp.body()).ok(), Some(cp));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Checkpoint::parse_body(text);
    }
});
