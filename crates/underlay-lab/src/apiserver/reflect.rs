//! The OpenAPI schema of a built-in kind, read off the k8s-openapi type the
//! server decodes it with. A deserializer that parses nothing: it offers every
//! field the type asks for and records what the type asked for (a struct and
//! its field names, a list, a map, a string, an integer, ...). So the schema
//! kubectl validates and explains with is, by construction, the type the
//! server accepts: a field is unknown to kubectl exactly when the server
//! drops it.

use std::cell::RefCell;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

/// A failure to trace a type (a kind of value the tracer cannot offer).
#[derive(Debug)]
pub struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TraceError(msg.to_string())
    }
}

/// The structural OpenAPI v3 schema of `T`, whose `apiVersion` and `kind`
/// fields (if any) must hold `api_version` and `kind`.
pub fn schema<'de, T: Deserialize<'de>>(
    api_version: &'static str,
    kind: &'static str,
) -> Result<Value, TraceError> {
    let stack = RefCell::new(Vec::new());
    let mut out = Value::Null;
    T::deserialize(Tracer {
        out: &mut out,
        stack: &stack,
        field: "",
        resource: (api_version, kind),
    })?;
    Ok(out)
}

/// A value that is not a string, number or bool and not a fixed structure
/// (embedded JSON, a JSON schema's `items`): anything goes.
fn arbitrary() -> Value {
    json!({"x-kubernetes-preserve-unknown-fields": true})
}

/// Shows what a visitor expects, which names the type behind `deserialize_any`.
struct Expecting<'a, V>(&'a V);

impl<'de, V: Visitor<'de>> fmt::Display for Expecting<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }
}

struct Tracer<'a> {
    out: &'a mut Value,
    /// The structs being traced, outermost first; a struct met again inside
    /// itself (a JSON schema's properties) is not descended into.
    stack: &'a RefCell<Vec<&'static str>>,
    /// The field this value belongs to.
    field: &'static str,
    /// The apiVersion and kind the top-level type insists on.
    resource: (&'static str, &'static str),
}

impl<'a> Tracer<'a> {
    fn child<'b>(&'b self, out: &'b mut Value, field: &'static str) -> Tracer<'b> {
        Tracer {
            out,
            stack: self.stack,
            field,
            resource: self.resource,
        }
    }

    fn sample_string(&self) -> &'static str {
        match self.field {
            "apiVersion" => self.resource.0,
            "kind" => self.resource.1,
            _ => "",
        }
    }
}

macro_rules! integer {
    ($($method:ident: $ty:ty => $visit:ident, $format:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
            *self.out = json!({"type": "integer", "format": $format});
            visitor.$visit(<$ty>::default())
        }
    )*};
}

impl<'de> Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    integer! {
        deserialize_i8: i8 => visit_i8, "int32";
        deserialize_i16: i16 => visit_i16, "int32";
        deserialize_i32: i32 => visit_i32, "int32";
        deserialize_i64: i64 => visit_i64, "int64";
        deserialize_u8: u8 => visit_u8, "int32";
        deserialize_u16: u16 => visit_u16, "int32";
        deserialize_u32: u32 => visit_u32, "int64";
        deserialize_u64: u64 => visit_u64, "int64";
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        match Expecting(&visitor).to_string().as_str() {
            "IntOrString" => {
                *self.out = json!({"x-kubernetes-int-or-string": true});
                visitor.visit_str("0")
            }
            "Quantity" => {
                *self.out = json!({"type": "string"});
                visitor.visit_str("0")
            }
            _ => {
                *self.out = arbitrary();
                visitor.visit_map(Fields::empty())
            }
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.out = json!({"type": "boolean"});
        visitor.visit_bool(false)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.out = json!({"type": "number", "format": "double"});
        visitor.visit_f64(0.0)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        if self.out.get("format").and_then(Value::as_str) == Some("date-time") {
            return visitor.visit_str("1970-01-01T00:00:00Z");
        }
        *self.out = json!({"type": "string"});
        visitor.visit_str(self.sample_string())
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.out = json!({"type": "string", "format": "byte"});
        visitor.visit_bytes(&[])
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        if Expecting(&visitor).to_string() == "a base64-encoded string" {
            *self.out = json!({"type": "string", "format": "byte"});
            return visitor.visit_str("");
        }
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.out = arbitrary();
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        match name {
            "Time" | "MicroTime" => {
                *self.out = json!({"type": "string", "format": "date-time"});
                visitor.visit_newtype_struct(self)
            }
            "FieldsV1" => {
                let mut inner = Value::Null;
                let value = visitor.visit_newtype_struct(self.child(&mut inner, ""))?;
                *self.out = json!({"type": "object"});
                Ok(value)
            }
            _ => visitor.visit_newtype_struct(self),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let mut items = Value::Null;
        let value = visitor.visit_seq(One {
            tracer: Some(self.child(&mut items, "")),
        })?;
        *self.out = json!({"type": "array", "items": items});
        Ok(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let mut values = Value::Null;
        let value = visitor.visit_map(Entries {
            tracer: Some(self.child(&mut values, "")),
            key_given: false,
        })?;
        *self.out = json!({"type": "object", "additionalProperties": values});
        Ok(value)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        if self.stack.borrow().contains(&name) {
            *self.out = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
            return visitor.visit_map(Fields::empty());
        }
        self.stack.borrow_mut().push(name);
        let mut properties = Map::new();
        let value = visitor.visit_map(Fields {
            names: fields,
            next: 0,
            properties: Some(&mut properties),
            tracer: Some(&self),
        });
        self.stack.borrow_mut().pop();
        let value = value?;
        *self.out = json!({"type": "object", "properties": properties});
        Ok(value)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, TraceError> {
        Err(TraceError(format!("cannot trace enum {name}")))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_unit()
    }
}

/// A list of one element.
struct One<'a> {
    tracer: Option<Tracer<'a>>,
}

impl<'de> SeqAccess<'de> for One<'_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        self.tracer.take().map(|t| seed.deserialize(t)).transpose()
    }
}

