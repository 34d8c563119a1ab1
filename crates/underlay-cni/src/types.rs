//! CNI result documents: the version-independent model, parsing a
//! `prevResult` of any supported version, and printing a result shaped for
//! the requested `cniVersion` (0.4.0 carries `"version"` on each IP; 1.1.0
//! adds interface `mtu` and route attributes).

use crate::error::{CniError, Result, code};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The `cniVersion`s this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];
/// The newest supported version.
pub const LATEST: &str = "1.1.0";

/// A supported CNI version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "0.4.0" => Ok(Self::V0_4_0),
            "1.0.0" => Ok(Self::V1_0_0),
            "1.1.0" => Ok(Self::V1_1_0),
            other => Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {other:?} is not supported; use one of {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }
}

/// An address with its prefix length, e.g. `10.244.1.5/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl IpPrefix {
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(Self { addr, len })
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl FromStr for IpPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an address with a prefix length (a.b.c.d/n)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address"))?;
        let len: u8 = l
            .parse()
            .map_err(|_| format!("{l:?} is not a prefix length"))?;
        Self::new(addr, len).ok_or_else(|| format!("prefix length {len} is too long for {addr}"))
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for IpPrefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub sandbox: Option<String>,
    #[serde(default)]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpEntry {
    pub address: IpPrefix,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RouteEntry {
    pub dst: IpPrefix,
    #[serde(default)]
    pub gw: Option<IpAddr>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub advmss: Option<u32>,
    #[serde(default)]
    pub priority: Option<u32>,
    #[serde(default)]
    pub table: Option<u32>,
    #[serde(default)]
    pub scope: Option<u32>,
}

/// A CNI result, independent of version.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpEntry>,
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    #[serde(default)]
    pub dns: Option<Value>,
}

impl CniResult {
    /// Parses a `prevResult` (any supported version; the 0.4.0 per-IP
    /// `version` field is accepted and ignored).
    pub fn from_value(v: &Value) -> Result<Self> {
        Self::deserialize(v).map_err(|e| {
            CniError::new(
                code::DECODE,
                "prevResult is not a valid CNI result; pass the previous plugin's output unchanged",
            )
            .with_details(e)
        })
    }

    /// Appends `other` after `self`, shifting `other`'s interface indices.
    pub fn chain(mut self, other: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_none() {
            self.dns = other.dns;
        }
        self
    }

    /// The result document for `version`.
    pub fn to_value(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| i.to_value(version))
            .collect();
        let ips: Vec<Value> = self.ips.iter().map(|ip| ip.to_value(version)).collect();
        let routes: Vec<Value> = self.routes.iter().map(|r| r.to_value(version)).collect();
        let mut doc = Map::new();
        doc.insert("cniVersion".into(), json!(version.as_str()));
        if !interfaces.is_empty() {
            doc.insert("interfaces".into(), Value::Array(interfaces));
        }
        if !ips.is_empty() {
            doc.insert("ips".into(), Value::Array(ips));
        }
        if !routes.is_empty() {
            doc.insert("routes".into(), Value::Array(routes));
        }
        doc.insert(
            "dns".into(),
            self.dns
                .clone()
                .unwrap_or_else(|| Value::Object(Map::new())),
        );
        Value::Object(doc)
    }
}

impl Interface {
    /// The interface as `version` prints it (1.1.0 adds `mtu`, `socketPath`
    /// and `pciID`).
    fn to_value(&self, version: Version) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        if !self.mac.is_empty() {
            m.insert("mac".into(), json!(self.mac));
        }
        if version >= Version::V1_1_0 {
            if let Some(mtu) = self.mtu {
                m.insert("mtu".into(), json!(mtu));
            }
            if let Some(p) = &self.socket_path {
                m.insert("socketPath".into(), json!(p));
            }
            if let Some(p) = &self.pci_id {
                m.insert("pciID".into(), json!(p));
            }
        }
        if let Some(s) = &self.sandbox {
            m.insert("sandbox".into(), json!(s));
        }
        Value::Object(m)
    }
}

