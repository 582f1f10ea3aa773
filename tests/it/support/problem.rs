//! The one assertion for the daemon's RFC 9457 errors (SPEC §6.1): the status, the
//! `application/problem+json` content type, the `code`, and the shape every problem has
//! (`type`, `title`, `status`, `detail`). It returns the parsed body so a test can go on to
//! check the members a particular problem adds (`run_id`, `parameter`, `retry_after_ms`, …).

#![allow(dead_code)]

use serde_json::Value;

use super::http::Response;

/// Asserts that `resp` is a problem with `status` and `code`; returns the body.
pub fn assert_problem(resp: &Response, status: u16, code: &str) -> Value {
    assert_eq!(
        resp.status,
        status,
        "expected {status} {code}: got {} {}",
        resp.status,
        resp.text()
    );
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json"),
        "{}",
        resp.text()
    );
    let v = resp.json();
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert!(v["title"].is_string() && v["type"].is_string(), "{v}");
    assert!(v["detail"].is_string(), "{v}");
    v
}

/// [`assert_problem`], and `detail` contains `needle`.
pub fn assert_problem_detail(resp: &Response, status: u16, code: &str, needle: &str) -> Value {
    let v = assert_problem(resp, status, code);
    let detail = v["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(needle),
        "the detail of {status} {code} should contain {needle:?}: {v}"
    );
    v
}
