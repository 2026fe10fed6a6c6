//! Device allocation as AllocateDevice specifies it, for Devices drivers: which free devices a
//! claim's requests get (by id, pool, kind and attributes), all or none, aligned by NUMA node or
//! PCIe root with a device of the inventory or a PCI function the driver does not own, and the
//! contract's errors naming the request and the constraint. Pure: the driver passes its
//! inventory (a device held by another claim has `allocated_to_claim` set) and a way to read a
//! PCI function's topology; it keeps the claims itself.

use std::collections::BTreeSet;

use tonic::{Code, Status};

use crate::proto::{
    AllocateDeviceRequest, AllocatedDevice, Device, DeviceHealth, DeviceKind, DeviceRequest,
    TopologyScope,
};
use crate::validate::field_error;

/// Whether `d` passes a ListDevices (or WatchDevices) filter: its kind, free only, its pool.
pub fn listed(d: &Device, filter: &crate::proto::ListDevicesRequest) -> bool {
    (filter.kind == DeviceKind::Unspecified as i32 || d.kind == filter.kind)
        && (!filter.free_only || d.allocated_to_claim.is_empty())
        && (filter.pool.is_empty() || d.pool == filter.pool)
}

/// Where a PCI function sits. `None` is unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// NUMA node.
    pub numa_node: Option<i32>,
    /// PCIe root complex, `pci0000:3a`.
    pub pcie_root: Option<String>,
}

/// Whether `s` is a PCI address in its sysfs form, `dddd:bb:dd.f` (lower-case hex).
pub fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
        && [0..4, 5..7, 8..10].into_iter().all(|r| {
            b[r].iter()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        })
}

/// Most devices one request may ask for.
pub const MAX_COUNT: u32 = 64;
/// Largest opaque configuration of a request.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// Where a device sits, as alignment compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    what: String,
    numa_node: Option<i32>,
    pcie_root: Option<String>,
}

impl Place {
    fn of_device(d: &Device) -> Self {
        Self {
            what: format!("device {:?}", d.id),
            numa_node: (d.numa_node >= 0).then_some(d.numa_node),
            pcie_root: (!d.pcie_root.is_empty()).then(|| d.pcie_root.clone()),
        }
    }

    fn of_pci(addr: &str, info: &Topology) -> Self {
        Self {
            what: format!("PCI function {addr}"),
            numa_node: info.numa_node,
            pcie_root: info.pcie_root.clone(),
        }
    }

    /// The value `scope` compares, in words for an error.
    fn at(&self, scope: TopologyScope) -> Option<String> {
        match scope {
            TopologyScope::NumaNode => self.numa_node.map(|n| format!("NUMA node {n}")),
            TopologyScope::PcieRoot => self.pcie_root.as_ref().map(|r| format!("PCIe root {r}")),
            TopologyScope::Unspecified => None,
        }
    }
}

/// Checks the fields allocation needs beyond the SDK's checks.
fn check(i: usize, r: &DeviceRequest, pools: &[String]) -> Result<(), Status> {
    let f = |name: &str| format!("requests[{i}].{name}");
    if r.count > MAX_COUNT {
        return Err(field_error(
            Code::InvalidArgument,
            f("count"),
            format!("at most {MAX_COUNT}"),
            "COUNT_TOO_LARGE",
        ));
    }
    if !r.pool.is_empty() && !pools.contains(&r.pool) {
        return Err(field_error(
            Code::NotFound,
            f("pool"),
            format!("no pool {:?} on this node", r.pool),
            "POOL_UNKNOWN",
        ));
    }
    let targets = [&r.align_with_device_id, &r.align_with_pci_address];
    let n = targets.iter().filter(|t| !t.is_empty()).count();
    if n > 1 {
        return Err(field_error(
            Code::InvalidArgument,
            f("align_with_pci_address"),
            "give align_with_device_id or align_with_pci_address, not both",
            "ALIGNMENT_TARGETS",
        ));
    }
    let scope = TopologyScope::try_from(r.align_scope).unwrap_or(TopologyScope::Unspecified);
    if n == 1 && scope == TopologyScope::Unspecified {
        return Err(field_error(
            Code::InvalidArgument,
            f("align_scope"),
            "an alignment target needs a scope (NUMA node or PCIe root)",
            "ALIGNMENT_SCOPE",
        ));
    }
    if !r.align_with_pci_address.is_empty() && !is_pci_address(&r.align_with_pci_address) {
        return Err(field_error(
            Code::InvalidArgument,
            f("align_with_pci_address"),
            format!(
                "{:?} is not a PCI address (0000:3b:00.0)",
                r.align_with_pci_address
            ),
            "PCI_ADDRESS_INVALID",
        ));
    }
    if r.config.len() > MAX_CONFIG_BYTES {
        return Err(field_error(
            Code::InvalidArgument,
            f("config"),
            format!("at most {MAX_CONFIG_BYTES} bytes"),
            "CONFIG_TOO_LARGE",
        ));
    }
    Ok(())
}

