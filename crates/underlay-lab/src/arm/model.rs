//! Wire shapes of the routeTables API and the records the service keeps about
//! requests.

use serde::Deserialize;
use std::fmt;

/// A route table's identity. Azure compares names case-insensitively; the
/// service keys tables by [`TableId::key`] and keeps the spelling of the
/// first write for display.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    pub subscription: String,
    pub resource_group: String,
    pub name: String,
}

impl TableId {
    pub fn new(
        subscription: impl Into<String>,
        resource_group: impl Into<String>,
        name: impl Into<String>,
    ) -> TableId {
        TableId {
            subscription: subscription.into(),
            resource_group: resource_group.into(),
            name: name.into(),
        }
    }

    /// The ARM resource id, e.g.
    /// `/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/routeTables/rt`.
    pub fn resource_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/routeTables/{}",
            self.subscription, self.resource_group, self.name
        )
    }

    pub(crate) fn key(&self) -> String {
        self.resource_id().to_ascii_lowercase()
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.resource_id())
    }
}

/// A route as the VNet router programs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AppliedRoute {
    pub name: String,
    pub address_prefix: String,
    pub next_hop_type: String,
    pub next_hop_ip: Option<String>,
}

impl AppliedRoute {
    pub fn new(
        name: &str,
        address_prefix: &str,
        next_hop_type: &str,
        next_hop_ip: Option<&str>,
    ) -> AppliedRoute {
        AppliedRoute {
            name: name.to_owned(),
            address_prefix: address_prefix.to_owned(),
            next_hop_type: next_hop_type.to_owned(),
            next_hop_ip: next_hop_ip.map(str::to_owned),
        }
    }
}

/// What a request asked for, as classified by the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    GetTable,
    PutTable,
    DeleteTable,
    ListRoutes,
    GetRoute,
    PutRoute,
    DeleteRoute,
    PollOperation,
    PollResult,
    Unknown,
}

impl RequestKind {
    /// Whether the request changes a route table (what Azure meters as a write).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            RequestKind::PutTable
                | RequestKind::DeleteTable
                | RequestKind::PutRoute
                | RequestKind::DeleteRoute
        )
    }
}

/// One request as the service saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub kind: RequestKind,
    pub method: String,
    pub path: String,
    pub api_version: Option<String>,
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
    /// The status sent, or `None` when the connection was dropped.
    pub status: Option<u16>,
    /// The error code of a CloudError answer.
    pub error_code: Option<String>,
    /// When the request arrived.
    pub at: std::time::Instant,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RouteTableIn {
    pub location: Option<String>,
    pub tags: Option<serde_json::Value>,
    pub properties: Option<RouteTablePropsIn>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RouteTablePropsIn {
    pub routes: Option<Vec<RouteIn>>,
    pub disable_bgp_route_propagation: Option<bool>,
    /// Every other property sent. Azure replaces the resource with the PUT
    /// body, so a property the service does not model is kept as sent, and
    /// a client that leaves one out drops it.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RouteIn {
    pub name: Option<String>,
    pub properties: Option<RoutePropsIn>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RoutePropsIn {
    pub address_prefix: Option<String>,
    pub next_hop_type: Option<String>,
    pub next_hop_ip_address: Option<String>,
}
