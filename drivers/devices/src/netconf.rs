//! A device's network configuration in a pod: what an allocation's opaque `config` says (JSON,
//! the subset of DRANET's interface configuration that applies), under what the attachment's
//! own fields say.

use std::net::IpAddr;

use ipnet::IpNet;
use netlet_sdk::proto::{NetworkSelection, Route};
use serde::Deserialize;

/// Configuration of a device moved into a pod.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetConf {
    /// MTU.
    pub mtu: Option<u32>,
    /// MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    /// Addresses with prefix length.
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    /// Routes through the device.
    #[serde(default)]
    pub routes: Vec<RouteConf>,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteConf {
    /// Destination CIDR.
    pub destination: IpNet,
    /// Next hop; none for a directly connected route.
    pub gateway: Option<IpAddr>,
    /// Metric.
    #[serde(default)]
    pub metric: u32,
}

/// The MTUs a device may be given.
const MTU: std::ops::RangeInclusive<u32> = 68..=65535;

impl NetConf {
    /// Parses and checks an allocation's `config`; the error names the field inside it.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let c: NetConf = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<(), String> {
        if let Some(m) = self.mtu
            && !MTU.contains(&m)
        {
            return Err(format!(
                "mtu: {m} is outside {}..={}",
                MTU.start(),
                MTU.end()
            ));
        }
        if let Some(m) = &self.mac
            && netlet_sdk::netlink::parse_mac(m).is_none()
        {
            return Err(format!("mac: {m:?} is not a MAC address"));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(g) = r.gateway
                && g.is_ipv4() != r.destination.addr().is_ipv4()
            {
                return Err(format!(
                    "routes[{i}].gateway: {g} is not of the destination's family"
                ));
            }
        }
        Ok(())
    }

    /// What the attachment asks for over this configuration: its addresses, MAC, MTU and
    /// routes replace the configuration's when given. Errors name the selection's field.
    pub fn under(mut self, sel: &NetworkSelection, field: &str) -> Result<Self, (String, String)> {
        if !sel.ips.is_empty() {
            self.addresses = sel
                .ips
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.parse::<IpNet>().map_err(|_| {
                        (
                            format!("{field}.ips[{i}]"),
                            format!("{s:?}: a device needs its prefix length (10.1.0.5/24)"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if !sel.mac.is_empty() {
            self.mac = Some(sel.mac.clone());
        }
        if sel.mtu != 0 {
            self.mtu = Some(sel.mtu);
        }
        if !sel.routes.is_empty() {
            self.routes = sel
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| route(r).map_err(|m| (format!("{field}.routes[{i}]"), m)))
                .collect::<Result<_, _>>()?;
        }
        self.check().map_err(|m| (field.to_string(), m))?;
        Ok(self)
    }
}

fn route(r: &Route) -> Result<RouteConf, String> {
    let destination = r
        .destination
        .parse::<IpNet>()
        .map_err(|_| format!("destination {:?} is not a CIDR", r.destination))?;
    let gateway = if r.gateway.is_empty() {
        None
    } else {
        Some(
            r.gateway
                .parse::<IpAddr>()
                .map_err(|_| format!("gateway {:?} is not an address", r.gateway))?,
        )
    };
    Ok(RouteConf {
        destination,
        gateway,
        metric: r.metric,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_and_the_attachment_over_it() {
        let c = NetConf::parse(
            br#"{"mtu": 9000, "addresses": ["10.1.0.5/24"],
                 "routes": [{"destination": "10.2.0.0/16", "gateway": "10.1.0.1"}]}"#,
        )
        .unwrap();
        assert_eq!(c.mtu, Some(9000));
        assert_eq!(c.routes[0].gateway, Some("10.1.0.1".parse().unwrap()));
        for (bad, says) in [
            (&br#"{"mtu": 20}"#[..], "mtu: 20"),
            (br#"{"mac": "zz"}"#, "mac:"),
            (br#"{"addresses": ["10.1.0.5"]}"#, "invalid IP address"),
            (
                br#"{"routes": [{"destination": "10.2.0.0/16", "gateway": "fd00::1"}]}"#,
                "routes[0].gateway",
            ),
            (br#"{"mtus": 1}"#, "unknown field"),
            (b"not json", "expected"),
        ] {
            let e = NetConf::parse(bad).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        let sel = NetworkSelection {
            ips: vec!["192.168.7.2/24".into()],
            mtu: 1400,
            ..Default::default()
        };
        let u = c.clone().under(&sel, "networks[0]").unwrap();
        assert_eq!(u.addresses, ["192.168.7.2/24".parse::<IpNet>().unwrap()]);
        assert_eq!(u.mtu, Some(1400));
        assert_eq!(
            u.routes, c.routes,
            "routes not given stay the configuration's"
        );
        let bad = NetworkSelection {
            ips: vec!["192.168.7.2".into()],
            ..Default::default()
        };
        assert_eq!(
            c.under(&bad, "networks[1]").unwrap_err().0,
            "networks[1].ips[0]"
        );
    }
}
