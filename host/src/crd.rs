//! netlet's own kinds as Kubernetes CustomResourceDefinitions, generated from these Rust types
//! (kube-derive and schemars) into `deploy/crds/` (`netlet crds`; a test fails when the
//! committed files differ). The same types read the manifests and the API's objects, so the
//! schema the API server enforces and what the host accepts are one definition. What the API
//! server can check it refuses before netlet sees the object (enumerations, patterns, bounds,
//! and CEL rules for what spans fields); the host checks the rest as an ApplyPolicy caller's
//! (pattern syntax, module settings) and reports what it leaves out.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// What to do with a name (or when a module fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum DnsAction {
    /// Answer it.
    Allow,
    /// Answer NXDOMAIN.
    Deny,
    /// Answer REFUSED.
    Refuse,
}

/// Any JSON value, kept as given (the settings a module reads).
fn any_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// A DnsPolicy: which names the pods of its namespace (those its selector picks) may resolve
/// through the node-local DNS server, and what else that server does for them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "netlet.io",
    version = "v1alpha1",
    kind = "DnsPolicy",
    plural = "dnspolicies",
    shortname = "dnspol",
    namespaced,
    doc = "Which names the selected pods of a namespace may resolve through the node-local DNS server.",
    printcolumn = r#"{"name":"Default","type":"string","jsonPath":".spec.defaultAction"}"#,
    printcolumn = r#"{"name":"EgressByName","type":"boolean","jsonPath":".spec.egressByName"}"#
)]
#[x_kube(validation = Rule::new("!(self.blockShadowing && self.allowShadowing)").message("blockShadowing and allowShadowing exclude each other"))]
#[x_kube(validation = Rule::new("self.moduleSha256 == '' || self.module != ''").message("moduleSha256 needs module"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsPolicySpec {
    /// The pods it applies to; absent: every pod of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Name patterns allowed (`api.example.com`, `*.example.com`, `**.svc.cluster.local`).
    #[serde(default)]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 255)))]
    pub allow: Vec<String>,
    /// Name patterns denied (wins over allow).
    #[serde(default)]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 255)))]
    pub deny: Vec<String>,
    /// For a name no pattern matches and no module decides: Allow (the default), Deny
    /// (NXDOMAIN) or Refuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<DnsAction>,
    /// The server tries the pod's search domains itself, answering a short name in one round
    /// trip.
    #[serde(default)]
    pub server_side_search: bool,
    /// Names that would shadow a top-level domain through the search path are refused.
    #[serde(default)]
    pub block_shadowing: bool,
    /// This namespace opts out of shadow blocking.
    #[serde(default)]
    pub allow_shadowing: bool,
    /// A `policyModules` entry of the NodeConfig deciding names no pattern matched.
    #[serde(default)]
    #[schemars(length(max = 253))]
    pub module: String,
    /// Settings given to the module as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub module_settings: Option<serde_json::Value>,
    /// The sha256 the module's file must have (64 lowercase hex digits).
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9a-f]{64})?$"))]
    pub module_sha256: String,
    /// When the module fails: Allow, Deny or Refuse (default Refuse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<DnsAction>,
    /// The selected pods may reach only the addresses they resolved (and the DNS servers).
    #[serde(default)]
    pub egress_by_name: bool,
    /// How long a resolved address stays reachable at least, in seconds (0: 30).
    #[serde(default)]
    #[schemars(range(max = 86400))]
    pub egress_min_ttl_seconds: u32,
}

/// A HostnameGrant: which namespaces may claim which hostnames (on an Ingress, an HTTPRoute,
/// a Gateway listener).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "netlet.io",
    version = "v1alpha1",
    kind = "HostnameGrant",
    plural = "hostnamegrants",
    shortname = "hng",
    doc = "Which namespaces may claim which hostnames.",
    printcolumn = r#"{"name":"Hostnames","type":"string","jsonPath":".spec.hostnames"}"#
)]
#[x_kube(validation = Rule::new("self.moduleSha256 == '' || self.module != ''").message("moduleSha256 needs module"))]
#[x_kube(validation = Rule::new("(has(self.namespaces) && size(self.namespaces) > 0) || has(self.namespaceSelector)").message("namespaces or namespaceSelector is required"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostnameGrantSpec {
    /// Namespaces granted by name; `*` for all.
    #[serde(default)]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
    /// Namespaces granted by their labels, besides those named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Hostnames granted: exact names or `*.example.com` wildcards.
    #[schemars(length(min = 1, max = 1000), inner(length(min = 1, max = 253)))]
    pub hostnames: Vec<String>,
    /// A `policyModules` entry of the NodeConfig deciding each claim as well.
    #[serde(default)]
    #[schemars(length(max = 253))]
    pub module: String,
    /// Settings given to the module as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub module_settings: Option<serde_json::Value>,
    /// The sha256 the module's file must have (64 lowercase hex digits).
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9a-f]{64})?$"))]
    pub module_sha256: String,
}

/// Every CRD, as `deploy/crds/<file>` holds it.
pub fn all() -> Vec<(&'static str, String)> {
    [
        ("dnspolicies.netlet.io.yaml", DnsPolicy::crd()),
        ("hostnamegrants.netlet.io.yaml", HostnameGrant::crd()),
    ]
    .into_iter()
    .map(|(file, crd)| {
        let yaml = serde_saphyr::to_string(&crd).expect("a CRD serializes");
        (
            file,
            format!("# Generated by `netlet crds`; do not edit.\n{yaml}"),
        )
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed CRDs are what the types generate (run `netlet crds --out deploy/crds`
    /// after changing them).
    #[test]
    fn committed_crds_are_the_generated_ones() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
        for (file, want) in all() {
            let have = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            assert!(
                have == want,
                "deploy/crds/{file} differs from what the types generate: run `netlet crds --out deploy/crds`"
            );
        }
    }

    /// The schema is structural (every field typed, or kept as given) and carries the rules
    /// the API server enforces.
    #[test]
    fn the_schemas_carry_the_rules() {
        let crd = serde_json::to_value(DnsPolicy::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["defaultAction"]["enum"],
            serde_json::json!(["Allow", "Deny", "Refuse"])
        );
        assert_eq!(
            spec["properties"]["egressMinTtlSeconds"]["maximum"].as_f64(),
            Some(86400.0)
        );
        assert_eq!(
            spec["properties"]["moduleSettings"]["x-kubernetes-preserve-unknown-fields"],
            serde_json::json!(true)
        );
        let rules: Vec<&str> = spec["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["rule"].as_str())
            .collect();
        assert!(rules.contains(&"!(self.blockShadowing && self.allowShadowing)"));
        let grant = serde_json::to_value(HostnameGrant::crd()).unwrap();
        assert_eq!(grant["spec"]["scope"], "Cluster");
    }
}
