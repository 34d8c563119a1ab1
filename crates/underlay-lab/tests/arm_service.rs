//! The ARM route-table service over raw HTTP/1.1: what a client of the real
//! API would see.

use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use underlay_lab::arm::{
    ArmConfig, ArmHandle, ArmServer, Fault, FaultTarget, RequestKind, TableId,
};

const TABLE: &str =
    "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Network/routeTables/rt";
const API: &str = "api-version=2024-03-01";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn send(
    arm: &ArmHandle,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(arm.addr()).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: management.azure.com\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    let token = format!("Bearer {}", arm.token());
    let mut all: Vec<(&str, &str)> = vec![("authorization", &token)];
    all.extend_from_slice(headers);
    for (k, v) in all {
        if !v.is_empty() {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    req.push_str("\r\n");
    req.push_str(&body);
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("connection closed without a response"))?;
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    })
}

fn table_body(routes: &[(&str, &str, &str)]) -> Value {
    json!({
        "location": "westeurope",
        "properties": {
            "routes": routes.iter().map(|(n, p, hop)| json!({
                "name": n,
                "properties": {"addressPrefix": p, "nextHopType": "VirtualAppliance", "nextHopIpAddress": hop}
            })).collect::<Vec<_>>()
        }
    })
}

/// `method` on `path` under the service's API version: the answer.
async fn call(
    arm: &ArmHandle,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    send(arm, method, &format!("{path}?{API}"), headers, body)
        .await
        .unwrap()
}

async fn get(arm: &ArmHandle, path: &str) -> Reply {
    call(arm, "GET", path, &[], None).await
}

/// A PUT of the route table with `headers`.
async fn put_table(arm: &ArmHandle, headers: &[(&str, &str)], body: Value) -> Reply {
    call(arm, "PUT", TABLE, headers, Some(body)).await
}

async fn wait_op(arm: &ArmHandle, url: &str) -> Value {
    let path = url.strip_prefix(arm.endpoint()).unwrap();
    loop {
        let r = send(arm, "GET", path, &[], None).await.unwrap();
        assert_eq!(r.status, 200);
        if r.body["status"] != "InProgress" {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn start(config: ArmConfig) -> ArmHandle {
    ArmServer::start(config).await.unwrap()
}

#[tokio::test]
async fn a_table_is_created_updated_and_read_with_etags_and_async_operations() {
    let arm = start(ArmConfig {
        operation_delay: Duration::from_millis(50),
        ..ArmConfig::default()
    })
    .await;
    let mut applied = arm.routes_watch();
    let r = get(&arm, TABLE).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["code"], "ResourceNotFound");

    let r = put_table(
        &arm,
        &[("if-none-match", "*")],
        table_body(&[("r1", "10.244.1.0/24", "10.0.0.1")]),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["properties"]["provisioningState"], "Updating");
    let op = r.header("azure-asyncoperation").unwrap().to_string();
    assert!(
        op.contains("/providers/Microsoft.Network/locations/westeurope/operations/"),
        "{op}"
    );
    // The written routes are not applied before the operation completes.
    assert!(applied.borrow().is_empty());
    assert_eq!(wait_op(&arm, &op).await["status"], "Succeeded");
    applied
        .wait_for(|t| {
            t.get(&TableId::new("s1", "rg", "rt"))
                .is_some_and(|r| r.len() == 1)
        })
        .await
        .unwrap();

    let r = get(&arm, TABLE).await;
    assert_eq!(r.status, 200);
    let etag = r.body["etag"].as_str().unwrap().to_string();
    assert!(etag.starts_with("W/\""));
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.body["properties"]["provisioningState"], "Succeeded");
    assert_eq!(
        r.body["properties"]["routes"][0]["properties"]["nextHopIpAddress"],
        "10.0.0.1"
    );

    // Paths and names are case-insensitive, as in ARM.
    let lower = TABLE.to_ascii_lowercase();
    let r = get(&arm, &lower).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["name"], "rt");

    // Update with the current ETag: 200; with a stale one: 412.
    let body = table_body(&[
        ("r1", "10.244.1.0/24", "10.0.0.1"),
        ("r2", "10.244.2.0/24", "10.0.0.2"),
    ]);
    let r = put_table(&arm, &[("if-match", &etag)], body.clone()).await;
    assert_eq!(r.status, 200);
    // A second write while the first is in flight is refused like Azure does.
    let current = r.body["etag"].as_str().unwrap().to_string();
    let busy = put_table(&arm, &[("if-match", &current)], body.clone()).await;
    assert_eq!(busy.status, 429);
    assert_eq!(
        busy.body["error"]["details"][0]["code"],
        "RetryableErrorDueToAnotherOperation"
    );
    assert!(busy.header("retry-after").is_some());
    wait_op(&arm, r.header("azure-asyncoperation").unwrap()).await;
    let stale = put_table(&arm, &[("if-match", &etag)], body).await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.body["error"]["code"], "PreconditionFailed");
    assert_eq!(arm.count(RequestKind::PutTable), 4);
}

