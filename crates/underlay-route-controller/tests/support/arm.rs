//! The lab's ARM route-table service with the controller's real Azure
//! adapter pointed at it, authenticating with the service's token through a
//! token file: the fixture shared by the integration tests and the routes
//! benchmark (which includes this file by path).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use underlay_lab::arm::{AppliedRoute, ArmConfig, ArmHandle, ArmServer, TableId};
use underlay_route_controller::azure::arm::{ArmRouteTable, ArmTableConfig};
use underlay_route_controller::azure::credential::TokenFileCredential;

pub const SUBSCRIPTION: &str = "sub-1";
pub const RESOURCE_GROUP: &str = "rg-net";
pub const TABLE: &str = "underlay-routes";
pub const LOCATION: &str = "westeurope";

/// The one route table every fixture uses.
pub fn table_id() -> TableId {
    TableId::new(SUBSCRIPTION, RESOURCE_GROUP, TABLE)
}

/// A running ARM service and an adapter for its table.
pub struct ArmFixture {
    pub arm: ArmHandle,
    pub table: Arc<ArmRouteTable>,
    /// The file the adapter reads its bearer token from.
    pub token_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ArmFixture {
    /// Starts the service; `seed` creates the table with these routes
    /// first (`None`: the table does not exist).
    pub async fn start(
        config: ArmConfig,
        seed: Option<&[AppliedRoute]>,
        request_timeout: Duration,
    ) -> ArmFixture {
        let arm = ArmServer::start(config).await.expect("arm service starts");
        if let Some(routes) = seed {
            arm.seed_table(&table_id(), LOCATION, routes);
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let token_path = dir.path().join("token");
        std::fs::write(&token_path, arm.token()).expect("token file written");
        let table = Arc::new(adapter(arm.endpoint(), &token_path, request_timeout));
        ArmFixture {
            arm,
            table,
            token_path,
            _dir: dir,
        }
    }

    /// The routes the table has applied.
    pub fn applied(&self) -> Vec<AppliedRoute> {
        self.arm
            .routes_watch()
            .borrow()
            .get(&table_id())
            .cloned()
            .unwrap_or_default()
    }
}

/// The controller's ARM adapter for the fixture's table at `endpoint`.
pub fn adapter(
    endpoint: &str,
    token_path: &std::path::Path,
    request_timeout: Duration,
) -> ArmRouteTable {
    ArmRouteTable::new(
        ArmTableConfig {
            endpoint: endpoint.to_string(),
            subscription_id: SUBSCRIPTION.into(),
            resource_group: RESOURCE_GROUP.into(),
            table_name: TABLE.into(),
            request_timeout,
        },
        Arc::new(TokenFileCredential::new(token_path)),
        None,
    )
    .expect("adapter for the lab endpoint")
}
