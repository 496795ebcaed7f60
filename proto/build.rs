//! Compiles `proto/ztgateway/v1/*.proto` with protox (a pure-Rust protobuf compiler: no
//! system `protoc`) into a `FileDescriptorSet`, writes it encoded to
//! `$OUT_DIR/ztgateway_descriptor.bin` (served by gRPC reflection), and generates the
//! prost messages and the tonic clients and servers from it (with `codec::ZtCodec`:
//! undecodable requests are INVALID_ARGUMENT).

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/ztgateway/v1/view.proto",
        "proto/ztgateway/v1/agent.proto",
        "proto/ztgateway/v1/admin.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ztgateway_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::ZtCodec")
        .compile_fds(fds)?;
    Ok(())
}
