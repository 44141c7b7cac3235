//! Compiles `proto/pagestore.proto` with protox (a protobuf compiler in pure Rust), so no
//! system `protoc` is needed, then generates prost messages and tonic client and server stubs
//! from the descriptors.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/pagestore.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The channel type is the client crate's choice; no `connect` helper.
        .build_transport(false)
        // Values are 8 KiB pages and up: share the request buffer instead of copying.
        .bytes(".")
        // prost's codec, but an answer's buffer is reserved at its full size (see codec.rs).
        .codec_path("crate::codec::SizedCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
