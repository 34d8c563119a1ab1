//! The service's resources: route tables, their routes and the asynchronous
//! operations writing them. Pure state transitions; the server owns the
//! clock, the HTTP and the timers that finish operations.

use super::model::{AppliedRoute, RouteIn, RouteTableIn, TableId};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::net::IpAddr;

/// A CloudError answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloudError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub details: Vec<(String, String)>,
    pub retry_after_secs: Option<u64>,
}

impl CloudError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> CloudError {
        CloudError {
            status,
            code: code.to_string(),
            message: message.into(),
            details: Vec::new(),
            retry_after_secs: None,
        }
    }

    pub fn body(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if !self.details.is_empty() {
            error["details"] = Value::Array(
                self.details
                    .iter()
                    .map(|(c, m)| json!({"code": c, "message": m}))
                    .collect(),
            );
        }
        json!({ "error": error })
    }

    fn not_found(id: &TableId) -> CloudError {
        CloudError::new(
            404,
            "ResourceNotFound",
            format!(
                "The Resource 'Microsoft.Network/routeTables/{}' under resource group '{}' was not found.",
                id.name, id.resource_group
            ),
        )
    }

    fn precondition() -> CloudError {
        CloudError::new(
            412,
            "PreconditionFailed",
            "The condition specified using HTTP conditional header(s) is not met.",
        )
    }

    fn bad_request(code: &str, message: impl Into<String>) -> CloudError {
        CloudError::new(400, code, message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredRoute {
    name: String,
    address_prefix: String,
    next_hop_type: String,
    next_hop_ip: Option<String>,
    etag: String,
}

#[derive(Debug, Clone)]
struct Table {
    id: TableId,
    location: String,
    tags: Value,
    disable_bgp: bool,
    /// Properties the service does not model, kept as last written.
    other_properties: Map<String, Value>,
    routes: Vec<StoredRoute>,
    etag: String,
    provisioning: &'static str,
    resource_guid: String,
    /// The operation writing this table, if one is in flight.
    busy: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpStatus {
    InProgress,
    Succeeded,
    Failed,
    Canceled,
}

impl OpStatus {
    fn as_str(self) -> &'static str {
        match self {
            OpStatus::InProgress => "InProgress",
            OpStatus::Succeeded => "Succeeded",
            OpStatus::Failed => "Failed",
            OpStatus::Canceled => "Canceled",
        }
    }
}

#[derive(Debug, Clone)]
struct Operation {
    table_key: String,
    status: OpStatus,
    /// The table before the write, restored if the operation fails; `None`
    /// when the write created the table.
    previous: Option<Table>,
    /// The write deletes the table.
    deletes_table: bool,
}

/// How an operation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Succeeded,
    Failed,
    Canceled,
}

/// A write accepted by the state: its answer and the operation to finish.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub status: u16,
    pub body: Option<Value>,
    pub op_id: String,
    pub location: String,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    tables: HashMap<String, Table>,
    ops: HashMap<String, Operation>,
    pub route_limit: usize,
}

pub(crate) fn new_etag() -> String {
    format!("W/\"{}\"", new_guid())
}

fn new_guid() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0x1000),
        fastrand::u16(0x8000..0xc000),
        fastrand::u64(..1 << 48)
    )
}

/// Azure resource names for routes: 1 to 80 characters, letters, digits,
/// underscores, periods and hyphens; start with a letter or digit; end with a
/// letter, digit or underscore.
fn valid_route_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 80
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        && (b[b.len() - 1].is_ascii_alphanumeric() || b[b.len() - 1] == b'_')
}

