//! What HTTP ingress refuses before it writes anything, against the real daemon: every payload
//! rule of SPEC §6.1 as a 400 (or 409) problem with its `code`, routing and size as 404, 405
//! and 413 (the connector lookup before the body size), and no 5xx for any malformed request
//! at all (SPEC §15) — bad framing, hostile headers, bodies hostile to a JSON parser — after
//! which the daemon still serves and stops cleanly.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::json;

use crate::support::http::{self, exchange, NO_HEADERS};
use crate::support::ingress::{
    assert_accepted, check_refusals, header_value, post_signed, replaced, signed_headers,
    start_gateway, written, Headers, Refusal, MIB, OPEN, ORDERS,
};
use crate::support::problem::{assert_problem, assert_problem_detail};

#[test]
fn payload_problems_get_400_problems_and_write_nothing() {
    let (_sandbox, daemon) = start_gateway();
    // One accepted event, so that a replay with another body can be refused.
    let accepted_body = br#"{"content":"first","idempotency_key":"taken"}"#;
    let original = assert_accepted(&post_signed(&daemon, ORDERS, accepted_body), "http/orders");
    let before = written(&daemon);

    let signed = |what, body: &[u8], status, code, names| Refusal {
        what,
        resp: post_signed(&daemon, ORDERS, body),
        status,
        code,
        names,
    };
    let open = |what, body: &[u8], names| Refusal {
        what,
        resp: daemon.post_json(OPEN, body),
        status: 400,
        code: "unauthenticated_member_not_allowed",
        names,
    };
    let refusals = vec![
        signed(
            "invalid JSON",
            br#"{"content":"x","idempotency_key":"#,
            400,
            "invalid_json",
            "JSON",
        ),
        signed("empty body", b"", 400, "invalid_json", "JSON"),
        signed(
            "JSON that is not an object",
            br#"["content","x"]"#,
            400,
            "invalid_payload",
            "$",
        ),
        signed("a JSON string", br#""content""#, 400, "invalid_payload", "$"),
        signed("JSON null", b"null", 400, "invalid_payload", "$"),
        signed(
            "content is a number",
            br#"{"content":5,"idempotency_key":"t1"}"#,
            400,
            "invalid_payload",
            "$.content",
        ),
        signed(
            "idempotency_key is a number",
            br#"{"content":"x","idempotency_key":42}"#,
            400,
            "invalid_payload",
            "$.idempotency_key",
        ),
        signed(
            "binding_keys is a string",
            br#"{"content":"x","idempotency_key":"t2","binding_keys":"k"}"#,
            400,
            "invalid_payload",
            "$.binding_keys",
        ),
        signed(
            "a binding key is empty",
            br#"{"content":"x","idempotency_key":"t3","binding_keys":["ok"," "]}"#,
            400,
            "invalid_payload",
            "$.binding_keys[1]",
        ),
        signed(
            "input_items is an object",
            br#"{"input_items":{"type":"text"},"idempotency_key":"t4"}"#,
            400,
            "invalid_payload",
            "$.input_items",
        ),
        signed(
            "unknown member",
            br#"{"content":"x","idempotency_key":"t5","priority":1}"#,
            400,
            "unknown_member",
            "priority",
        ),
        signed(
            "bad UTF-8 (0xff) inside a JSON string",
            b"{\"content\":\"caf\xff\",\"idempotency_key\":\"t6\"}",
            400,
            "invalid_json",
            "JSON",
        ),
        signed(
            "bad UTF-8 (lone continuation byte) inside a JSON string",
            b"{\"content\":\"x\",\"idempotency_key\":\"t7\x80\"}",
            400,
            "invalid_json",
            "JSON",
        ),
        signed(
            "missing idempotency key",
            br#"{"content":"x"}"#,
            400,
            "idempotency_key_required",
            "idempotency_key",
        ),
        signed(
            "blank idempotency key",
            br#"{"content":"x","idempotency_key":"  "}"#,
            400,
            "idempotency_key_required",
            "idempotency_key",
        ),
        signed(
            "no content",
            br#"{"idempotency_key":"t8"}"#,
            400,
            "missing_content",
            "content",
        ),
        signed(
            "metadata sets connector_ingress_key",
            br#"{"content":"x","idempotency_key":"t9","metadata":{"connector_ingress_key":"http:orders:0"}}"#,
            400,
            "reserved_metadata_key",
            "connector_ingress_key",
        ),
        signed(
            "metadata sets http_ingress_fingerprint",
            br#"{"content":"x","idempotency_key":"t10","metadata":{"http_ingress_fingerprint":"00"}}"#,
            400,
            "reserved_metadata_key",
            "http_ingress_fingerprint",
        ),
        signed(
            "replayed idempotency key with a different body",
            br#"{"content":"second","idempotency_key":"taken"}"#,
            409,
            "idempotency_conflict",
            "taken",
        ),
        open(
            "unauthenticated session_id",
            br#"{"content":"x","idempotency_key":"u1","session_id":"s-1"}"#,
            "session_id",
        ),
        open(
            "unauthenticated binding_keys",
            br#"{"content":"x","idempotency_key":"u2","binding_keys":["k"]}"#,
            "binding_keys",
        ),
        open(
            "unauthenticated reply_targets",
            br#"{"content":"x","idempotency_key":"u3","reply_targets":[{"plugin":"http","address":"https://example.com/hook"}]}"#,
            "reply_targets",
        ),
        open(
            "unauthenticated reply_plugin + reply_address",
            br#"{"content":"x","idempotency_key":"u5","reply_plugin":"http","reply_address":"https://example.com/hook"}"#,
            "reply_plugin",
        ),
        open(
            "unauthenticated asset input item",
            br#"{"input_items":[{"type":"inline_asset","media_type":"text/plain","data_base64":"aGk="}],"idempotency_key":"u6"}"#,
            "input_items[0]",
        ),
        open(
            "unauthenticated attachments",
            br#"{"content":"x","idempotency_key":"u4","attachments":[{"type":"inline_asset","media_type":"text/plain","data_base64":"aGk="}]}"#,
            "attachments",
        ),
    ];
    // `names` of the conflict is checked against the original run id instead.
    let (conflict, rest): (Vec<&Refusal>, Vec<&Refusal>) = refusals
        .iter()
        .partition(|r| r.code == "idempotency_conflict");
    for r in rest {
        check_refusals(std::slice::from_ref(r));
    }
    let conflict = assert_problem(&conflict[0].resp, 409, "idempotency_conflict");
    assert_eq!(conflict["run_id"], original.0.as_str(), "{conflict}");

    assert_eq!(
        written(&daemon),
        before,
        "a refused request wrote something"
    );
    // Still serving: a valid event on each connector is accepted.
    assert_accepted(
        &post_signed(
            &daemon,
            ORDERS,
            br#"{"content":"fine","idempotency_key":"after-bad-input"}"#,
        ),
        "http/orders",
    );
    assert_accepted(
        &daemon.post_json(
            OPEN,
            br#"{"content":"fine","idempotency_key":"after-bad-input"}"#,
        ),
        "http/open",
    );
}

#[test]
fn routing_and_size_problems_get_404_405_413_and_write_nothing() {
    let (_sandbox, daemon) = start_gateway();
    let before = written(&daemon);
    let addr = daemon.addr;

    // Over 1 MiB, with Content-Length and with chunked encoding, signed or not.
    let mut big = br#"{"content":"x","idempotency_key":"big","metadata":{"pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', MIB));
    big.extend_from_slice(br#""}}"#);
    let signed_big = signed_headers(ORDERS, &big);
    let oversize = [
        (
            "Content-Length, signed",
            http::request_bytes(addr, "POST", ORDERS, &signed_big, &big),
        ),
        (
            "Content-Length, unauthenticated connector",
            http::request_bytes(addr, "POST", OPEN, NO_HEADERS, &big),
        ),
        (
            "chunked, signed headers",
            http::chunked_request_bytes(addr, ORDERS, &signed_big, MIB + 1),
        ),
        (
            "chunked, unauthenticated connector",
            http::chunked_request_bytes(addr, OPEN, NO_HEADERS, MIB + 1),
        ),
    ];
    for (what, request) in oversize {
        let resp =
            exchange(addr, &request, false).unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        let v = assert_problem(&resp, 413, "payload_too_large");
        assert!(
            v["detail"].as_str().unwrap().contains("1048576"),
            "{what}: {v}"
        );
    }
    // Each counts as a refusal of its connector in /metrics (SPEC §13).
    let metrics = daemon.admin("GET", "/metrics", None).text();
    for connector in ["http/orders", "http/open"] {
        let series = format!(
            r#"kheish_ingress_requests_total{{connector="{connector}",outcome="rejected"}}"#
        );
        assert_eq!(
            crate::support::metric_sample(&metrics, &series),
            Some(2.0),
            "{series}"
        );
    }
    // Exactly 1 MiB is not too large (it is refused later, for its JSON).
    let at_limit = vec![b' '; MIB];
    assert_problem(&daemon.post_json(OPEN, &at_limit), 400, "invalid_json");

    let body = br#"{"content":"x","idempotency_key":"r1"}"#;
    let unknown = post_signed(&daemon, "/v1/connectors/http/nope", body);
    assert_problem_detail(&unknown, 404, "connector_not_found", "nope");

    for method in ["GET", "PUT", "DELETE"] {
        let resp = daemon.request(method, ORDERS, &[], b"");
        assert_problem(&resp, 405, "method_not_allowed");
        assert_eq!(resp.header("allow"), Some("POST"), "{method}");
    }

    for path in [
        "/v1/connectors/http",
        "/v1/connectors/http/",
        "/v1/connectors/http/orders/extra",
        "/v1/connectors/carrier-pigeon/orders",
        "/nothing-here",
    ] {
        assert_problem(&post_signed(&daemon, path, body), 404, "not_found");
    }

    assert_eq!(
        written(&daemon),
        before,
        "a refused request wrote something"
    );
    assert_accepted(&post_signed(&daemon, ORDERS, body), "http/orders");
}

#[test]
fn an_unknown_connector_is_404_before_the_body_size_is_checked() {
    // SPEC §6.1: route and connector lookup (404) come before the body size (413).
    let (_sandbox, daemon) = start_gateway();
    let addr = daemon.addr;
    let big = vec![b' '; MIB + 1];
    let resp = http::send(
        addr,
        &http::request_bytes(addr, "POST", "/v1/connectors/http/nope", NO_HEADERS, &big),
    );
    assert_problem(&resp, 404, "connector_not_found");
}

/// Malformed requests of every kind; see [`no_input_yields_a_5xx`].
fn malformed_requests(addr: SocketAddr) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut raw = |what: &str, bytes: &[u8]| out.push((what.to_string(), bytes.to_vec()));
    raw("garbage line", b"GARBAGE\r\n\r\n");
    raw("empty lines", b"\r\n\r\n\r\n");
    raw("method only", b"GET\r\n\r\n");
    raw("no version", b"GET /healthz\r\n\r\n");
    raw("HTTP/9.9", b"GET /healthz HTTP/9.9\r\n\r\n");
    raw(
        "binary request line",
        b"\xff\xfe\xfd \x00\x01 HTTP/1.1\r\n\r\n",
    );
    raw("bare LF", b"GET /healthz HTTP/1.1\nHost: x\n\n");
    raw("HTTP/1.0 without Host", b"GET /healthz HTTP/1.0\r\n\r\n");
    raw("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    raw(
        "absolute-form target",
        b"POST http://example.com/v1/connectors/http/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "HEAD on ingress",
        b"HEAD /v1/connectors/http/orders HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    raw(
        "lowercase method",
        b"post /v1/connectors/http/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "header line without a colon",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nthis is not a header\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "header name with a space",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nBad Name: v\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "non-UTF-8 header value",
        b"POST /v1/connectors/http/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "Content-Length not a number",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    );
    raw(
        "negative Content-Length",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
    );
    raw(
        "overflowing Content-Length",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999999999999999\r\n\r\n{}",
    );
    raw(
        "two different Content-Lengths",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
    );
    raw(
        "Content-Length longer than the body",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}",
    );
    raw(
        "bad chunk size",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    );
    raw(
        "unknown transfer encoding",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}",
    );
    raw(
        "chunked and Content-Length",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    );
    raw(
        "malformed percent-escape in the path",
        b"POST /v1/connectors/http/or%zzders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "NUL and non-UTF-8 escapes in the path",
        b"POST /v1/connectors/http/%00%ff HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "malformed query",
        b"POST /v1/connectors/http/open?%zz=%G1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "dot segments",
        b"GET /v1/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    raw(
        "two pipelined requests",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let long_path = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a/".repeat(8 * 1024));
    raw("16 KiB path", long_path.as_bytes());
    let long_header = format!(
        "POST /v1/connectors/http/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "t".repeat(64 * 1024)
    );
    raw("64 KiB Authorization header", long_header.as_bytes());
    let many_headers = format!(
        "POST /v1/connectors/http/orders HTTP/1.1\r\nHost: x\r\n{}Content-Length: 2\r\n\r\n{{}}",
        "X-Kheish-Timestamp: 1\r\n".repeat(500)
    );
    raw("500 timestamp headers", many_headers.as_bytes());

    // Well-framed requests to the authenticated connector with odd headers.
    let body = br#"{"content":"x","idempotency_key":"fuzz-headers"}"#;
    let good = signed_headers(ORDERS, body);
    let sig = header_value(&good, "X-Kheish-Signature").to_string();
    let odd_headers: Vec<(&str, Headers)> = vec![
        ("empty bearer", replaced(&good, "Authorization", "Bearer ")),
        ("scheme only", replaced(&good, "Authorization", "Bearer")),
        (
            "non-ASCII bearer",
            replaced(&good, "Authorization", "Bearer tökén"),
        ),
        (
            "huge timestamp",
            replaced(&good, "X-Kheish-Timestamp", "99999999999999999999999"),
        ),
        (
            "i64::MAX timestamp",
            replaced(&good, "X-Kheish-Timestamp", &i64::MAX.to_string()),
        ),
        (
            "fractional timestamp",
            replaced(&good, "X-Kheish-Timestamp", "1710000000.5"),
        ),
        ("empty signature", replaced(&good, "X-Kheish-Signature", "")),
        (
            "non-hex signature",
            replaced(
                &good,
                "X-Kheish-Signature",
                &format!("v1={}", "g".repeat(64)),
            ),
        ),
        (
            "multi-byte signature",
            replaced(
                &good,
                "X-Kheish-Signature",
                &format!("v1={}", "é".repeat(32)),
            ),
        ),
        (
            "v0 signature",
            replaced(&good, "X-Kheish-Signature", &sig.replace("v1=", "v0=")),
        ),
        (
            "signature list",
            replaced(&good, "X-Kheish-Signature", &format!("{sig}, {sig}")),
        ),
    ];
    for (what, headers) in odd_headers {
        out.push((
            what.to_string(),
            http::request_bytes(addr, "POST", ORDERS, &headers, body),
        ));
    }

    // Correctly signed bodies that are hostile to a JSON parser or to the payload rules.
    let deep_arrays = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_metadata = format!(
        r#"{{"content":"x","idempotency_key":"deep","metadata":{}1{}}}"#,
        r#"{"a":"#.repeat(5_000),
        "}".repeat(5_000)
    );
    let many_items = json!({
        "idempotency_key": "items",
        "input_items": vec![json!({"type": "text", "text": "t"}); 65],
    })
    .to_string();
    let many_attachments = json!({
        "idempotency_key": "attachments",
        "content": "x",
        "attachments": vec![json!({"type": "inline_asset", "media_type": "text/plain", "data_base64": "aGk="}); 11],
    })
    .to_string();
    let many_keys = json!({
        "idempotency_key": "keys",
        "content": "x",
        "binding_keys": (0..65).map(|i| format!("k{i}")).collect::<Vec<_>>(),
    })
    .to_string();
    let long_key = json!({"idempotency_key": "k".repeat(600), "content": "x"}).to_string();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("100 000 nested arrays", deep_arrays.into_bytes()),
        ("5 000 nested metadata objects", deep_metadata.into_bytes()),
        ("number out of range", br#"{"content":"x","idempotency_key":"n","metadata":{"n":1e400}}"#.to_vec()),
        ("lone surrogate escape", br#"{"content":"\ud800","idempotency_key":"s"}"#.to_vec()),
        ("raw control character", b"{\"content\":\"a\x00b\",\"idempotency_key\":\"c\"}".to_vec()),
        ("trailing garbage", br#"{"content":"x","idempotency_key":"g"} trailing"#.to_vec()),
        ("UTF-8 BOM", b"\xef\xbb\xbf{\"content\":\"x\",\"idempotency_key\":\"bom\"}".to_vec()),
        ("65 input items", many_items.into_bytes()),
        ("11 attachments", many_attachments.into_bytes()),
        ("65 binding keys", many_keys.into_bytes()),
        ("600-byte idempotency key", long_key.into_bytes()),
        ("mixed content shapes", br#"{"content":"x","input_items":[{"type":"text","text":"t"}],"idempotency_key":"m"}"#.to_vec()),
        ("unknown input item type", br#"{"input_items":[{"type":"video"}],"idempotency_key":"v"}"#.to_vec()),
        ("invalid base64 asset", br#"{"input_items":[{"type":"inline_asset","media_type":"text/plain","data_base64":"@@@"}],"idempotency_key":"b64"}"#.to_vec()),
        ("unknown asset reference", br#"{"input_items":[{"type":"asset_reference","asset_id":"asset_nope"}],"idempotency_key":"ref"}"#.to_vec()),
        ("reply override not allowed", br#"{"content":"x","idempotency_key":"reply","reply_plugin":"http","reply_address":"http://169.254.169.254/"}"#.to_vec()),
        ("null members", br#"{"content":null,"idempotency_key":null,"session_id":null}"#.to_vec()),
        ("empty object", b"{}".to_vec()),
    ];
    for (what, body) in bodies {
        let headers = signed_headers(ORDERS, &body);
        out.push((
            what.to_string(),
            http::request_bytes(addr, "POST", ORDERS, &headers, &body),
        ));
    }
    out
}

#[test]
fn no_input_yields_a_5xx() {
    let (_sandbox, daemon) = start_gateway();
    let addr = daemon.addr;
    let requests = malformed_requests(addr);
    assert!(requests.len() >= 40, "only {} requests", requests.len());
    let mut statuses: BTreeMap<String, String> = BTreeMap::new();
    for (what, bytes) in &requests {
        let outcome = match exchange(addr, bytes, true) {
            Ok(resp) => {
                assert!(
                    resp.status < 500,
                    "{what}: got {} {}",
                    resp.status,
                    resp.text()
                );
                resp.status.to_string()
            }
            // A closed connection is an acceptable answer to garbage.
            Err(_) => "closed".to_string(),
        };
        statuses.insert(what.clone(), outcome);
    }
    // Still alive and serving, and nothing panicked on the way.
    let health = daemon.request("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200, "after {statuses:?}");
    assert_accepted(
        &post_signed(
            &daemon,
            ORDERS,
            br#"{"content":"still here","idempotency_key":"after-fuzz"}"#,
        ),
        "http/orders",
    );
    // A clean stop, and nothing panicked or answered 5xx on the way.
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains(" 500 "), "{stderr}");
    assert!(!stderr.contains(" 503 "), "{stderr}");
}
