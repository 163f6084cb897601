//! Property tests of request inspection (the fuzz target `inspect` runs the same checks on
//! arbitrary bytes for longer).

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};
use weir::inspect::inspect;

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z \\\\\"é😀{}]{0,12}".prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn any_bytes_are_refused_or_passed_on(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let body = Bytes::from(bytes);
        if let Ok(i) = inspect(body.clone(), true) {
            if !i.strip_usage {
                prop_assert_eq!(i.body, body);
            }
        }
    }

    #[test]
    fn injection_keeps_every_field_and_asks_for_usage(
        extra in proptest::collection::btree_map("[a-z_]{1,8}", value(), 0..6),
        options in proptest::option::of(proptest::collection::btree_map("[a-z_]{1,8}", value(), 0..3)),
        pretty in any::<bool>(),
    ) {
        let mut obj = serde_json::Map::new();
        obj.insert("model".into(), json!("m"));
        obj.insert("stream".into(), json!(true));
        for (k, v) in extra {
            if !matches!(k.as_str(), "model" | "stream" | "stream_options" | "max_tokens" | "max_completion_tokens" | "n") {
                obj.insert(k, v);
            }
        }
        if let Some(o) = options {
            let mut o: serde_json::Map<String, Value> = o.into_iter().collect();
            o.remove("include_usage");
            o.remove("continuous_usage_stats");
            obj.insert("stream_options".into(), Value::Object(o));
        }
        let original = Value::Object(obj);
        let text = if pretty { serde_json::to_string_pretty(&original) } else { serde_json::to_string(&original) }.unwrap();
        let i = inspect(Bytes::from(text), true).unwrap();
        prop_assert!(i.strip_usage);
        let got: Value = serde_json::from_slice(&i.body).unwrap();
        prop_assert_eq!(&got["stream_options"]["include_usage"], &json!(true));
        for (k, v) in original.as_object().unwrap() {
            if k != "stream_options" {
                prop_assert_eq!(&got[k], v, "field {}", k);
            }
        }
    }
}