fn parse_prefix(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

const NEXT_HOP_TYPES: [&str; 5] = [
    "VirtualNetworkGateway",
    "VnetLocal",
    "Internet",
    "VirtualAppliance",
    "None",
];

fn validate_route(route: &RouteIn, name: &str) -> Result<StoredRoute, CloudError> {
    if !valid_route_name(name) {
        return Err(CloudError::bad_request(
            "InvalidResourceName",
            format!(
                "Resource name {name} is invalid. The name can be up to 80 characters long. It must begin with a word character, and it must end with a word character or with '_'. The name may contain word characters or '.', '-', '_'."
            ),
        ));
    }
    let props = route.properties.as_ref().ok_or_else(|| {
        CloudError::bad_request(
            "InvalidRequestFormat",
            format!("route {name} has no properties"),
        )
    })?;
    let prefix = props.address_prefix.as_deref().unwrap_or("");
    let Some((addr, _)) = parse_prefix(prefix) else {
        return Err(CloudError::bad_request(
            "InvalidRequestFormat",
            format!("Route {name} has an invalid AddressPrefix '{prefix}'."),
        ));
    };
    let hop_type = props.next_hop_type.as_deref().unwrap_or("");
    let Some(hop_type) = NEXT_HOP_TYPES
        .iter()
        .find(|t| t.eq_ignore_ascii_case(hop_type))
    else {
        return Err(CloudError::bad_request(
            "InvalidRequestFormat",
            format!("Route {name} has an invalid NextHopType '{hop_type}'."),
        ));
    };
    let hop_ip = props.next_hop_ip_address.clone().filter(|s| !s.is_empty());
    match (*hop_type, &hop_ip) {
        ("VirtualAppliance", None) => {
            return Err(CloudError::bad_request(
                "NextHopIpAddressRequired",
                format!(
                    "Route {name} has NextHopType VirtualAppliance and requires a NextHopIpAddress."
                ),
            ));
        }
        ("VirtualAppliance", Some(ip)) => match ip.parse::<IpAddr>() {
            Ok(ip) if ip.is_ipv4() == addr.is_ipv4() => {}
            _ => {
                return Err(CloudError::bad_request(
                    "InvalidNextHopIpAddress",
                    format!(
                        "Route {name} has an invalid NextHopIpAddress '{ip}' for AddressPrefix '{prefix}'."
                    ),
                ));
            }
        },
        (_, Some(_)) => {
            return Err(CloudError::bad_request(
                "NextHopIpAddressNotAllowed",
                format!(
                    "Route {name} has NextHopType {hop_type}, which does not take a NextHopIpAddress."
                ),
            ));
        }
        (_, None) => {}
    }
    Ok(StoredRoute {
        name: name.to_string(),
        address_prefix: prefix.to_string(),
        next_hop_type: hop_type.to_string(),
        next_hop_ip: hop_ip,
        etag: String::new(),
    })
}

/// A write's `If-Match` and `If-None-Match` headers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Conditions<'a> {
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
}

impl Conditions<'_> {
    /// Whether the write may go to a resource whose ETag is `current`
    /// (`None`: it does not exist yet); 412 when it may not.
    fn check(&self, current: Option<&str>) -> Result<(), CloudError> {
        if let Some(want) = self.if_match {
            match current {
                Some(etag) if want == "*" || want == etag => {}
                _ => return Err(CloudError::precondition()),
            }
        }
        if let (Some(want), Some(etag)) = (self.if_none_match, current)
            && (want == "*" || want == etag)
        {
            return Err(CloudError::precondition());
        }
        Ok(())
    }
}

impl Table {
    fn render(&self) -> Value {
        let mut properties = self.other_properties.clone();
        properties.extend([
            ("provisioningState".to_string(), json!(self.provisioning)),
            ("resourceGuid".to_string(), json!(self.resource_guid)),
            (
                "disableBgpRoutePropagation".to_string(),
                json!(self.disable_bgp),
            ),
            (
                "routes".to_string(),
                Value::Array(self.routes.iter().map(|r| self.render_route(r)).collect()),
            ),
        ]);
        json!({
            "name": self.id.name,
            "id": self.id.resource_id(),
            "etag": self.etag,
            "type": "Microsoft.Network/routeTables",
            "location": self.location,
            "tags": self.tags,
            "properties": properties,
        })
    }

