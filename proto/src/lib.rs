//! The `netlet.v1alpha1` contract: messages, clients and servers generated from
//! `proto/netlet/v1alpha1`. The proto files are the specification; read their comments for the
//! idempotency and error codes of every RPC.
#![forbid(unsafe_code)]

/// Generated code for package `netlet.v1alpha1`.
pub mod v1alpha1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("netlet.v1alpha1");

    /// The encoded `FileDescriptorSet` of the package (with its imports), for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("netlet_v1alpha1_descriptor");

    /// This package's fully qualified name, as listed in `GetInfoResponse.api_versions`.
    pub const API_VERSION: &str = "netlet.v1alpha1";
}

pub use v1alpha1::API_VERSION;

/// API versions this build speaks, newest first.
pub const SUPPORTED_API_VERSIONS: &[&str] = &[v1alpha1::API_VERSION];

/// Picks the newest API version both sides support (`ours` and `theirs` newest first).
pub fn negotiate_version<'a>(ours: &[&'a str], theirs: &[String]) -> Option<&'a str> {
    ours.iter().copied().find(|v| theirs.iter().any(|t| t == v))
}

/// Fully qualified name of the Identity service, served by every endpoint.
pub const IDENTITY_SERVICE: &str = "netlet.v1alpha1.Identity";

/// Fully qualified service names of a capability in this version.
pub fn services_of(cap: v1alpha1::Capability) -> &'static [&'static str] {
    use v1alpha1::Capability as C;
    match cap {
        C::Node => &["netlet.v1alpha1.Node"],
        C::Pods => &["netlet.v1alpha1.Pods"],
        C::Services => &["netlet.v1alpha1.Services"],
        C::Policy => &["netlet.v1alpha1.Policy"],
        C::Devices => &["netlet.v1alpha1.Devices"],
        C::Cluster => &["netlet.v1alpha1.Cluster"],
        C::Unspecified => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_newest_common() {
        let theirs = vec!["netlet.v1beta1".to_string(), "netlet.v1alpha1".to_string()];
        assert_eq!(
            negotiate_version(&["netlet.v1alpha1"], &theirs),
            Some("netlet.v1alpha1")
        );
        assert_eq!(
            negotiate_version(&["netlet.v1alpha1"], &["netlet.v2".to_string()]),
            None
        );
        assert_eq!(
            negotiate_version(&["netlet.v1beta1", "netlet.v1alpha1"], &theirs),
            Some("netlet.v1beta1")
        );
    }
}
