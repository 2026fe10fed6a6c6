//! Generates the Rust client/server code and the encoded descriptor set (for reflection) from
//! `netlet/v1alpha1/*.proto`, with a vendored `protoc` so no system install is needed.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "netlet/v1alpha1/types.proto",
    "netlet/v1alpha1/identity.proto",
    "netlet/v1alpha1/node.proto",
    "netlet/v1alpha1/pods.proto",
    "netlet/v1alpha1/services.proto",
    "netlet/v1alpha1/policy.proto",
    "netlet/v1alpha1/devices.proto",
    "netlet/v1alpha1/cluster.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single threaded; prost-build reads PROTOC.
    unsafe { env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(env::var("OUT_DIR")?);
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .file_descriptor_set_path(out.join("netlet_v1alpha1_descriptor.bin"))
        .compile_protos(PROTOS, &["."])?;
    Ok(())
}