    fn render_route(&self, r: &StoredRoute) -> Value {
        let mut props = json!({
            "provisioningState": self.provisioning,
            "addressPrefix": r.address_prefix,
            "nextHopType": r.next_hop_type,
            "hasBgpOverride": false,
        });
        if let Some(ip) = &r.next_hop_ip {
            props["nextHopIpAddress"] = json!(ip);
        }
        json!({
            "name": r.name,
            "id": format!("{}/routes/{}", self.id.resource_id(), r.name),
            "etag": r.etag,
            "type": "Microsoft.Network/routeTables/routes",
            "properties": props,
        })
    }

    fn applied(&self) -> Vec<AppliedRoute> {
        let mut routes: Vec<AppliedRoute> = self
            .routes
            .iter()
            .map(|r| {
                let hop = r.next_hop_ip.as_deref();
                AppliedRoute::new(&r.name, &r.address_prefix, &r.next_hop_type, hop)
            })
            .collect();
        routes.sort();
        routes
    }

    fn find_route(&self, name: &str) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.name.eq_ignore_ascii_case(name))
    }
}

impl State {
    pub fn new(route_limit: usize) -> State {
        State {
            route_limit,
            ..State::default()
        }
    }

    fn busy_error(&self, table: &Table) -> Option<CloudError> {
        let op = table.busy.as_ref()?;
        let mut err = CloudError::new(429, "RetryableError", "A retryable error occurred.");
        err.details.push((
            "RetryableErrorDueToAnotherOperation".to_string(),
            format!(
                "Operation {op} is updating resource {}. The call can be retried in 1 seconds.",
                table.id.resource_id()
            ),
        ));
        err.retry_after_secs = Some(1);
        Some(err)
    }

    fn start_op(&mut self, table_key: &str, previous: Option<Table>, deletes: bool) -> String {
        let op_id = new_guid();
        self.ops.insert(
            op_id.clone(),
            Operation {
                table_key: table_key.to_string(),
                status: OpStatus::InProgress,
                previous,
                deletes_table: deletes,
            },
        );
        op_id
    }

    pub fn get_table(&self, id: &TableId) -> Result<Value, CloudError> {
        self.tables
            .get(&id.key())
            .map(Table::render)
            .ok_or_else(|| CloudError::not_found(id))
    }

    pub fn put_table(
        &mut self,
        id: &TableId,
        body: RouteTableIn,
        conditions: Conditions<'_>,
    ) -> Result<Accepted, CloudError> {
        let key = id.key();
        let existing = self.tables.get(&key);
        conditions.check(existing.map(|t| t.etag.as_str()))?;
        if let Some(err) = existing.and_then(|t| self.busy_error(t)) {
            return Err(err);
        }
        let mut table = self.build_table(id, body, existing)?;
        let previous = existing.cloned();
        let created = previous.is_none();
        let op_id = self.start_op(&key, previous, false);
        table.provisioning = "Updating";
        table.busy = Some(op_id.clone());
        let body = table.render();
        let location = table.location.clone();
        self.tables.insert(key, table);
        Ok(Accepted {
            status: if created { 201 } else { 200 },
            body: Some(body),
            op_id,
            location,
        })
    }

    /// The table a PUT body describes: Azure replaces the resource with the
    /// body, so whatever the body leaves out (tags, settings) is gone; only
    /// the identity, the resource GUID, and unchanged routes' ETags survive.
    fn build_table(
        &self,
        id: &TableId,
        body: RouteTableIn,
        existing: Option<&Table>,
    ) -> Result<Table, CloudError> {
        let location = match (&body.location, existing) {
            (Some(l), _) => l.clone(),
            (None, Some(t)) => t.location.clone(),
            (None, None) => {
                return Err(CloudError::bad_request(
                    "LocationRequired",
                    "The location property is required for this definition.",
                ));
            }
        };
        let mut props = body.properties.unwrap_or_default();
        let routes = self.build_routes(id, props.routes.take().unwrap_or_default(), existing)?;
        // Read-only properties a client echoes back are not the client's to set.
        for read_only in ["provisioningState", "resourceGuid", "subnets"] {
            props.other.remove(read_only);
        }
        Ok(Table {
            id: existing.map_or_else(|| id.clone(), |t| t.id.clone()),
            location,
            tags: body.tags.unwrap_or_else(|| json!({})),
            disable_bgp: props.disable_bgp_route_propagation.unwrap_or(false),
            other_properties: props.other,
            routes,
            etag: new_etag(),
            provisioning: "Succeeded",
            resource_guid: existing.map_or_else(new_guid, |t| t.resource_guid.clone()),
            busy: None,
        })
    }

