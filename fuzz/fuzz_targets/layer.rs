//! Image layers from untrusted bytes: applying one never panics and never writes outside the
//! directory it is applied to — not through `..`, absolute paths, whiteouts, hard links or
//! symlinks the layer plants itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_sandbox::image::apply_layer;

fuzz_target!(|data: &[u8]| {
    let Ok(base) = tempfile::tempdir() else {
        return;
    };
    let root = base.path().join("root");
    let _ = std::fs::create_dir(&root);
    let _ = std::fs::write(base.path().join("outside"), b"keep");
    let _ = apply_layer(data, &root);
    let mut names: Vec<_> = std::fs::read_dir(base.path())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    names.sort();
    assert_eq!(names, ["outside", "root"], "a layer wrote beside its root");
    assert_eq!(
        std::fs::read(base.path().join("outside")).ok().as_deref(),
        Some(&b"keep"[..]),
        "a layer changed a file outside its root"
    );
});
