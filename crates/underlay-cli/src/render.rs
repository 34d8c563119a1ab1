//! Tables for people and JSON (`-o json`) for scripts.

use crate::Output;
use crate::cluster::NodeRow;
use serde_json::{Value, json};
use underlay_proto::v1;

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Prints rows as aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn family(f: i32) -> &'static str {
    match v1::IpFamily::try_from(f) {
        Ok(v1::IpFamily::Ipv4) => "IPv4",
        Ok(v1::IpFamily::Ipv6) => "IPv6",
        _ => "?",
    }
}

fn direction(d: i32) -> &'static str {
    match v1::Direction::try_from(d) {
        Ok(v1::Direction::Ingress) => "ingress",
        Ok(v1::Direction::Egress) => "egress",
        _ => "?",
    }
}

pub fn status_json(st: &v1::StatusResponse) -> Value {
    let policy = st.policy.as_ref().map(|p| {
        json!({"policies": p.policies, "clusterPolicies": p.cluster_policies,
               "endpoints": p.endpoints, "rules": p.rules, "ipsetMembers": p.ipset_members,
               "lastSyncUnixMs": p.last_sync_unix_ms, "lastError": p.last_error})
    });
    json!({
        "node": st.node_name, "version": st.version, "ready": st.ready, "reason": st.reason,
        "endpoints": st.endpoints,
        "pools": st.pools.iter().map(|p| json!({"family": family(p.family), "cidr": p.cidr,
            "capacity": p.capacity, "allocated": p.allocated})).collect::<Vec<_>>(),
        "policy": policy,
    })
}

pub fn status(st: &v1::StatusResponse, output: Output) {
    if output == Output::Json {
        return print_json(&status_json(st));
    }
    println!("node:       {}", st.node_name);
    println!("version:    {}", st.version);
    if st.ready {
        println!("ready:      yes");
    } else {
        println!("ready:      no — {}", st.reason);
    }
    println!("endpoints:  {}", st.endpoints);
    for p in &st.pools {
        println!(
            "pool:       {} {} ({} of {} addresses in use)",
            family(p.family),
            p.cidr,
            p.allocated,
            p.capacity
        );
    }
    match &st.policy {
        None => println!("policy:     off (every pod is open)"),
        Some(p) => {
            println!(
                "policy:     {} NetworkPolicies and {} ClusterNetworkPolicies select local pods; {} rules, {} set members",
                p.policies, p.cluster_policies, p.rules, p.ipset_members
            );
            if let Some(ms) = p.last_sync_unix_ms {
                println!("last sync:  {ms} (unix ms)");
            }
            if !p.last_error.is_empty() {
                println!("last error: {}", p.last_error);
            }
        }
    }
}

fn isolation_json(i: Option<&v1::Isolation>) -> Value {
    let i = i.cloned().unwrap_or_default();
    json!({"isolated": i.isolated, "policies": i.policies})
}

fn isolation_cell(i: Option<&v1::Isolation>) -> String {
    match i {
        Some(i) if i.isolated && i.policies.is_empty() => "isolated".into(),
        Some(i) if i.isolated => i.policies.join(", "),
        _ => "open".into(),
    }
}

pub fn endpoints(eps: &v1::EndpointsResponse, output: Output) {
    if output == Output::Json {
        let v: Vec<Value> = eps
            .endpoints
            .iter()
            .map(|e| {
                json!({"namespace": e.namespace, "name": e.name, "ips": e.ips,
                       "hostInterface": e.host_interface, "containerId": e.container_id,
                       "podKnown": e.pod_known,
                       "ingress": isolation_json(e.ingress.as_ref()),
                       "egress": isolation_json(e.egress.as_ref())})
            })
            .collect();
        return print_json(&json!({"endpoints": v}));
    }
    let rows: Vec<Vec<String>> = eps
        .endpoints
        .iter()
        .map(|e| {
            let short: String = e.container_id.chars().take(12).collect();
            vec![
                format!("{}/{}", e.namespace, e.name),
                e.ips.join(","),
                e.host_interface.clone(),
                short,
                isolation_cell(e.ingress.as_ref()),
                isolation_cell(e.egress.as_ref()),
            ]
        })
        .collect();
    table(
        &["POD", "IPS", "INTERFACE", "SANDBOX", "INGRESS", "EGRESS"],
        &rows,
    );
}

