//! The part of CEL (the expression language of a CRD's
//! `x-kubernetes-validations` rules) that the lab evaluates: field selection
//! and indexing on `self`, integer, string, boolean and null literals, `!`,
//! unary `-`, `&&`, `||`, comparisons, `has(e.f)`, the `e.exists(x, p)` and
//! `e.all(x, p)` macros, `size` and Kubernetes' `isCIDR`. kube-apiserver
//! compiles every rule when the CRD is written; so does [`compile`], which
//! refuses anything outside this subset (an unknown function, an undeclared
//! name, a syntax error), so a rule the lab cannot evaluate is never
//! silently skipped.
//!
//! `&&` and `||` absorb errors as CEL's do: `true || <error>` is true, and a
//! rule fails with an error only when the error decides the result.

use serde_json::Value;

use super::validation::parse_cidr;

mod parse;

use parse::{Cmp, Expr};

/// A compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Program(Expr);

/// Parses and checks a rule: every name is `self` or a macro's variable,
/// every function is known, and `has` is given a field selection.
pub fn compile(rule: &str) -> Result<Program, String> {
    let expr = parse::parse(rule)?;
    check(&expr, &mut vec!["self".to_string()])?;
    Ok(Program(expr))
}

impl Program {
    /// Whether the rule holds with `self` bound to `this`; an error when
    /// the rule cannot be evaluated on it (a missing field, mismatched types).
    pub fn holds(&self, this: &Value) -> Result<bool, String> {
        let mut scope = vec![("self".to_string(), this.clone())];
        match eval(&self.0, &mut scope)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!(
                "the rule gave {} instead of a bool",
                type_name(&other)
            )),
        }
    }
}

