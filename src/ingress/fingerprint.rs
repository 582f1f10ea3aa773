//! Payload fingerprints (SPEC §6.4): lowercase hex SHA-256 of the canonical JSON of the parsed
//! payload — object members sorted by key at every depth, null members removed, no whitespace,
//! numbers and strings as serde_json writes them. Whitespace and member order never change it.

use serde_json::Value;

/// Canonical JSON text of `value`.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// The fingerprint of `value`.
pub fn fingerprint(value: &Value) -> String {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    super::sha256_hex(&out)
}

/// The fingerprint of the object `members` without the top-level members named in `skip`
/// (external events leave out `instance_id` and `protocol_version`), computed without
/// copying the object.
pub fn fingerprint_without(members: &serde_json::Map<String, Value>, skip: &[&str]) -> String {
    let mut out = Vec::with_capacity(256);
    write_object(
        || members.iter().filter(|(k, _)| !skip.contains(&k.as_str())),
        &mut out,
    );
    super::sha256_hex(&out)
}

/// Strings and numbers exactly as serde_json writes them (its escaping, its number format),
/// straight into `out`.
fn write_scalar(value: &impl serde::Serialize, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, value).expect("writing JSON into memory cannot fail");
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => write_object(|| map.iter(), out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

/// An object's members in canonical form: sorted by key, `null` members left out. serde_json's
/// map iterates in key order unless a cargo feature (`preserve_order`) makes it keep the
/// document's order, so the members are written as they come when they come sorted, and
/// sorted first otherwise.
fn write_object<'v, I>(members: impl Fn() -> I, out: &mut Vec<u8>)
where
    I: Iterator<Item = (&'v String, &'v Value)>,
{
    let sorted = members()
        .zip(members().skip(1))
        .all(|((a, _), (b, _))| a < b);
    if sorted {
        write_members(members(), out);
    } else {
        let mut list: Vec<(&String, &Value)> = members().collect();
        list.sort_by(|a, b| a.0.cmp(b.0));
        write_members(list.into_iter(), out);
    }
}

fn write_members<'v>(members: impl Iterator<Item = (&'v String, &'v Value)>, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut first = true;
    for (k, v) in members.filter(|(_, v)| !v.is_null()) {
        if !first {
            out.push(b',');
        }
        first = false;
        write_scalar(k, out);
        out.push(b':');
        write_canonical(v, out);
    }
    out.push(b'}');
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
    fn a_fingerprint_is_pinned() {
        // Stored receipts keep their fingerprints across upgrades: this value must never change
        // (computed independently: sorted keys, nulls removed, compact, UTF-8 unescaped).
        let v: Value = serde_json::from_str(
            r#"{"z": {"b": [1, 2, {"y": null, "x": "\u00e9\"\n"}], "a": null}, "a": "text", "n": -12, "f": 1.5, "t": true}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&v),
            "{\"a\":\"text\",\"f\":1.5,\"n\":-12,\"t\":true,\"z\":{\"b\":[1,2,{\"x\":\"\u{e9}\\\"\\n\"}]}}"
        );
        assert_eq!(
            fingerprint(&v),
            "563365031e18dccd0b067d920f5aa8aeb2325c5ad14863867816e7e9a0bc1efd"
        );
    }

    #[test]
    fn members_given_out_of_order_are_sorted() {
        // The map type may keep document order (serde_json's `preserve_order`): the members
        // are then sorted here, as an unsorted member list shows.
        let a = Value::from(1);
        let b = Value::from("x\"y");
        let key_a = "a".to_string();
        let key_b = "b".to_string();
        let mut out = Vec::new();
        write_object(|| [(&key_b, &b), (&key_a, &a)].into_iter(), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":1,"b":"x\"y"}"#);
    }

    #[test]
    fn strings_and_numbers_are_written_as_serde_json_writes_them() {
        let v: Value = serde_json::from_str(
            r#"{"s":"tab\t \u00e9 \u2028 \ud83d\ude00 \u0001","n":[1.5,-0,1e300,12345678901234567890]}"#,
        )
        .unwrap();
        let mut expected = String::from("{");
        expected.push_str(&format!(r#""n":{},"#, v["n"]));
        expected.push_str(&format!(r#""s":{}"#, v["s"]));
        expected.push('}');
        assert_eq!(canonical_json(&v), expected);
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
