//! The lab's Azure side: the ARM route-table service holding the lab's
//! route table, and the tasks that have the VNet's fabric apply the routes
//! ARM publishes for it.

use super::{Error, LabConfig, RESOURCE_GROUP, ROUTE_TABLE, Result, SUBSCRIPTION};
use crate::arm::{AppliedRoute, ArmConfig, ArmHandle, ArmServer, TableId};
use crate::vnet::{FabricRoute, Vnet};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The applied routes per table, as the ARM service publishes them.
pub type AppliedTables = Arc<BTreeMap<TableId, Vec<AppliedRoute>>>;

/// The lab's route table.
fn route_table() -> TableId {
    TableId::new(SUBSCRIPTION, RESOURCE_GROUP, ROUTE_TABLE)
}

/// Starts the ARM route-table service with the lab's (empty) route table.
pub(super) async fn start_arm(config: &LabConfig) -> Result<ArmHandle> {
    let arm = ArmServer::start(ArmConfig {
        propagation_delay: config.propagation_delay,
        operation_delay: config.arm_operation_delay,
        ..Default::default()
    })
    .await
    .map_err(|e| Error::Arm(e.to_string()))?;
    arm.seed_table(&route_table(), "westeurope", &[]);
    Ok(arm)
}

/// Has the VNet apply the lab's route table whenever ARM publishes it: one
/// task converts the published tables into fabric routes, the other has the
/// VNet follow them.
pub(super) fn follow_route_table(
    arm: &ArmHandle,
    vnet: &Arc<Vnet>,
) -> [tokio::task::JoinHandle<()>; 2] {
    let vnet = vnet.clone();
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    let mut tables = arm.routes_watch();
    let table = route_table();
    let convert = tokio::spawn(async move {
        loop {
            let routes = fabric_routes(&tables.borrow_and_update(), &table);
            if tx.send(routes).is_err() || tables.changed().await.is_err() {
                return;
            }
        }
    });
    let apply = tokio::spawn(async move { vnet.follow(rx).await });
    [convert, apply]
}

/// The routes of `table` as the fabric applies them.
pub fn fabric_routes(tables: &AppliedTables, table: &TableId) -> Vec<FabricRoute> {
    let unspecified = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    tables
        .iter()
        .filter(|(id, _)| id.resource_id().eq_ignore_ascii_case(&table.resource_id()))
        .flat_map(|(_, routes)| routes.iter())
        .map(|r| FabricRoute {
            name: r.name.clone(),
            prefix: r.address_prefix.clone(),
            // Only VirtualAppliance routes carry a next hop; anything else
            // (None, Internet...) has no node to go to: a blackhole.
            next_hop: if r.next_hop_type.eq_ignore_ascii_case("VirtualAppliance") {
                r.next_hop_ip
                    .as_deref()
                    .and_then(|ip| ip.parse().ok())
                    .unwrap_or(unspecified)
            } else {
                unspecified
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_virtual_appliance_routes_of_our_table_get_a_next_hop() {
        let ours = TableId::new(SUBSCRIPTION, RESOURCE_GROUP, ROUTE_TABLE);
        let other = TableId::new(SUBSCRIPTION, RESOURCE_GROUP, "other");
        let route = |name: &str, prefix: &str, ty: &str, hop: Option<&str>| AppliedRoute {
            name: name.into(),
            address_prefix: prefix.into(),
            next_hop_type: ty.into(),
            next_hop_ip: hop.map(Into::into),
        };
        let tables: AppliedTables = Arc::new(BTreeMap::from([
            (
                TableId::new(SUBSCRIPTION, RESOURCE_GROUP, ROUTE_TABLE.to_uppercase()),
                vec![
                    route("a", "10.244.1.0/24", "VirtualAppliance", Some("10.0.0.4")),
                    route("b", "10.244.2.0/24", "None", None),
                ],
            ),
            (
                other,
                vec![route(
                    "c",
                    "10.9.0.0/16",
                    "VirtualAppliance",
                    Some("10.0.0.5"),
                )],
            ),
        ]));
        let got = fabric_routes(&tables, &ours);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].next_hop, "10.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(got[1].next_hop, "0.0.0.0".parse::<IpAddr>().unwrap());
    }
}