fn check(e: &Expr, scope: &mut Vec<String>) -> Result<(), String> {
    match e {
        Expr::Ident(name) if scope.contains(name) => Ok(()),
        Expr::Ident(name) => Err(format!("undeclared reference to '{name}'")),
        Expr::Lit(_) => Ok(()),
        Expr::Select(inner, _) | Expr::Has(inner, _) | Expr::Not(inner) | Expr::Neg(inner) => {
            check(inner, scope)
        }
        Expr::Size(inner) | Expr::IsCidr(inner) => check(inner, scope),
        Expr::Index(a, b) | Expr::And(a, b) | Expr::Or(a, b) | Expr::Compare(_, a, b) => {
            check(a, scope)?;
            check(b, scope)
        }
        Expr::Quantifier {
            target, var, body, ..
        } => {
            check(target, scope)?;
            scope.push(var.clone());
            let checked = check(body, scope);
            scope.pop();
            checked
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int",
        Value::Number(_) => "double",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

fn no_overload(op: &str, vals: &[&Value]) -> String {
    let types: Vec<&str> = vals.iter().map(|v| type_name(v)).collect();
    format!("no such overload: {op}({})", types.join(", "))
}

fn eval(e: &Expr, scope: &mut Vec<(String, Value)>) -> Result<Value, String> {
    Ok(match e {
        Expr::Lit(v) => v.clone(),
        Expr::Ident(name) => scope
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("undeclared reference to '{name}'"))?,
        Expr::Select(inner, field) => match eval(inner, scope)? {
            Value::Object(mut map) => map
                .remove(field)
                .ok_or_else(|| format!("no such key: {field}"))?,
            other => return Err(no_overload(&format!(".{field}"), &[&other])),
        },
        Expr::Has(inner, field) => match eval(inner, scope)? {
            Value::Object(map) => Value::Bool(map.contains_key(field)),
            other => return Err(no_overload("has", &[&other])),
        },
        Expr::Index(a, b) => index(eval(a, scope)?, eval(b, scope)?)?,
        Expr::Not(inner) => match eval(inner, scope)? {
            Value::Bool(b) => Value::Bool(!b),
            other => return Err(no_overload("!_", &[&other])),
        },
        Expr::Neg(inner) => match eval(inner, scope)? {
            Value::Number(n) if n.as_i64().is_some_and(|i| i != i64::MIN) => {
                Value::from(-n.as_i64().unwrap_or_default())
            }
            other => return Err(no_overload("-_", &[&other])),
        },
        Expr::And(a, b) => logic(a, b, false, scope)?,
        Expr::Or(a, b) => logic(a, b, true, scope)?,
        Expr::Compare(op, a, b) => Value::Bool(compare(*op, &eval(a, scope)?, &eval(b, scope)?)?),
        Expr::Size(inner) => Value::from(size(&eval(inner, scope)?)?),
        Expr::IsCidr(inner) => match eval(inner, scope)? {
            Value::String(s) => Value::Bool(parse_cidr(&s).is_some()),
            other => return Err(no_overload("isCIDR", &[&other])),
        },
        Expr::Quantifier {
            target,
            var,
            body,
            all,
        } => quantify(eval(target, scope)?, var, body, *all, scope)?,
    })
}

/// `a && b` (`decisive` false) or `a || b` (`decisive` true): a side equal
/// to `decisive` decides, whatever the other side is, even an error.
fn logic(
    a: &Expr,
    b: &Expr,
    decisive: bool,
    scope: &mut Vec<(String, Value)>,
) -> Result<Value, String> {
    let as_bool = |v: Result<Value, String>| match v {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(no_overload(
            if decisive { "_||_" } else { "_&&_" },
            &[&other],
        )),
        Err(e) => Err(e),
    };
    let left = as_bool(eval(a, scope));
    if left == Ok(decisive) {
        return Ok(Value::Bool(decisive));
    }
    let right = as_bool(eval(b, scope));
    match (left, right) {
        (_, Ok(r)) if r == decisive => Ok(Value::Bool(decisive)),
        (Ok(_), Ok(_)) => Ok(Value::Bool(!decisive)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

fn index(target: Value, key: Value) -> Result<Value, String> {
    match (&target, &key) {
        (Value::Array(items), Value::Number(n)) => {
            let at = n.as_u64().and_then(|i| usize::try_from(i).ok());
            at.and_then(|i| items.get(i).cloned())
                .ok_or_else(|| format!("index out of range: {n}"))
        }
        (Value::Object(map), Value::String(k)) => map
            .get(k)
            .cloned()
            .ok_or_else(|| format!("no such key: {k}")),
        _ => Err(no_overload("_[_]", &[&target, &key])),
    }
}

fn compare(op: Cmp, a: &Value, b: &Value) -> Result<bool, String> {
    use std::cmp::Ordering;
    let ordering = match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => x
                .as_f64()
                .zip(y.as_f64())
                .and_then(|(x, y)| x.partial_cmp(&y)),
        },
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    };
    match op {
        Cmp::Eq => Ok(ordering.map_or(a == b, |o| o == Ordering::Equal)),
        Cmp::Ne => Ok(ordering.map_or(a != b, |o| o != Ordering::Equal)),
        _ => {
            let o = ordering.ok_or_else(|| no_overload(op.symbol(), &[a, b]))?;
            Ok(match op {
                Cmp::Lt => o == Ordering::Less,
                Cmp::Le => o != Ordering::Greater,
                Cmp::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            })
        }
    }
}

fn size(v: &Value) -> Result<usize, String> {
    match v {
        Value::String(s) => Ok(s.chars().count()),
        Value::Array(items) => Ok(items.len()),
        Value::Object(map) => Ok(map.len()),
        other => Err(no_overload("size", &[other])),
    }
}

/// `target.exists(var, body)` (`all` false) or `target.all(var, body)`:
/// over a list's items or a map's keys, with CEL's error absorption (an
/// item that decides the result wins over an error from another).
fn quantify(
    target: Value,
    var: &str,
    body: &Expr,
    all: bool,
    scope: &mut Vec<(String, Value)>,
) -> Result<Value, String> {
    let items: Vec<Value> = match target {
        Value::Array(items) => items,
        Value::Object(map) => map.into_iter().map(|(k, _)| Value::String(k)).collect(),
        other => return Err(no_overload(if all { "all" } else { "exists" }, &[&other])),
    };
    let decisive = !all;
    let mut error = None;
    for item in items {
        scope.push((var.to_string(), item));
        let result = eval(body, scope);
        scope.pop();
        match result {
            Ok(Value::Bool(b)) if b == decisive => return Ok(Value::Bool(decisive)),
            Ok(Value::Bool(_)) => {}
            Ok(other) => error = Some(no_overload("macro predicate", &[&other])),
            Err(e) => error = Some(e),
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(Value::Bool(!decisive)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NAMED_PORTS: &str = "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes) || has(peer.domainNames)) && has(self.protocols) && self.protocols.exists(protocol, has(protocol.destinationNamedPort)))";

    fn holds(rule: &str, this: Value) -> Result<bool, String> {
        compile(rule).expect("the rule compiles").holds(&this)
    }

    #[test]
    fn the_rules_of_the_cluster_network_policy_crd() {
        let cases = [
            ("self.start < self.end", json!({"start": 1, "end": 2}), true),
            (
                "self.start < self.end",
                json!({"start": 2, "end": 2}),
                false,
            ),
            ("isCIDR(self)", json!("10.0.0.0/8"), true),
            ("isCIDR(self)", json!("fd00::/8"), true),
            ("isCIDR(self)", json!("10.0.0.0/33"), false),
            ("isCIDR(self)", json!("10.0.0.0"), false),
            ("isCIDR(self)", json!("not a cidr"), false),
            (
                NAMED_PORTS,
                json!({"to": [{"pods": {}}], "protocols": [{"destinationNamedPort": "http"}]}),
                true,
            ),
            (
                NAMED_PORTS,
                json!({"to": [{"pods": {}}, {"networks": ["10.0.0.0/8"]}], "protocols": [{"tcp": {}}, {"destinationNamedPort": "http"}]}),
                false,
            ),
            (NAMED_PORTS, json!({"to": [{"nodes": {}}]}), true),
        ];
        for (rule, this, want) in cases {
            assert_eq!(holds(rule, this.clone()), Ok(want), "{rule} on {this}");
        }
    }

    #[test]
    fn operators_literals_and_macros() {
        let this = json!({"a": 3, "s": "b", "l": [1, 2, 3], "m": {"k": true}});
        let cases = [
            ("self.a == 3 && self.s != 'a'", true),
            ("self.a >= 3 && self.a <= 3 && !(self.a > 3)", true),
            ("-self.a < 0 || false", true),
            ("self.l.all(x, x > 0) && self.l.exists(x, x == 2)", true),
            ("self.l.exists(x, x > 5)", false),
            ("self.m.exists(k, k == \"k\") && self.m['k']", true),
            (
                "size(self.l) == 3 && self.s.size() == 1 && self.l[0] == 1",
                true,
            ),
            ("has(self.missing) || self.s == null", false),
            ("(true)", true),
        ];
        for (rule, want) in cases {
            assert_eq!(holds(rule, this.clone()), Ok(want), "{rule}");
        }
    }

    #[test]
    fn errors_are_absorbed_only_where_cel_absorbs_them() {
        let this = json!({"a": 1});
        assert_eq!(holds("self.missing == 1 || true", this.clone()), Ok(true));
        assert_eq!(holds("false && self.missing == 1", this.clone()), Ok(false));
        let err = holds("self.missing == 1 || false", this.clone()).unwrap_err();
        assert!(err.contains("no such key: missing"), "{err}");
        let err = holds("self.a < 'x'", this.clone()).unwrap_err();
        assert!(err.contains("no such overload"), "{err}");
        let err = holds("self.a", this).unwrap_err();
        assert!(err.contains("instead of a bool"), "{err}");
    }

    #[test]
    fn rules_outside_the_subset_do_not_compile() {
        for (rule, why) in [
            ("self.a <", "unexpected end"),
            ("self.a = 1", "unexpected"),
            ("isIP(self)", "unknown function"),
            ("self.l.map(x, x)", "unknown function"),
            ("other.a == 1", "undeclared reference to 'other'"),
            ("self.l.exists(x, y > 1)", "undeclared reference to 'y'"),
            ("has(self)", "has() takes a field selection"),
            ("self.l.exists(1, true)", "a variable name"),
            ("'unterminated", "unterminated string"),
            ("self.a ? 1 : 2", "unexpected"),
            ("99999999999999999999 == 1", "integer"),
            (&"(".repeat(500), "nested too deeply"),
        ] {
            let err = compile(rule).unwrap_err();
            assert!(err.contains(why), "{rule}: {err}");
        }
    }
}