impl IpEntry {
    /// The address as `version` prints it (0.4.0 adds `"version"`).
    fn to_value(&self, version: Version) -> Value {
        let mut m = Map::new();
        if version == Version::V0_4_0 {
            m.insert(
                "version".into(),
                json!(if self.address.is_ipv4() { "4" } else { "6" }),
            );
        }
        m.insert("address".into(), json!(self.address.to_string()));
        if let Some(gw) = self.gateway {
            m.insert("gateway".into(), json!(gw.to_string()));
        }
        if let Some(i) = self.interface {
            m.insert("interface".into(), json!(i));
        }
        Value::Object(m)
    }
}

impl RouteEntry {
    /// The route as `version` prints it (1.1.0 adds the route attributes).
    fn to_value(&self, version: Version) -> Value {
        let mut m = Map::new();
        m.insert("dst".into(), json!(self.dst.to_string()));
        if let Some(gw) = self.gw {
            m.insert("gw".into(), json!(gw.to_string()));
        }
        if version >= Version::V1_1_0 {
            for (k, v) in [
                ("mtu", self.mtu),
                ("advmss", self.advmss),
                ("priority", self.priority),
                ("table", self.table),
                ("scope", self.scope),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), json!(v));
                }
            }
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "udl0123456789a".into(),
                    mac: "aa:bb:cc:dd:ee:ff".into(),
                    mtu: Some(1500),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:00".into(),
                    mtu: Some(1500),
                    sandbox: Some("/run/netns/p".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpEntry {
                    address: "10.244.1.5/32".parse().unwrap(),
                    gateway: Some("169.254.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpEntry {
                    address: "fd00::5/128".parse().unwrap(),
                    gateway: Some("fe80::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![RouteEntry {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
                mtu: None,
                advmss: None,
                priority: Some(10),
                table: None,
                scope: None,
            }],
            dns: None,
        }
    }

    #[test]
    fn results_are_shaped_per_version() {
        let r = sample();
        let v04 = r.to_value(Version::V0_4_0);
        assert_eq!(v04["cniVersion"], "0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["ips"][1]["version"], "6");
        assert!(v04["interfaces"][0].get("mtu").is_none());
        assert!(v04["routes"][0].get("priority").is_none());

        let v10 = r.to_value(Version::V1_0_0);
        assert!(v10["ips"][0].get("version").is_none());
        assert!(v10["interfaces"][1].get("mtu").is_none());
        assert_eq!(v10["interfaces"][1]["sandbox"], "/run/netns/p");

        let v11 = r.to_value(Version::V1_1_0);
        assert_eq!(v11["interfaces"][1]["mtu"], 1500);
        assert_eq!(v11["routes"][0]["priority"], 10);
        assert_eq!(v11["dns"], json!({}));
    }

    #[test]
    fn a_result_round_trips_through_every_version() {
        let r = sample();
        for v in [Version::V0_4_0, Version::V1_0_0, Version::V1_1_0] {
            let back = CniResult::from_value(&r.to_value(v)).unwrap();
            assert_eq!(back.ips, r.ips, "{v:?}");
            assert_eq!(back.interfaces.len(), 2);
        }
    }

    #[test]
    fn chaining_appends_and_shifts_interface_indices() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "other".into(),
                ..Default::default()
            }],
            ips: vec![IpEntry {
                address: "192.0.2.1/24".parse().unwrap(),
                gateway: None,
                interface: Some(0),
            }],
            dns: Some(json!({"nameservers": ["192.0.2.53"]})),
            ..Default::default()
        };
        let merged = prev.chain(sample());
        assert_eq!(merged.interfaces.len(), 3);
        assert_eq!(merged.ips[0].interface, Some(0));
        assert_eq!(merged.ips[1].interface, Some(2));
        assert_eq!(merged.dns.unwrap()["nameservers"][0], "192.0.2.53");
    }

    #[test]
    fn prefixes_parse_and_reject_garbage() {
        assert_eq!(
            "10.0.0.1/32".parse::<IpPrefix>().unwrap().to_string(),
            "10.0.0.1/32"
        );
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "fd00::/129",
            "x/1",
            "10.0.0.1/-1",
            "",
        ] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_outside_the_supported_set_are_incompatible() {
        for bad in ["0.3.1", "0.1.0", "2.0.0", "", "latest"] {
            assert_eq!(
                Version::parse(bad).unwrap_err().code,
                code::INCOMPATIBLE_VERSION
            );
        }
    }
}