/// A map of one entry.
struct Entries<'a> {
    tracer: Option<Tracer<'a>>,
    key_given: bool,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        if self.key_given || self.tracer.is_none() {
            return Ok(None);
        }
        self.key_given = true;
        seed.deserialize(de::value::StrDeserializer::<TraceError>::new("key"))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        match self.tracer.take() {
            Some(t) => seed.deserialize(t),
            None => Err(TraceError("a map value was asked for twice".into())),
        }
    }
}

/// A struct's fields, each offered once, each traced into `properties`.
struct Fields<'a, 'b> {
    names: &'static [&'static str],
    next: usize,
    properties: Option<&'a mut Map<String, Value>>,
    tracer: Option<&'a Tracer<'b>>,
}

impl Fields<'_, '_> {
    fn empty() -> Self {
        Fields {
            names: &[],
            next: 0,
            properties: None,
            tracer: None,
        }
    }
}

impl<'de> MapAccess<'de> for Fields<'_, '_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        let Some(name) = self.names.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(de::value::StrDeserializer::<TraceError>::new(name))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        let name = self
            .names
            .get(self.next)
            .ok_or_else(|| TraceError("a value was asked for before its field".into()))?;
        self.next += 1;
        let (Some(properties), Some(tracer)) = (self.properties.as_deref_mut(), self.tracer) else {
            return Err(TraceError(
                "a value was asked for in an empty struct".into(),
            ));
        };
        let slot = properties.entry(name.to_string()).or_insert(Value::Null);
        seed.deserialize(tracer.child(slot, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::Resource;
    use k8s_openapi::api::{apps, core};

    fn of<T: Resource + for<'de> Deserialize<'de>>() -> Value {
        schema::<T>(T::API_VERSION, T::KIND).unwrap()
    }

    #[test]
    fn configmap_fields_and_types() {
        let s = of::<core::v1::ConfigMap>();
        let props = &s["properties"];
        assert_eq!(props["data"]["type"], "object");
        assert_eq!(props["data"]["additionalProperties"]["type"], "string");
        assert_eq!(
            props["binaryData"]["additionalProperties"]["format"],
            "byte"
        );
        assert_eq!(props["immutable"]["type"], "boolean");
        assert_eq!(
            props["metadata"]["properties"]["creationTimestamp"]["format"],
            "date-time"
        );
        assert_eq!(
            props["metadata"]["properties"]["managedFields"]["items"]["properties"]["fieldsV1"]["type"],
            "object"
        );
        assert!(props.get("spec").is_none());
    }

    #[test]
    fn deployment_nests_the_pod_template_and_int_or_string() {
        let s = of::<apps::v1::Deployment>();
        let spec = &s["properties"]["spec"]["properties"];
        assert_eq!(spec["replicas"]["format"], "int32");
        let container =
            &spec["template"]["properties"]["spec"]["properties"]["containers"]["items"];
        assert_eq!(container["properties"]["image"]["type"], "string");
        assert_eq!(
            container["properties"]["ports"]["items"]["properties"]["containerPort"]["type"],
            "integer"
        );
        assert_eq!(
            spec["strategy"]["properties"]["rollingUpdate"]["properties"]["maxSurge"]["x-kubernetes-int-or-string"],
            true
        );
        assert_eq!(
            container["properties"]["resources"]["properties"]["limits"]["additionalProperties"]["type"],
            "string"
        );
    }

    #[test]
    fn recursive_schemas_stop_at_the_second_level() {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
        let s = of::<apiext::CustomResourceDefinition>();
        let props = &s["properties"]["spec"]["properties"]["versions"]["items"]["properties"]["schema"]
            ["properties"]["openAPIV3Schema"];
        assert_eq!(props["properties"]["type"]["type"], "string");
        assert_eq!(
            props["properties"]["properties"]["additionalProperties"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
    }
}
