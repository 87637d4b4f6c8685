//! Compiles the SPIFFE Workload API definition into the server stubs (needs `protoc`,
//! installed by scripts/install-deps.sh).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_protos(&["proto/workload.proto"], &["proto"])?;
    Ok(())
}
