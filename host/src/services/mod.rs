//! The host's Service view: Kubernetes Services and EndpointSlices from the sources (a
//! manifests directory, the host socket, later the Kubernetes API) turned into this node's
//! per-endpoint decisions ([`view`]).

pub mod health;
pub mod kube;
pub mod manifests;
pub mod sources;
pub mod view;
