//! Kubernetes protobuf request bodies for the kinds kubectl's generators send
//! that way (`kubectl create namespace|configmap|secret|serviceaccount`):
//! the `k8s\0` envelope around a `runtime.Unknown`, and the fields of those
//! kinds, decoded into the same JSON the rest of the server handles. Other
//! kinds in protobuf are refused with 415 (clients then use JSON).

use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult};
use super::meta::base64_encode;

const MAGIC: &[u8] = b"k8s\0";

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        out |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

/// The fields of one message, in order.
fn fields(buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let (number, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => out.push((number, Field::Varint(varint(buf, &mut pos)?))),
            2 => {
                let len = varint(buf, &mut pos)? as usize;
                let end = pos.checked_add(len).filter(|e| *e <= buf.len())?;
                out.push((number, Field::Bytes(&buf[pos..end])));
                pos = end;
            }
            1 => pos = pos.checked_add(8).filter(|e| *e <= buf.len())?,
            5 => pos = pos.checked_add(4).filter(|e| *e <= buf.len())?,
            _ => return None,
        }
    }
    Some(out)
}

fn text(b: &[u8]) -> Option<Value> {
    std::str::from_utf8(b)
        .ok()
        .map(|s| Value::String(s.to_string()))
}

fn map_entry(b: &[u8], bytes_value: bool) -> Option<(String, Value)> {
    let mut key = String::new();
    let mut value = json!("");
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(k)) => key = std::str::from_utf8(k).ok()?.to_string(),
            (2, Field::Bytes(v)) => {
                value = if bytes_value {
                    json!(base64_encode(v))
                } else {
                    text(v)?
                }
            }
            _ => {}
        }
    }
    Some((key, value))
}

fn time(b: &[u8]) -> Option<Value> {
    let mut secs = 0u64;
    for (n, f) in fields(b)? {
        if let (1, Field::Varint(v)) = (n, f) {
            secs = v;
        }
    }
    Some(json!(super::meta::format_time(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    )))
}

/// Decode a message whose fields are strings, by number → JSON name.
fn strings(b: &[u8], names: &[(u64, &str)]) -> Option<Value> {
    let mut m = Map::new();
    for (n, f) in fields(b)? {
        if let (Some((_, name)), Field::Bytes(v)) = (names.iter().find(|(k, _)| *k == n), f) {
            m.insert(name.to_string(), text(v)?);
        }
    }
    Some(Value::Object(m))
}

fn object_meta(b: &[u8]) -> Option<Value> {
    let mut m = Map::new();
    let str_fields = [
        (1, "name"),
        (2, "generateName"),
        (3, "namespace"),
        (5, "uid"),
        (6, "resourceVersion"),
    ];
    for (n, f) in fields(b)? {
        match (n, f) {
            (n, Field::Bytes(v)) if str_fields.iter().any(|(k, _)| *k == n) => {
                let name = str_fields.iter().find(|(k, _)| *k == n)?.1;
                m.insert(name.into(), text(v)?);
            }
            (7, Field::Varint(v)) => {
                m.insert("generation".into(), json!(v));
            }
            (8, Field::Bytes(v)) => {
                m.insert("creationTimestamp".into(), time(v)?);
            }
            (11 | 12, Field::Bytes(v)) => {
                let key = if n == 11 { "labels" } else { "annotations" };
                let (k, val) = map_entry(v, false)?;
                m.entry(key).or_insert_with(|| json!({}))[k] = val;
            }
            (13, Field::Bytes(v)) => {
                let mut r = strings(
                    v,
                    &[(1, "kind"), (3, "name"), (4, "uid"), (5, "apiVersion")],
                )?;
                for (rn, rf) in fields(v)? {
                    if let (6 | 7, Field::Varint(x)) = (rn, rf) {
                        r[if rn == 6 {
                            "controller"
                        } else {
                            "blockOwnerDeletion"
                        }] = json!(x != 0);
                    }
                }
                m.entry("ownerReferences")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()?
                    .push(r);
            }
            (14, Field::Bytes(v)) => {
                m.entry("finalizers")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()?
                    .push(text(v)?);
            }
            _ => {}
        }
    }
    Some(Value::Object(m))
}