/// Whether device `d` is what request `r` asks for (alignment aside).
fn matches(r: &DeviceRequest, d: &Device) -> bool {
    let kind = DeviceKind::try_from(r.kind).unwrap_or(DeviceKind::Unspecified);
    (r.device_id.is_empty() || r.device_id == d.id)
        && (r.pool.is_empty() || r.pool == d.pool)
        && (kind == DeviceKind::Unspecified || r.kind == d.kind)
        && r.match_attributes
            .iter()
            .all(|(k, v)| d.attributes.get(k) == Some(v))
}

/// Allocates every request of `req` from `inventory` (devices with `allocated_to_claim` set
/// are held, `GONE` ones are not offered), or none: the first request that cannot be met fails
/// the claim, naming it. `pools` are the driver's pool names (a request naming another is
/// NOT_FOUND); `pci` reads the topology of a PCI function (`None`: the node has none such).
/// The requests' opaque `config` is only size-checked: its meaning is the driver's.
pub fn allocate(
    req: &AllocateDeviceRequest,
    inventory: &[Device],
    pools: &[String],
    pci: &dyn Fn(&str) -> Option<Topology>,
) -> Result<Vec<AllocatedDevice>, Status> {
    let mut taken: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    for (i, r) in req.requests.iter().enumerate() {
        check(i, r, pools)?;
        let f = |name: &str| format!("requests[{i}].{name}");
        if !r.device_id.is_empty() && !inventory.iter().any(|d| d.id == r.device_id) {
            return Err(field_error(
                Code::NotFound,
                f("device_id"),
                format!("no device {:?} on this node", r.device_id),
                "DEVICE_UNKNOWN",
            ));
        }
        let count = r.count.max(1) as usize;
        let matching: Vec<&Device> = inventory
            .iter()
            .filter(|d| matches(r, d) && d.health != DeviceHealth::Gone as i32)
            .collect();
        let free: Vec<&Device> = matching
            .iter()
            .copied()
            .filter(|d| d.allocated_to_claim.is_empty() && !taken.contains(d.id.as_str()))
            .collect();
        if free.len() < count {
            return Err(field_error(
                Code::ResourceExhausted,
                format!("requests[{i}]"),
                format!(
                    "request {:?}: {} device(s) needed, {} of the {} matching free",
                    r.name,
                    count,
                    free.len(),
                    matching.len()
                ),
                "NO_DEVICE_FREE",
            ));
        }
        let scope = TopologyScope::try_from(r.align_scope).unwrap_or(TopologyScope::Unspecified);
        let target = if !r.align_with_device_id.is_empty() {
            let d = inventory
                .iter()
                .find(|d| d.id == r.align_with_device_id)
                .ok_or_else(|| {
                    field_error(
                        Code::NotFound,
                        f("align_with_device_id"),
                        format!("no device {:?} on this node", r.align_with_device_id),
                        "DEVICE_UNKNOWN",
                    )
                })?;
            Some(Place::of_device(d))
        } else if !r.align_with_pci_address.is_empty() {
            let info = pci(&r.align_with_pci_address).ok_or_else(|| {
                field_error(
                    Code::NotFound,
                    f("align_with_pci_address"),
                    format!("no PCI function {} on this node", r.align_with_pci_address),
                    "PCI_FUNCTION_UNKNOWN",
                )
            })?;
            Some(Place::of_pci(&r.align_with_pci_address, &info))
        } else {
            None
        };
        let chosen: Vec<&Device> = match &target {
            None => free.into_iter().take(count).collect(),
            Some(t) => {
                let Some(want) = t.at(scope) else {
                    return Err(field_error(
                        Code::FailedPrecondition,
                        f("align_scope"),
                        format!(
                            "request {:?}: the {} of {} is unknown on this node",
                            r.name,
                            match scope {
                                TopologyScope::NumaNode => "NUMA node",
                                _ => "PCIe root",
                            },
                            t.what
                        ),
                        "TOPOLOGY_UNKNOWN",
                    ));
                };
                let aligned: Vec<&Device> = free
                    .iter()
                    .copied()
                    .filter(|d| Place::of_device(d).at(scope).as_ref() == Some(&want))
                    .collect();
                if aligned.len() < count {
                    return Err(field_error(
                        Code::FailedPrecondition,
                        f("align_scope"),
                        format!(
                            "request {:?}: {} free device(s) match, {} on {} (the {} of {}), {} needed",
                            r.name,
                            free.len(),
                            aligned.len(),
                            want,
                            match scope {
                                TopologyScope::NumaNode => "NUMA node",
                                _ => "PCIe root",
                            },
                            t.what,
                            count
                        ),
                        "ALIGNMENT_UNSATISFIABLE",
                    ));
                }
                aligned.into_iter().take(count).collect()
            }
        };
        for d in chosen {
            taken.insert(d.id.as_str());
            let mut d = d.clone();
            d.allocated_to_claim = req.claim_uid.clone();
            out.push(AllocatedDevice {
                request: r.name.clone(),
                device: Some(d),
                config: r.config.clone(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, pool: &str, numa: i32, root: &str) -> Device {
        Device {
            id: id.into(),
            kind: DeviceKind::Nic as i32,
            pool: pool.into(),
            numa_node: numa,
            pcie_root: root.into(),
            health: DeviceHealth::Healthy as i32,
            attributes: [("kernel-driver".to_string(), "veth".to_string())].into(),
            ..Default::default()
        }
    }

    fn inventory() -> Vec<Device> {
        vec![
            dev("a0", "p", 0, "pci0000:3a"),
            dev("a1", "p", 0, "pci0000:3b"),
            dev("b0", "p", 1, "pci0000:b0"),
            dev("u0", "q", -1, ""),
        ]
    }

    fn pools() -> Vec<String> {
        vec!["p".into(), "q".into()]
    }

    fn gpu(addr: &str) -> Option<Topology> {
        (addr == "0000:b2:00.0").then(|| Topology {
            numa_node: Some(1),
            pcie_root: Some("pci0000:b0".into()),
        })
    }

    fn claim(requests: Vec<DeviceRequest>) -> AllocateDeviceRequest {
        AllocateDeviceRequest {
            claim_uid: "c1".into(),
            requests,
            ..Default::default()
        }
    }

    fn req(f: impl FnOnce(&mut DeviceRequest)) -> DeviceRequest {
        let mut r = DeviceRequest {
            name: "nic".into(),
            ..Default::default()
        };
        f(&mut r);
        r
    }

    fn ids(r: Result<Vec<AllocatedDevice>, Status>) -> Vec<String> {
        r.unwrap()
            .into_iter()
            .map(|a| a.device.unwrap().id)
            .collect()
    }

    fn err(r: Result<Vec<AllocatedDevice>, Status>) -> (Code, String) {
        let s = r.unwrap_err();
        (s.code(), s.message().to_string())
    }

    #[test]
    fn pci_addresses_in_sysfs_form() {
        assert!(is_pci_address("0000:3b:00.2"));
        assert!(!is_pci_address("0000:3b:00.8"));
        assert!(!is_pci_address("0000:3B:00.2"));
        assert!(!is_pci_address("3b:00.2"));
        assert!(!is_pci_address("0000:3b:00:2"));
    }

    #[test]
    fn alignment_with_an_owned_device_and_a_gpu() {
        let inv = inventory();
        // Same NUMA node as a0: a1 (a0 itself is taken by the first request).
        let r = claim(vec![
            req(|r| r.device_id = "a0".into()),
            req(|r| {
                r.name = "second".into();
                r.align_with_device_id = "a0".into();
                r.align_scope = TopologyScope::NumaNode as i32;
            }),
        ]);
        assert_eq!(ids(allocate(&r, &inv, &pools(), &gpu)), ["a0", "a1"]);
        // Same PCIe root as a0: only a0, taken by the first request.
        let mut r2 = r.clone();
        r2.requests[1].align_scope = TopologyScope::PcieRoot as i32;
        let (code, msg) = err(allocate(&r2, &inv, &pools(), &gpu));
        assert_eq!(code, Code::FailedPrecondition);
        assert!(
            msg.starts_with("requests[1].align_scope: ")
                && msg.contains("PCIe root pci0000:3a (the PCIe root of device \"a0\")"),
            "{msg}"
        );
        // A GPU on NUMA node 1 (not netlet's): b0.
        let g = claim(vec![req(|r| {
            r.align_with_pci_address = "0000:b2:00.0".into();
            r.align_scope = TopologyScope::NumaNode as i32;
        })]);
        assert_eq!(ids(allocate(&g, &inv, &pools(), &gpu)), ["b0"]);
        let mut g2 = g.clone();
        g2.requests[0].count = 2;
        let (code, msg) = err(allocate(&g2, &inv, &pools(), &gpu));
        assert_eq!(code, Code::FailedPrecondition);
        assert!(
            msg.contains("4 free device(s) match, 1 on NUMA node 1"),
            "{msg}"
        );
        // A PCI function the node does not have.
        let mut g3 = g.clone();
        g3.requests[0].align_with_pci_address = "0000:c1:00.0".into();
        assert_eq!(err(allocate(&g3, &inv, &pools(), &gpu)).0, Code::NotFound);
        // Aligning with a device whose NUMA node is unknown.
        let u = claim(vec![req(|r| {
            r.align_with_device_id = "u0".into();
            r.align_scope = TopologyScope::NumaNode as i32;
        })]);
        let (code, msg) = err(allocate(&u, &inv, &pools(), &gpu));
        assert_eq!(code, Code::FailedPrecondition);
        assert!(
            msg.contains("NUMA node of device \"u0\" is unknown"),
            "{msg}"
        );
    }

    #[test]
    fn held_devices_exhaustion_and_field_errors() {
        let mut inv = inventory();
        inv[0].allocated_to_claim = "other".into();
        inv[2].health = DeviceHealth::Gone as i32;
        // Held and gone devices are not given: a1 and u0 are left.
        let all = claim(vec![req(|r| r.count = 2)]);
        assert_eq!(ids(allocate(&all, &inv, &pools(), &gpu)), ["a1", "u0"]);
        let mut three = all.clone();
        three.requests[0].count = 3;
        let (code, msg) = err(allocate(&three, &inv, &pools(), &gpu));
        assert_eq!(code, Code::ResourceExhausted);
        assert!(
            msg.contains("3 device(s) needed, 2 of the 3 matching free"),
            "{msg}"
        );
        // By pool, by attribute, by kind.
        let q = claim(vec![req(|r| r.pool = "q".into())]);
        assert_eq!(ids(allocate(&q, &inv, &pools(), &gpu)), ["u0"]);
        let attr = claim(vec![req(|r| {
            r.match_attributes = [("kernel-driver".to_string(), "mlx5_core".to_string())].into()
        })]);
        assert_eq!(
            err(allocate(&attr, &inv, &pools(), &gpu)).0,
            Code::ResourceExhausted
        );
        let vf = claim(vec![req(|r| r.kind = DeviceKind::SriovVf as i32)]);
        assert_eq!(
            err(allocate(&vf, &inv, &pools(), &gpu)).0,
            Code::ResourceExhausted
        );
        for (f, code, field) in [
            (
                Box::new(|r: &mut DeviceRequest| r.pool = "nosuch".into())
                    as Box<dyn Fn(&mut DeviceRequest)>,
                Code::NotFound,
                "requests[0].pool",
            ),
            (
                Box::new(|r: &mut DeviceRequest| r.device_id = "zz".into()),
                Code::NotFound,
                "requests[0].device_id",
            ),
            (
                Box::new(|r: &mut DeviceRequest| r.align_with_device_id = "a1".into()),
                Code::InvalidArgument,
                "requests[0].align_scope",
            ),
            (
                Box::new(|r: &mut DeviceRequest| {
                    r.align_with_device_id = "a1".into();
                    r.align_with_pci_address = "0000:b2:00.0".into();
                }),
                Code::InvalidArgument,
                "requests[0].align_with_pci_address",
            ),
            (
                Box::new(|r: &mut DeviceRequest| {
                    r.align_with_pci_address = "b2:00.0".into();
                    r.align_scope = TopologyScope::NumaNode as i32;
                }),
                Code::InvalidArgument,
                "requests[0].align_with_pci_address",
            ),
            (
                Box::new(|r: &mut DeviceRequest| r.count = MAX_COUNT + 1),
                Code::InvalidArgument,
                "requests[0].count",
            ),
            (
                Box::new(|r: &mut DeviceRequest| r.config = vec![b' '; MAX_CONFIG_BYTES + 1]),
                Code::InvalidArgument,
                "requests[0].config",
            ),
        ] {
            let c = claim(vec![req(|r| f(r))]);
            let (got, msg) = err(allocate(&c, &inv, &pools(), &gpu));
            assert_eq!(got, code, "{msg}");
            assert!(msg.starts_with(&format!("{field}: ")), "{msg}");
        }
    }
}