    fn build_routes(
        &self,
        id: &TableId,
        body: Vec<RouteIn>,
        existing: Option<&Table>,
    ) -> Result<Vec<StoredRoute>, CloudError> {
        let mut routes = Vec::new();
        for route in body {
            let name = route.name.clone().unwrap_or_default();
            let mut stored = validate_route(&route, &name)?;
            if routes
                .iter()
                .any(|r: &StoredRoute| r.name.eq_ignore_ascii_case(&name))
            {
                return Err(CloudError::bad_request(
                    "InvalidRequestFormat",
                    format!("Route name {name} appears more than once in the route table."),
                ));
            }
            // Unchanged routes keep their ETag, as in Azure.
            stored.etag = existing
                .and_then(|t| t.find_route(&name).map(|i| &t.routes[i]))
                .filter(|old| {
                    old.address_prefix == stored.address_prefix
                        && old.next_hop_type == stored.next_hop_type
                        && old.next_hop_ip == stored.next_hop_ip
                })
                .map_or_else(new_etag, |old| old.etag.clone());
            routes.push(stored);
        }
        if routes.len() > self.route_limit {
            return Err(CloudError::bad_request(
                "RouteTableRoutesLimitExceeded",
                format!(
                    "Route table {} has {} routes, more than the limit of {}.",
                    id.name,
                    routes.len(),
                    self.route_limit
                ),
            ));
        }
        Ok(routes)
    }

    pub fn delete_table(&mut self, id: &TableId) -> Result<Option<Accepted>, CloudError> {
        let key = id.key();
        let Some(table) = self.tables.get(&key) else {
            return Ok(None);
        };
        if let Some(err) = self.busy_error(table) {
            return Err(err);
        }
        let location = table.location.clone();
        let previous = table.clone();
        let op_id = self.start_op(&key, Some(previous), true);
        if let Some(t) = self.tables.get_mut(&key) {
            t.provisioning = "Deleting";
            t.busy = Some(op_id.clone());
        }
        Ok(Some(Accepted {
            status: 202,
            body: None,
            op_id,
            location,
        }))
    }

    pub fn list_routes(&self, id: &TableId) -> Result<Value, CloudError> {
        let table = self
            .tables
            .get(&id.key())
            .ok_or_else(|| CloudError::not_found(id))?;
        Ok(json!({
            "value": table.routes.iter().map(|r| table.render_route(r)).collect::<Vec<_>>()
        }))
    }

    pub fn get_route(&self, id: &TableId, name: &str) -> Result<Value, CloudError> {
        let table = self
            .tables
            .get(&id.key())
            .ok_or_else(|| CloudError::not_found(id))?;
        let idx = table.find_route(name).ok_or_else(|| {
            CloudError::new(
                404,
                "NotFound",
                format!("Resource {}/routes/{name} not found.", id.resource_id()),
            )
        })?;
        Ok(table.render_route(&table.routes[idx]))
    }

    pub fn put_route(
        &mut self,
        id: &TableId,
        name: &str,
        body: RouteIn,
        conditions: Conditions<'_>,
    ) -> Result<Accepted, CloudError> {
        let key = id.key();
        let limit = self.route_limit;
        let table = self
            .tables
            .get(&key)
            .ok_or_else(|| CloudError::not_found(id))?;
        let idx = table.find_route(name);
        conditions.check(idx.map(|i| table.routes[i].etag.as_str()))?;
        if let Some(err) = self.busy_error(table) {
            return Err(err);
        }
        let mut stored = validate_route(&body, name)?;
        stored.etag = new_etag();
        if idx.is_none() && table.routes.len() >= limit {
            return Err(CloudError::bad_request(
                "RouteTableRoutesLimitExceeded",
                format!(
                    "Route table {} already has {} routes, the limit.",
                    id.name, limit
                ),
            ));
        }
        let previous = table.clone();
        let location = table.location.clone();
        let op_id = self.start_op(&key, Some(previous), false);
        let table = self
            .tables
            .get_mut(&key)
            .ok_or_else(|| CloudError::not_found(id))?;
        let status = match idx {
            Some(i) => {
                table.routes[i] = stored;
                200
            }
            None => {
                table.routes.push(stored);
                201
            }
        };
        table.etag = new_etag();
        table.provisioning = "Updating";
        table.busy = Some(op_id.clone());
        let i = table.find_route(name).unwrap_or(0);
        let body = table.render_route(&table.routes[i]);
        Ok(Accepted {
            status,
            body: Some(body),
            op_id,
            location,
        })
    }

