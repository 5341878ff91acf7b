//! JSON as `google.protobuf.Value`, the schema's type for free-form JSON (job input, results,
//! tool arguments).
//!
//! Protobuf numbers are doubles, so a JSON value survives the round trip exactly when its
//! numbers do: integers up to 2^53 and every double. Integral doubles come back as JSON
//! integers, so `{"count": 5}` stays an integer for agents and JSON clients.

use prost_types::{value::Kind, ListValue, Struct, Value};

use crate::{error::ArcpError, protocol::Json};

/// The deepest nesting of arrays and objects accepted in free-form JSON from a client (a job's
/// input). Protobuf decoders, this runtime's and its clients', refuse messages nested more
/// than 100 deep, and every JSON level is at least two protobuf messages (the `Value` and its
/// list or struct): a job result of 33 nested objects no longer decodes, so a deeper input
/// would be accepted, echoed, then logged in a frame no reader can decode. 24 leaves room for
/// an agent that wraps what it got in a few levels more.
pub const MAX_JSON_DEPTH: usize = 24;

/// `INVALID_REQUEST` naming `what` if `json` nests arrays and objects deeper than
/// [`MAX_JSON_DEPTH`].
pub fn check_depth(json: &Json, what: &str) -> Result<(), ArcpError> {
    // Depth-first with an explicit stack: the check must not itself recurse on client data.
    let mut stack = vec![(json, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Json>> = match value {
            Json::Array(items) => Box::new(items.iter()),
            Json::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        if depth == MAX_JSON_DEPTH {
            return Err(ArcpError::InvalidRequest(format!(
                "{what} nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"
            )));
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    Ok(())
}

/// `google.protobuf.Value` as JSON.
pub fn to_json(value: Value) -> Json {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::NumberValue(n)) => number_to_json(n),
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::ListValue(list)) => Json::Array(list.values.into_iter().map(to_json).collect()),
        Some(Kind::StructValue(s)) => Json::Object(struct_to_json(s)),
    }
}

/// A `google.protobuf.Struct` as a JSON object.
pub fn struct_to_json(s: Struct) -> serde_json::Map<String, Json> {
    s.fields.into_iter().map(|(k, v)| (k, to_json(v))).collect()
}

/// Integral doubles within 2^53 become JSON integers; the rest stay doubles.
fn number_to_json(n: f64) -> Json {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() <= EXACT {
        if n >= 0.0 {
            return Json::from(n as u64);
        }
        return Json::from(n as i64);
    }
    serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)
}

/// JSON as `google.protobuf.Value`.
pub fn to_value(json: &Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(to_value).collect(),
        }),
        Json::Object(map) => Kind::StructValue(to_struct(map)),
    };
    Value { kind: Some(kind) }
}

/// A JSON object as `google.protobuf.Struct`.
pub fn to_struct(map: &serde_json::Map<String, Json>) -> Struct {
    Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nested(depth: usize) -> Json {
        (0..depth).fold(json!(1), |inner, i| {
            if i % 2 == 0 {
                json!([inner])
            } else {
                json!({ "k": inner })
            }
        })
    }

    #[test]
    fn depth_is_bounded_where_protobuf_can_still_carry_the_value() {
        use prost::Message;
        assert_eq!(check_depth(&json!(1), "input"), Ok(()));
        assert_eq!(check_depth(&nested(MAX_JSON_DEPTH), "input"), Ok(()));
        let refused = check_depth(&nested(MAX_JSON_DEPTH + 1), "input").unwrap_err();
        assert!(refused.message().contains("input"), "{refused}");
        // A job result of objects nested to the bound, and a few levels more, still decodes.
        let objects = (0..MAX_JSON_DEPTH + 8).fold(json!(1), |inner, _| json!({ "k": inner }));
        let frame = crate::proto::ServerFrame {
            payload: Some(crate::proto::server_frame::Payload::JobResult(Box::new(
                crate::proto::JobResult {
                    result: Some(to_value(&objects)),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        };
        assert!(crate::proto::ServerFrame::decode(frame.encode_to_vec().as_slice()).is_ok());
    }

    #[test]
    fn json_survives_the_round_trip_through_protobuf_values() {
        let original = json!({"count": 5, "ratio": 0.5, "neg": -3, "list": [true, null, "x"], "nested": {"a": {}}});
        assert_eq!(to_json(to_value(&original)), original);
    }
}
