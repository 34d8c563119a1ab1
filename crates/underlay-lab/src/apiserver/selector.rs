//! `labelSelector` and `fieldSelector` query parameters: parsing (with the
//! errors kube-apiserver gives) and matching against stored objects.

use std::collections::BTreeSet;

use serde_json::Value;

use super::error::{ApiError, ApiResult};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Exists,
    DoesNotExist,
    Equals(String),
    NotEquals(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_set(rest: &str, selector: &str) -> ApiResult<BTreeSet<String>> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad_label(selector, "expected a parenthesized set of values"))?;
    let values: BTreeSet<String> = inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return Err(bad_label(
            selector,
            "for 'in', 'notin' operators, values set can't be empty",
        ));
    }
    Ok(values)
}

fn bad_label(selector: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: found '{selector}': {why}"
    ))
}

fn check_key(key: &str, selector: &str) -> ApiResult<String> {
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(bad_label(selector, "invalid label key"));
    }
    if let Err(why) = super::validation::qualified_name(key) {
        return Err(bad_label(
            selector,
            &format!("invalid label key \"{key}\": {why}"),
        ));
    }
    Ok(key.to_string())
}

impl LabelSelector {
    pub fn parse(s: &str) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            reqs.push(Self::parse_one(part)?);
        }
        Ok(LabelSelector { reqs })
    }

    fn parse_one(part: &str) -> ApiResult<Requirement> {
        if let Some(key) = part.strip_prefix('!') {
            return Ok(Requirement {
                key: check_key(key.trim(), part)?,
                op: Op::DoesNotExist,
            });
        }
        for (token, make) in [
            ("!=", Op::NotEquals as fn(String) -> Op),
            ("==", Op::Equals as fn(String) -> Op),
            ("=", Op::Equals as fn(String) -> Op),
        ] {
            if let Some((k, v)) = part.split_once(token) {
                let value = v.trim().to_string();
                if let Err(why) = super::validation::label_value(&value) {
                    return Err(bad_label(
                        part,
                        &format!("invalid label value: \"{value}\": {why}"),
                    ));
                }
                return Ok(Requirement {
                    key: check_key(k.trim(), part)?,
                    op: make(value),
                });
            }
        }
        for (token, is_gt) in [(">", true), ("<", false)] {
            if let Some((k, v)) = part.split_once(token) {
                let n: i64 = v.trim().parse().map_err(|_| {
                    bad_label(
                        part,
                        "for 'Gt', 'Lt' operators, the value must be an integer",
                    )
                })?;
                let op = if is_gt { Op::Gt(n) } else { Op::Lt(n) };
                return Ok(Requirement {
                    key: check_key(k.trim(), part)?,
                    op,
                });
            }
        }
        let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
        if words.len() == 2 {
            let rest = words[1].trim_start();
            if let Some(set) = rest.strip_prefix("notin") {
                return Ok(Requirement {
                    key: check_key(words[0], part)?,
                    op: Op::NotIn(parse_set(set, part)?),
                });
            }
            if let Some(set) = rest.strip_prefix("in") {
                return Ok(Requirement {
                    key: check_key(words[0], part)?,
                    op: Op::In(parse_set(set, part)?),
                });
            }
            return Err(bad_label(
                part,
                "expected one of ['!=', '=', '==', 'in', 'notin']",
            ));
        }
        Ok(Requirement {
            key: check_key(part, part)?,
            op: Op::Exists,
        })
    }

    /// The selector of a `metav1.LabelSelector` object (`matchLabels` and
    /// `matchExpressions`), as workloads and budgets carry it. An operator
    /// other than In, NotIn, Exists and DoesNotExist selects nothing
    /// (validation rejects it before it is stored).
    pub fn from_object(sel: &Value) -> Self {
        let text = |v: &Value| v.as_str().unwrap_or("").to_string();
        let mut reqs: Vec<Requirement> = sel["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                op: Op::Equals(text(v)),
            })
            .collect();
        for e in sel["matchExpressions"].as_array().into_iter().flatten() {
            let values: BTreeSet<String> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            let op = match e["operator"].as_str().unwrap_or("") {
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                _ => Op::In(BTreeSet::new()),
            };
            reqs.push(Requirement {
                key: text(&e["key"]),
                op,
            });
        }
        LabelSelector { reqs }
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.matches_labels(&object["metadata"]["labels"])
    }

    /// Whether a `metadata.labels` map satisfies every requirement.
    pub fn matches_labels(&self, labels: &Value) -> bool {
        self.reqs.iter().all(|r| {
            let value = labels.get(&r.key).and_then(Value::as_str);
            match &r.op {
                Op::Exists => value.is_some(),
                Op::DoesNotExist => value.is_none(),
                Op::Equals(v) => value == Some(v.as_str()),
                Op::NotEquals(v) => value != Some(v.as_str()),
                Op::In(set) => value.is_some_and(|v| set.contains(v)),
                Op::NotIn(set) => value.is_none_or(|v| !set.contains(v)),
                Op::Gt(n) => value
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                Op::Lt(n) => value
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }
}

/// A parsed field selector over the fields a resource supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

/// The fields each kind can be selected on (besides metadata.name and metadata.namespace).
fn extra_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Node" => &["spec.unschedulable"],
        "Namespace" => &["status.phase"],
        "Secret" => &["type"],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        _ => &[],
    }
}