pub fn trace_json(t: &v1::TraceResponse) -> Value {
    let verdict = |v: Option<&v1::Verdict>| {
        let v = v.cloned().unwrap_or_default();
        json!({"allowed": v.allowed, "reason": v.reason})
    };
    json!({
        "allowed": t.allowed, "agree": t.agree,
        "directions": t.directions.iter().map(|d| json!({
            "direction": direction(d.direction), "pod": d.pod, "agree": d.agree,
            "model": verdict(d.model.as_ref()), "kernel": verdict(d.kernel.as_ref()),
            "kernelRules": d.kernel_rules})).collect::<Vec<_>>(),
    })
}

pub fn trace(t: &v1::TraceResponse, output: Output) {
    if output == Output::Json {
        return print_json(&trace_json(t));
    }
    if t.directions.is_empty() {
        println!("neither address is a pod on this node: nothing here decides this flow");
    }
    for d in &t.directions {
        let model = d.model.clone().unwrap_or_default();
        let kernel = d.kernel.clone().unwrap_or_default();
        let word = |a: bool| if a { "allowed" } else { "denied" };
        println!(
            "{} at {}: {}",
            direction(d.direction),
            d.pod,
            word(kernel.allowed)
        );
        println!("  model:  {} — {}", word(model.allowed), model.reason);
        println!("  kernel: {} — {}", word(kernel.allowed), kernel.reason);
        for r in &d.kernel_rules {
            println!("    {r}");
        }
        if !d.agree {
            println!("  !! the model and the kernel disagree");
        }
    }
    println!("verdict: {}", if t.allowed { "allowed" } else { "denied" });
}

pub fn denial_json(d: &v1::Denial) -> Value {
    json!({"firstUnixMs": d.first_unix_ms, "lastUnixMs": d.last_unix_ms,
           "direction": direction(d.direction), "pod": d.pod, "source": d.source,
           "destination": d.destination, "protocol": d.protocol, "port": d.port,
           "policy": d.policy, "packets": d.packets, "audit": d.audit})
}

pub fn denial_header(output: Output) {
    if output == Output::Table {
        println!("LAST(unix ms)   DIRECTION  POD  SOURCE -> DESTINATION  PACKETS  POLICY");
    }
}

pub fn denial(d: &v1::Denial, output: Output) {
    if output == Output::Json {
        println!("{}", denial_json(d));
        return;
    }
    println!(
        "{}   {}{}  {}  {} -> {}:{}/{}  {}  {}",
        d.last_unix_ms,
        direction(d.direction),
        if d.audit { " (audit)" } else { "" },
        d.pod,
        d.source,
        d.destination,
        d.port,
        d.protocol,
        d.packets,
        d.policy
    );
}

pub fn cluster(rows: &[NodeRow], output: Output) {
    if output == Output::Json {
        let v: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({"node": r.name, "podCIDRs": r.pod_cidrs,
                       "networkUnavailable": r.network_unavailable, "routeReason": r.route_reason,
                       "ready": r.ready, "readyReason": r.ready_reason,
                       "agentPod": r.agent_pod, "agentReady": r.agent_ready})
            })
            .collect();
        return print_json(&json!({"nodes": v}));
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let route = match r.network_unavailable.as_str() {
                "False" => format!("routed ({})", r.route_reason),
                _ => format!("not routed ({})", r.route_reason),
            };
            let agent = if r.agent_pod.is_empty() {
                "no agent pod".to_string()
            } else {
                format!("{} Ready={}", r.agent_pod, r.agent_ready)
            };
            vec![
                r.name.clone(),
                r.pod_cidrs.join(","),
                route,
                format!("{} ({})", r.ready, r.ready_reason),
                agent,
            ]
        })
        .collect();
    table(&["NODE", "POD CIDRS", "ROUTE", "READY", "AGENT"], &rows);
}
