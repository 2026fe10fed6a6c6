//! Policy: field errors that change nothing, idempotent apply, decision request validation,
//! address sets changed by their elements.

use netlet_sdk::proto::{
    AddressSet, AddressSetChange, ApplyPolicyRequest, Capability, CheckDnsRequest,
    CheckHostnameRequest, DnsAction, DnsPolicy, HostnameGrant, ListPoliciesRequest, NetworkPolicy,
    NetworkPolicyPeer, NetworkPolicyRule, PolicyDirection, PolicyKey, PolicyKind,
};
use tonic::Code;

use super::{check, expect_code, expect_ok};
use crate::conformance::{Check, Outcome};

/// The target's ListPolicies answer.
async fn list(
    ctx: &crate::conformance::Ctx,
) -> Result<netlet_sdk::proto::ListPoliciesResponse, String> {
    expect_ok(
        "ListPolicies",
        ctx.clients
            .policy
            .clone()
            .list_policies(ListPoliciesRequest {})
            .await,
    )
    .map(|r| r.into_inner())
}

pub fn checks() -> Vec<Check> {
    vec![
        check!(
            "policy/apply-invalid-fields",
            Some(Capability::Policy),
            |ctx| {
                let before = list(ctx).await?;
                let g = before.applied_generation;
                let epoch = before.applied_epoch;
                let base = ApplyPolicyRequest {
                    epoch,
                    generation: g + 1,
                    full_sync: g == 0,
                    dns_policies: vec![DnsPolicy {
                        key: Some(PolicyKey {
                            kind: PolicyKind::DnsPolicy as i32,
                            namespace: "conformance".into(),
                            name: "dns".into(),
                        }),
                        allow: vec!["*.example.com".into()],
                        default_action: DnsAction::Deny as i32,
                        ..Default::default()
                    }],
                    hostname_grants: vec![HostnameGrant {
                        key: Some(PolicyKey {
                            kind: PolicyKind::HostnameGrant as i32,
                            namespace: String::new(),
                            name: "grant".into(),
                        }),
                        namespaces: vec!["conformance".into()],
                        hostnames: vec!["app.example.com".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                type Mutation = fn(&mut ApplyPolicyRequest);
                let cases: Vec<(&str, Mutation)> = vec![
                    ("generation", |r| r.generation = 0),
                    ("dns_policies[0].key", |r| r.dns_policies[0].key = None),
                    ("dns_policies[0].key.kind", |r| {
                        r.dns_policies[0].key.as_mut().unwrap().kind =
                            PolicyKind::NetworkPolicy as i32
                    }),
                    ("dns_policies[0].allow[0]", |r| {
                        r.dns_policies[0].allow = vec!["bad..name".into()]
                    }),
                    ("hostname_grants[0].hostnames", |r| {
                        r.hostname_grants[0].hostnames.clear()
                    }),
                    ("hostname_grants[0].key.namespace", |r| {
                        r.hostname_grants[0].key.as_mut().unwrap().namespace = "ns".into()
                    }),
                ];
                for (field, mutate) in cases {
                    let mut r = base.clone();
                    mutate(&mut r);
                    expect_code(
                        &format!("ApplyPolicy with bad {field}"),
                        ctx.clients.policy.clone().apply_policy(r).await,
                        Code::InvalidArgument,
                        Some(field),
                    )?;
                }
                let after = list(ctx).await?;
                if before != after {
                    return Err("rejected batches changed the policies".into());
                }
                for _ in 0..=ctx.replays {
                    let r = expect_ok(
                        "ApplyPolicy",
                        ctx.clients.policy.clone().apply_policy(base.clone()).await,
                    )?
                    .into_inner();
                    if r.applied_generation != g + 1 {
                        return Err(format!(
                            "applied_generation {} != {}",
                            r.applied_generation,
                            g + 1
                        ));
                    }
                }
                let asked = ctx
                    .clients
                    .policy
                    .clone()
                    .check_hostname(CheckHostnameRequest {
                        namespace: "conformance".into(),
                        hostname: "app.example.com".into(),
                        object_kind: "HTTPRoute".into(),
                        ..Default::default()
                    })
                    .await;
                if ctx.has_feature(netlet_sdk::proto::Feature::HostnameGrants) {
                    let granted = expect_ok("CheckHostname", asked)?.into_inner();
                    if !granted.allowed {
                        return Err(format!("granted hostname refused: {granted:?}"));
                    }
                } else {
                    // A Policy driver that does not evaluate grants (one that enforces
                    // NetworkPolicies) has no evaluator for the question.
                    expect_code(
                        "CheckHostname to a driver without FEATURE_HOSTNAME_GRANTS",
                        asked,
                        Code::Unavailable,
                        None,
                    )?;
                }
                let deletes = vec![
                    PolicyKey {
                        kind: PolicyKind::DnsPolicy as i32,
                        namespace: "conformance".into(),
                        name: "dns".into(),
                    },
                    PolicyKey {
                        kind: PolicyKind::HostnameGrant as i32,
                        namespace: String::new(),
                        name: "grant".into(),
                    },
                ];
                expect_ok(
                    "ApplyPolicy delete",
                    ctx.clients
                        .policy
                        .clone()
                        .apply_policy(ApplyPolicyRequest {
                            epoch,
                            generation: g + 2,
                            deletes,
                            ..Default::default()
                        })
                        .await,
                )?;
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "policy/check-invalid-fields",
            Some(Capability::Policy),
            |ctx| {
                let ok = CheckDnsRequest {
                    client_address: "10.244.0.5".into(),
                    query_name: "example.com.".into(),
                    ..Default::default()
                };
                expect_code(
                    "CheckDns without query_name",
                    ctx.clients
                        .policy
                        .clone()
                        .check_dns(CheckDnsRequest {
                            query_name: String::new(),
                            ..ok.clone()
                        })
                        .await,
                    Code::InvalidArgument,
                    Some("query_name"),
                )?;
                expect_code(
                    "CheckDns with bad client_address",
                    ctx.clients
                        .policy
                        .clone()
                        .check_dns(CheckDnsRequest {
                            client_address: "x".into(),
                            ..ok.clone()
                        })
                        .await,
                    Code::InvalidArgument,
                    Some("client_address"),
                )?;
                expect_code(
                    "CheckHostname without namespace",
                    ctx.clients
                        .policy
                        .clone()
                        .check_hostname(CheckHostnameRequest {
                            hostname: "a.example.com".into(),
                            ..Default::default()
                        })
                        .await,
                    Code::InvalidArgument,
                    Some("namespace"),
                )?;
                let asked = ctx.clients.policy.clone().check_dns(ok).await;
                if ctx.has_feature(netlet_sdk::proto::Feature::DnsPolicy) {
                    expect_ok("CheckDns", asked)?;
                } else {
                    expect_code(
                        "CheckDns to a driver without FEATURE_DNS_POLICY",
                        asked,
                        Code::Unavailable,
                        None,
                    )?;
                }
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "policy/full-sync-from-a-new-epoch-applies",
            Some(Capability::Policy),
            |ctx| {
                let before = list(ctx).await?;
                let (old_epoch, g0) = (before.applied_epoch, before.applied_generation);
                let epoch = old_epoch.wrapping_add(1).max(1);
                let key = PolicyKey {
                    kind: PolicyKind::HostnameGrant as i32,
                    namespace: String::new(),
                    name: ctx.unique("epoch"),
                };
                let grant = HostnameGrant {
                    key: Some(key.clone()),
                    namespaces: vec!["conformance".into()],
                    hostnames: vec!["epoch.example.com".into()],
                    ..Default::default()
                };
                let what = format!(
                    "ApplyPolicy full sync, epoch {epoch}, generation 1, onto epoch {old_epoch} generation {g0}"
                );
                let r = expect_ok(
                    &what,
                    ctx.clients
                        .policy
                        .clone()
                        .apply_policy(ApplyPolicyRequest {
                            epoch,
                            generation: 1,
                            full_sync: true,
                            hostname_grants: vec![grant.clone()],
                            ..Default::default()
                        })
                        .await,
                )?
                .into_inner();
                let after = list(ctx).await?;
                if (r.applied_epoch, r.applied_generation) != (epoch, 1)
                    || (after.applied_epoch, after.applied_generation) != (epoch, 1)
                    || after.hostname_grants != vec![grant]
                    || !after.dns_policies.is_empty()
                    || !after.network_policies.is_empty()
                {
                    return Err(format!(
                        "sent {what}: expected exactly its one grant at (epoch {epoch}, generation 1), got ({}, {}) with {} grants, {} DNS policies, {} NetworkPolicies (contract: a full sync from another epoch always applies and replaces everything)",
                        after.applied_epoch,
                        after.applied_generation,
                        after.hostname_grants.len(),
                        after.dns_policies.len(),
                        after.network_policies.len()
                    ));
                }
                expect_code(
                    "ApplyPolicy delta from the previous epoch",
                    ctx.clients
                        .policy
                        .clone()
                        .apply_policy(ApplyPolicyRequest {
                            epoch: old_epoch,
                            generation: 2,
                            deletes: vec![key.clone()],
                            ..Default::default()
                        })
                        .await,
                    Code::FailedPrecondition,
                    Some("epoch"),
                )?;
                expect_ok(
                    "ApplyPolicy delta in the new epoch",
                    ctx.clients
                        .policy
                        .clone()
                        .apply_policy(ApplyPolicyRequest {
                            epoch,
                            generation: 2,
                            deletes: vec![key],
                            ..Default::default()
                        })
                        .await,
                )?;
                if !list(ctx).await?.hostname_grants.is_empty() {
                    return Err(
                        "sent a delta deleting the only grant in the new epoch: it is still listed"
                            .into(),
                    );
                }
                Ok(Outcome::Passed)
            }
        ),
        check!(
            "policy/address-sets-change-by-elements",
            Some(Capability::Policy),
            only crate::conformance::Mode::Driver,
            |ctx| {
                if !ctx.has_feature(netlet_sdk::proto::Feature::NetworkPolicy) {
                    return Ok(Outcome::Skipped(
                        "the target does not declare FEATURE_NETWORK_POLICY".into(),
                    ));
                }
                let before = list(ctx).await?;
                let (epoch, mut generation) = (before.applied_epoch, before.applied_generation);
                let set = ctx.unique("conf-set");
                let key = PolicyKey {
                    kind: PolicyKind::NetworkPolicy as i32,
                    namespace: "conformance".into(),
                    name: ctx.unique("sets"),
                };
                // A policy whose pods and peers are address sets, the sets sent with it.
                let policy = NetworkPolicy {
                    key: Some(key.clone()),
                    selected_set: format!("{set}-sel"),
                    directions: vec![PolicyDirection::Ingress as i32],
                    ingress: vec![NetworkPolicyRule {
                        peers: vec![NetworkPolicyPeer {
                            address_set: set.clone(),
                            ..Default::default()
                        }],
                        ports: vec![],
                    }],
                    ..Default::default()
                };
                let mut send = |req: ApplyPolicyRequest| {
                    generation += 1;
                    let req = ApplyPolicyRequest {
                        epoch,
                        generation,
                        full_sync: generation == 1,
                        ..req
                    };
                    async move { ctx.clients.policy.clone().apply_policy(req).await }
                };
                expect_ok(
                    "ApplyPolicy with a NetworkPolicy and its two address sets",
                    send(ApplyPolicyRequest {
                        address_sets: vec![
                            AddressSet {
                                name: set.clone(),
                                elements: vec!["10.9.0.1".into(), "10.9.1.0/24".into()],
                            },
                            AddressSet {
                                name: format!("{set}-sel"),
                                elements: vec!["10.244.9.9".into()],
                            },
                        ],
                        network_policies: vec![policy],
                        ..Default::default()
                    })
                    .await,
                )?;
                expect_ok(
                    "ApplyPolicy changing the peer set by its elements",
                    send(ApplyPolicyRequest {
                        address_set_changes: vec![AddressSetChange {
                            name: set.clone(),
                            add: vec!["10.9.0.2".into(), "fd00:9::2".into()],
                            remove: vec!["10.9.0.1".into()],
                        }],
                        ..Default::default()
                    })
                    .await,
                )?;
                let got = list(ctx).await?;
                let elements = got
                    .address_sets
                    .iter()
                    .find(|s| s.name == set)
                    .map(|s| s.elements.clone());
                // The contract: the set is what it was plus the additions, minus the removals.
                let mut want = vec!["10.9.0.2".to_string(), "10.9.1.0/24".into(), "fd00:9::2".into()];
                want.sort();
                let mut have = elements.clone().unwrap_or_default();
                have.sort();
                if have != want {
                    return Err(format!(
                        "after adding 10.9.0.2 and fd00:9::2 to and removing 10.9.0.1 from {{10.9.0.1, 10.9.1.0/24}}, ListPolicies shows {elements:?} (contract: an AddressSetChange adds and removes elements)"
                    ));
                }
                // Overlapping prefixes in one set are refused, naming the element.
                expect_code(
                    "ApplyPolicy with overlapping prefixes in a set",
                    send(ApplyPolicyRequest {
                        address_sets: vec![AddressSet {
                            name: format!("{set}-bad"),
                            elements: vec!["10.0.0.0/8".into(), "10.1.0.0/16".into()],
                        }],
                        ..Default::default()
                    })
                    .await,
                    Code::InvalidArgument,
                    Some("address_sets[0].elements[1]"),
                )?;
                // (The refused batch used a generation; generations need only increase.)
                expect_ok(
                    "ApplyPolicy deleting the policy and its sets",
                    send(ApplyPolicyRequest {
                        deletes: vec![key],
                        address_set_deletes: vec![set.clone(), format!("{set}-sel")],
                        ..Default::default()
                    })
                    .await,
                )?;
                let after = list(ctx).await?;
                if after.address_sets.iter().any(|s| s.name.starts_with(&set)) {
                    return Err("deleted address sets are still listed".into());
                }
                Ok(Outcome::Passed)
            }
        ),
    ]
}