    pub fn delete_route(
        &mut self,
        id: &TableId,
        name: &str,
    ) -> Result<Option<Accepted>, CloudError> {
        let key = id.key();
        let Some(table) = self.tables.get(&key) else {
            return Err(CloudError::not_found(id));
        };
        let Some(idx) = table.find_route(name) else {
            return Ok(None);
        };
        if let Some(err) = self.busy_error(table) {
            return Err(err);
        }
        let previous = table.clone();
        let location = table.location.clone();
        let op_id = self.start_op(&key, Some(previous), false);
        if let Some(table) = self.tables.get_mut(&key) {
            table.routes.remove(idx);
            table.etag = new_etag();
            table.provisioning = "Updating";
            table.busy = Some(op_id.clone());
        }
        Ok(Some(Accepted {
            status: 202,
            body: None,
            op_id,
            location,
        }))
    }

    /// Ends an operation. Returns the table whose applied routes changed and
    /// its routes (empty when the table was deleted).
    pub fn finish(
        &mut self,
        op_id: &str,
        outcome: Outcome,
    ) -> Option<(TableId, Vec<AppliedRoute>)> {
        let op = self.ops.get_mut(op_id)?;
        if op.status != OpStatus::InProgress {
            return None;
        }
        op.status = match outcome {
            Outcome::Succeeded => OpStatus::Succeeded,
            Outcome::Failed => OpStatus::Failed,
            Outcome::Canceled => OpStatus::Canceled,
        };
        let key = op.table_key.clone();
        let previous = op.previous.take();
        let deletes = op.deletes_table;
        match outcome {
            Outcome::Succeeded if deletes => {
                let table = self.tables.remove(&key)?;
                Some((table.id, Vec::new()))
            }
            Outcome::Succeeded => {
                let table = self.tables.get_mut(&key)?;
                table.provisioning = "Succeeded";
                table.busy = None;
                Some((table.id.clone(), table.applied()))
            }
            Outcome::Failed | Outcome::Canceled => {
                match previous {
                    Some(mut old) => {
                        old.busy = None;
                        old.provisioning = if outcome == Outcome::Failed {
                            "Failed"
                        } else {
                            "Succeeded"
                        };
                        // A rolled-back table is a new version of the resource.
                        old.etag = new_etag();
                        self.tables.insert(key, old);
                    }
                    None => {
                        self.tables.remove(&key);
                    }
                }
                None
            }
        }
    }

    pub fn op_status(&self, op_id: &str) -> Option<(OpStatus, Value)> {
        let op = self.ops.get(op_id)?;
        let mut body = json!({"status": op.status.as_str()});
        match op.status {
            OpStatus::Failed => {
                body["error"] = json!({
                    "code": "InternalServerError",
                    "message": "An error occurred while provisioning the route table."
                });
            }
            OpStatus::Canceled => {
                body["error"] = json!({
                    "code": "Canceled",
                    "message": "The operation was canceled."
                });
            }
            _ => {}
        }
        Some((op.status, body))
    }

    /// The final answer of an operation's `Location` (operationResults) URL.
    pub fn op_result(&self, op_id: &str) -> Option<(OpStatus, Option<Value>)> {
        let op = self.ops.get(op_id)?;
        let body = self.tables.get(&op.table_key).map(Table::render);
        Some((op.status, body))
    }