#[tokio::test]
async fn requests_are_authenticated_versioned_and_validated() {
    let arm = start(ArmConfig::default()).await;
    // The helper always sends the right token; send a wrong one by hand.
    let mut stream = TcpStream::connect(arm.addr()).await.unwrap();
    stream
        .write_all(format!("GET {TABLE}?{API} HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer nope\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(raw.contains("InvalidAuthenticationToken"));

    let r = send(&arm, "GET", TABLE, &[], None).await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "MissingApiVersionParameter");

    for (routes, code) in [
        (
            vec![("-bad", "10.0.0.0/24", "10.1.0.1")],
            "InvalidResourceName",
        ),
        (
            vec![("r", "10.0.0.0/33", "10.1.0.1")],
            "InvalidRequestFormat",
        ),
        (
            vec![("r", "10.0.0.0/24", "fd00::1")],
            "InvalidNextHopIpAddress",
        ),
        (
            vec![
                ("r", "10.0.0.0/24", "10.1.0.1"),
                ("R", "10.0.1.0/24", "10.1.0.1"),
            ],
            "InvalidRequestFormat",
        ),
    ] {
        let r = put_table(&arm, &[], table_body(&routes)).await;
        assert_eq!(r.status, 400, "{routes:?}");
        assert_eq!(r.body["error"]["code"], code, "{routes:?}");
    }
    let r = put_table(&arm, &[], json!({"properties": {}})).await;
    assert_eq!(r.body["error"]["code"], "LocationRequired");
    let r = call(&arm, "PUT", TABLE, &[], None).await;
    assert_eq!(r.body["error"]["code"], "InvalidRequestFormat");
    assert_eq!(arm.writes(), 6, "refused writes are still logged");
}

#[tokio::test]
async fn the_route_limit_is_enforced() {
    let arm = start(ArmConfig {
        route_limit: 2,
        ..ArmConfig::default()
    })
    .await;
    let routes = [
        ("a", "10.0.1.0/24", "10.1.0.1"),
        ("b", "10.0.2.0/24", "10.1.0.2"),
        ("c", "10.0.3.0/24", "10.1.0.3"),
    ];
    let r = put_table(&arm, &[], table_body(&routes)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "RouteTableRoutesLimitExceeded");
    let r = put_table(&arm, &[], table_body(&routes[..2])).await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn single_routes_are_written_and_deleted_through_the_routes_api() {
    let arm = start(ArmConfig::default()).await;
    let r = put_table(&arm, &[], table_body(&[])).await;
    wait_op(&arm, r.header("azure-asyncoperation").unwrap()).await;
    let route = json!({"properties": {"addressPrefix": "10.244.9.0/24", "nextHopType": "VirtualAppliance", "nextHopIpAddress": "10.0.0.9"}});
    let r = call(&arm, "PUT", &format!("{TABLE}/routes/n9"), &[], Some(route)).await;
    assert_eq!(r.status, 201);
    wait_op(&arm, r.header("azure-asyncoperation").unwrap()).await;
    let r = get(&arm, &format!("{TABLE}/routes")).await;
    assert_eq!(r.body["value"][0]["name"], "n9");
    let r = call(&arm, "DELETE", &format!("{TABLE}/routes/n9"), &[], None).await;
    assert_eq!(r.status, 202);
    assert!(r.header("location").unwrap().contains("/operationResults/"));
    wait_op(&arm, r.header("azure-asyncoperation").unwrap()).await;
    let r = call(&arm, "DELETE", &format!("{TABLE}/routes/n9"), &[], None).await;
    assert_eq!(r.status, 204);
    let r = get(&arm, &format!("{TABLE}/routes/n9")).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn faults_are_served_in_order_and_then_cleared() {
    let arm = start(ArmConfig::default()).await;
    arm.faults().inject(
        FaultTarget::Any,
        Fault::Throttle {
            retry_after_secs: 3,
        },
        1,
    );
    arm.faults()
        .inject(FaultTarget::Any, Fault::InternalError, 1);
    arm.faults()
        .inject(FaultTarget::Any, Fault::DropConnection, 1);
    let r = get(&arm, TABLE).await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("3")));
    let r = get(&arm, TABLE).await;
    assert_eq!(r.status, 500);
    assert!(
        send(&arm, "GET", &format!("{TABLE}?{API}"), &[], None)
            .await
            .is_err()
    );
    let r = get(&arm, TABLE).await;
    assert_eq!(r.status, 404);
    let statuses: Vec<Option<u16>> = arm.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(429), Some(500), None, Some(404)]);

    // A failing operation leaves the table as it was.
    let r = put_table(&arm, &[], table_body(&[])).await;
    wait_op(&arm, r.header("azure-asyncoperation").unwrap()).await;
    arm.faults()
        .inject(FaultTarget::Write, Fault::OperationFailed, 1);
    let r = put_table(&arm, &[], table_body(&[("a", "10.0.1.0/24", "10.1.0.1")])).await;
    let done = wait_op(&arm, r.header("azure-asyncoperation").unwrap()).await;
    assert_eq!(done["status"], "Failed");
    assert!(done["error"]["code"].is_string());
    assert_eq!(
        arm.stored_routes(&TableId::new("s1", "rg", "rt")).unwrap(),
        vec![]
    );
}

#[tokio::test]
async fn unknown_methods_and_head_are_refused_on_known_resources_and_logged_as_unknown() {
    let arm = start(ArmConfig::default()).await;
    for method in ["HEAD", "POST", "PATCH"] {
        let r = call(&arm, method, TABLE, &[], None).await;
        assert_eq!(r.status, 405, "{method}");
    }
    let r = get(&arm, "/subscriptions/s/unknown").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["code"], "InvalidResourceType");
    assert_eq!(arm.count(RequestKind::Unknown), 4);
}