impl FieldSelector {
    pub fn parse(s: &str, kind: &str) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let (field, negate, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, false, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            let known = ["metadata.name", "metadata.namespace"];
            if !known.contains(&field) && !extra_fields(kind).contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_string(), negate, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    /// The single name this selector pins (`metadata.name=X`), for fast lookups.
    pub fn pinned_name(&self) -> Option<&str> {
        self.reqs
            .iter()
            .find(|(f, neg, _)| f == "metadata.name" && !neg)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.reqs.iter().all(|(field, negate, want)| {
            let mut cur = object;
            for part in field.split('.') {
                cur = &cur[part];
            }
            let have = match cur {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                // Unset fields select as the empty string (and booleans as "false").
                Value::Null if field == "spec.hostNetwork" || field == "spec.unschedulable" => {
                    "false".into()
                }
                _ => String::new(),
            };
            (have == *want) != *negate
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labeled(labels: Value) -> Value {
        json!({"metadata": {"labels": labels}})
    }

    #[test]
    fn label_operators_match_like_kube_apiserver() {
        let obj = labeled(json!({"app": "web", "tier": "front", "n": "5"}));
        let bare = labeled(json!({}));
        let cases: &[(&str, bool, bool)] = &[
            ("", true, true),
            ("app", true, false),
            ("!app", false, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("app in (web, db)", true, false),
            ("app notin (web,db)", false, true),
            ("app in (db)", false, false),
            ("app=web,tier=front", true, false),
            ("app=web,tier=back", false, false),
            ("n>4", true, false),
            ("n<5", false, false),
            ("app in (web),!missing", true, false),
        ];
        for (sel, want_obj, want_bare) in cases {
            let s = LabelSelector::parse(sel).unwrap();
            assert_eq!(s.matches(&obj), *want_obj, "{sel} on labeled");
            assert_eq!(s.matches(&bare), *want_bare, "{sel} on bare");
        }
    }

    #[test]
    fn bad_label_selectors_are_400() {
        for sel in ["app in ()", "app in web", "a b c", "app=x y", "bad key!=1"] {
            let err = LabelSelector::parse(sel).unwrap_err();
            assert_eq!(err.code, 400, "{sel}");
        }
    }

    #[test]
    fn field_selectors_on_supported_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "n"}, "spec": {"nodeName": "node-1"}, "status": {"phase": "Running"}});
        let check = |s: &str| FieldSelector::parse(s, "Pod").unwrap().matches(&pod);
        assert!(check("spec.nodeName=node-1"));
        assert!(!check("spec.nodeName!=node-1"));
        assert!(check("status.phase=Running,metadata.namespace=n"));
        assert!(check("metadata.name==p"));
        assert!(!check("metadata.name=q"));
        assert!(check("spec.hostNetwork=false"));
        assert_eq!(
            FieldSelector::parse("spec.nodeName=x", "ConfigMap")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            FieldSelector::parse("garbage", "Pod").unwrap_err().code,
            400
        );
    }
}
