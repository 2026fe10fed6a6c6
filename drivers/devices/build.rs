//! Generates the kubelet's DRA plugin and plugin registration services (server side) from
//! `proto/`, with a vendored `protoc`.

use std::env;

const PROTOS: &[&str] = &["proto/dra.proto", "proto/pluginregistration.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single threaded; prost-build reads PROTOC.
    unsafe { env::set_var("PROTOC", protoc) };
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_client(false)
        .compile_protos(PROTOS, &["proto"])?;
    Ok(())
}
