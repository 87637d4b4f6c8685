//! Compiles the control-plane API (needs `protoc`, installed by scripts/install-deps.sh).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/ringfence/v1/controlplane.proto"], &["proto"])?;
    Ok(())
}