fn kind_body(kind: &str, b: &[u8]) -> Option<Value> {
    let mut obj = Map::new();
    for (n, f) in fields(b)? {
        let Field::Bytes(v) = f else {
            if let (Field::Varint(x), true) =
                (&f, matches!((kind, n), ("ConfigMap", 4) | ("Secret", 5)))
            {
                obj.insert("immutable".into(), json!(*x != 0));
            }
            if let (Field::Varint(x), ("ServiceAccount", 4)) = (&f, (kind, n)) {
                obj.insert("automountServiceAccountToken".into(), json!(*x != 0));
            }
            continue;
        };
        if n == 1 {
            obj.insert("metadata".into(), object_meta(v)?);
            continue;
        }
        match (kind, n) {
            ("Namespace", 2) => {
                let finalizers: Vec<Value> = fields(v)?
                    .into_iter()
                    .filter_map(|(fnum, ff)| match (fnum, ff) {
                        (1, Field::Bytes(s)) => text(s),
                        _ => None,
                    })
                    .collect();
                obj.insert("spec".into(), json!({"finalizers": finalizers}));
            }
            ("ConfigMap", 2) | ("ConfigMap", 3) | ("Secret", 2) | ("Secret", 4) => {
                let bytes_value = matches!((kind, n), ("ConfigMap", 3) | ("Secret", 2));
                let key = match (kind, n) {
                    ("ConfigMap", 2) | ("Secret", 2) => "data",
                    ("ConfigMap", 3) => "binaryData",
                    _ => "stringData",
                };
                let (k, val) = map_entry(v, bytes_value)?;
                obj.entry(key).or_insert_with(|| json!({}))[k] = val;
            }
            ("Secret", 3) => {
                obj.insert("type".into(), text(v)?);
            }
            ("ServiceAccount", 2) => {
                let r = strings(
                    v,
                    &[
                        (1, "kind"),
                        (2, "namespace"),
                        (3, "name"),
                        (4, "uid"),
                        (5, "apiVersion"),
                    ],
                )?;
                obj.entry("secrets")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()?
                    .push(r);
            }
            ("ServiceAccount", 3) => {
                let r = strings(v, &[(1, "name")])?;
                obj.entry("imagePullSecrets")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()?
                    .push(r);
            }
            _ => {}
        }
    }
    Some(Value::Object(obj))
}

/// Decode a protobuf request body into JSON.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let malformed = || ApiError::bad_request("the protobuf body is malformed; send JSON instead");
    let envelope = body.strip_prefix(MAGIC).ok_or_else(malformed)?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, f) in fields(envelope).ok_or_else(malformed)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (tn, tf) in fields(tm).ok_or_else(malformed)? {
                    if let Field::Bytes(s) = tf {
                        let s = std::str::from_utf8(s).map_err(|_| malformed())?.to_string();
                        if tn == 1 {
                            api_version = s;
                        } else if tn == 2 {
                            kind = s;
                        }
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    if api_version != "v1"
        || !matches!(
            kind.as_str(),
            "Namespace" | "ConfigMap" | "Secret" | "ServiceAccount"
        )
    {
        return Err(ApiError::unsupported_media_type(
            "application/vnd.kubernetes.protobuf",
        ));
    }
    let mut obj = kind_body(&kind, raw).ok_or_else(malformed)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_bytes(n: u64, b: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8];
        out.push(b.len() as u8);
        out.extend_from_slice(b);
        out
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        let meta = [
            field_bytes(1, b"c1"),
            field_bytes(
                11,
                &[field_bytes(1, b"app"), field_bytes(2, b"web")].concat(),
            ),
        ]
        .concat();
        let cm = [
            field_bytes(1, &meta),
            field_bytes(2, &[field_bytes(1, b"k"), field_bytes(2, b"v")].concat()),
        ]
        .concat();
        let type_meta = [field_bytes(1, b"v1"), field_bytes(2, b"ConfigMap")].concat();
        let body = [
            MAGIC.to_vec(),
            field_bytes(1, &type_meta),
            field_bytes(2, &cm),
        ]
        .concat();
        let obj = decode(&body).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1", "labels": {"app": "web"}}, "data": {"k": "v"}})
        );
        assert_eq!(decode(b"junk").unwrap_err().code, 400);
        assert_eq!(
            decode(&[MAGIC, &[0x0a, 0x05]].concat()).unwrap_err().code,
            400
        );
    }
}
