//! Payload fingerprints (SPEC §6.4): lowercase hex SHA-256 of the canonical JSON of the parsed
//! payload — object members sorted by key at every depth, null members removed, no whitespace,
//! numbers and strings as serde_json writes them. Whitespace and member order never change it.

use serde_json::Value;

/// Canonical JSON text of `value`.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

/// The fingerprint of `value`.
pub fn fingerprint(value: &Value) -> String {
    super::sha256_hex(canonical_json(value).as_bytes())
}

/// The fingerprint of the object `members` without the top-level members named in `skip`
/// (external events leave out `instance_id` and `protocol_version`), computed without
/// copying the object.
pub fn fingerprint_without(members: &serde_json::Map<String, Value>, skip: &[&str]) -> String {
    let mut out = String::new();
    write_object(
        members.iter().filter(|(k, _)| !skip.contains(&k.as_str())),
        &mut out,
    );
    super::sha256_hex(out.as_bytes())
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => write_object(map.iter(), out),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// An object's members in canonical form: sorted by key (explicitly: serde_json's map order
/// depends on a cargo feature), `null` members left out.
fn write_object<'v>(members: impl Iterator<Item = (&'v String, &'v Value)>, out: &mut String) {
    let mut members: Vec<(&String, &Value)> = members.filter(|(_, v)| !v.is_null()).collect();
    members.sort_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(k.clone()).to_string());
        out.push(':');
        write_canonical(v, out);
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(a: &str, b: &str, same: bool) {
        let fa = fingerprint(&serde_json::from_str(a).unwrap());
        let fb = fingerprint(&serde_json::from_str(b).unwrap());
        assert_eq!(fa == fb, same, "{a} vs {b}");
    }

    #[test]
    fn canonical_form() {
        let v: Value = serde_json::from_str(
            r#"{ "b": 1, "a": {"d": null, "c": [1, {"z": 2, "y": null}]}, "e": "x\n" }"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":[1,{"z":2}]},"b":1,"e":"x\n"}"#
        );
    }

    #[test]
    fn skipped_members_are_as_if_absent() {
        let full: Value = serde_json::from_str(r#"{"b":1,"skip":2,"a":{"skip":3}}"#).unwrap();
        let without: Value = serde_json::from_str(r#"{"a":{"skip":3},"b":1}"#).unwrap();
        assert_eq!(
            fingerprint_without(full.as_object().unwrap(), &["skip"]),
            fingerprint(&without)
        );
    }

    #[test]
    fn order_whitespace_and_nulls_do_not_matter() {
        check(r#"{"a":1,"b":2}"#, "{ \"b\" : 2,\n \"a\" : 1 }", true);
        check(r#"{"a":1,"b":null}"#, r#"{"a":1}"#, true);
        check(r#"{"a":1}"#, r#"{"a":2}"#, false);
        check(r#"{"a":[1,2]}"#, r#"{"a":[2,1]}"#, false);
        check(r#"{"a":[null]}"#, r#"{"a":[]}"#, false);
    }
}