    /// Seeds a table directly (no operation), e.g. one holding a user's routes.
    pub fn seed(
        &mut self,
        id: &TableId,
        location: &str,
        routes: &[AppliedRoute],
    ) -> Vec<AppliedRoute> {
        let table = Table {
            id: id.clone(),
            location: location.to_string(),
            tags: json!({}),
            disable_bgp: false,
            other_properties: Map::new(),
            routes: routes
                .iter()
                .map(|r| StoredRoute {
                    name: r.name.clone(),
                    address_prefix: r.address_prefix.clone(),
                    next_hop_type: r.next_hop_type.clone(),
                    next_hop_ip: r.next_hop_ip.clone(),
                    etag: new_etag(),
                })
                .collect(),
            etag: new_etag(),
            provisioning: "Succeeded",
            resource_guid: new_guid(),
            busy: None,
        };
        let applied = table.applied();
        self.tables.insert(id.key(), table);
        applied
    }

    /// Seeds a table directly (no operation) from a resource as a PUT body
    /// would give it: tags, settings and properties the service does not
    /// model included.
    pub fn seed_resource(
        &mut self,
        id: &TableId,
        body: RouteTableIn,
    ) -> Result<Vec<AppliedRoute>, CloudError> {
        let table = self.build_table(id, body, None)?;
        let applied = table.applied();
        self.tables.insert(id.key(), table);
        Ok(applied)
    }

    /// Routes currently stored in a table (written, whether or not applied).
    pub fn stored_routes(&self, id: &TableId) -> Option<Vec<AppliedRoute>> {
        self.tables.get(&id.key()).map(Table::applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_follow_azure_rules() {
        for (name, ok) in [
            ("a", true),
            ("node-1__10.0.0.0_24", true),
            ("ends_", true),
            ("-starts-with-dash", false),
            ("ends.", false),
            ("", false),
            ("has/slash", false),
            (&"x".repeat(80), true),
            (&"x".repeat(81), false),
        ] {
            assert_eq!(valid_route_name(name), ok, "{name}");
        }
    }

    #[test]
    fn a_put_replaces_the_resource_with_its_body() {
        let id = TableId::new("s", "rg", "rt");
        let mut state = State::new(10);
        let put = |state: &mut State, body: Value| {
            let body: RouteTableIn = serde_json::from_value(body).unwrap();
            let op = state
                .put_table(&id, body, Conditions::default())
                .unwrap()
                .op_id;
            state.finish(&op, Outcome::Succeeded);
            state.get_table(&id).unwrap()
        };
        let full = json!({"location": "l", "tags": {"a": "1"}, "properties": {
            "disableBgpRoutePropagation": true, "futureSetting": {"x": 1},
            "provisioningState": "Failed", "subnets": [{"id": "s"}]}});
        let got = put(&mut state, full);
        assert_eq!(got["tags"], json!({"a": "1"}));
        assert_eq!(got["properties"]["disableBgpRoutePropagation"], true);
        assert_eq!(got["properties"]["futureSetting"], json!({"x": 1}));
        assert_eq!(got["properties"]["provisioningState"], "Succeeded");
        assert!(got["properties"].get("subnets").is_none());
        let bare = put(&mut state, json!({"location": "l"}));
        assert_eq!(bare["tags"], json!({}));
        assert_eq!(bare["properties"]["disableBgpRoutePropagation"], false);
        assert!(bare["properties"].get("futureSetting").is_none());
    }

    #[test]
    fn conditions_compare_etags() {
        // (current ETag, If-Match, If-None-Match, allowed)
        let cases = [
            (Some("a"), Some("a"), None, true),
            (Some("a"), Some("*"), None, true),
            (Some("a"), Some("b"), None, false),
            (None, Some("*"), None, false),
            (None, None, Some("*"), true),
            (Some("a"), None, Some("*"), false),
        ];
        for (current, if_match, if_none_match, allowed) in cases {
            let conditions = Conditions {
                if_match,
                if_none_match,
            };
            let status = conditions.check(current).err().map(|e| e.status);
            let want = (!allowed).then_some(412);
            assert_eq!(status, want, "{current:?} {conditions:?}");
        }
    }
}
