//! Request signatures: the one implementation of the Kheish v1 HMAC scheme (SPEC §7.2) and of
//! Slack's v0 signing-secret scheme (SPEC §8), used both to SIGN (`kheishctl sign`) and to VERIFY
//! (HTTP and Slack ingress). Keeping signer and verifier in one file is what guarantees that a
//! signature `sign` prints is one ingress accepts.
//!
//! This module is pure: it reads no clock (callers pass `now_unix`), no environment and no
//! config, and it never puts an expected signature or a secret into an error. MACs are compared in
//! constant time through `hmac`'s `verify_slice`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Header carrying the Unix timestamp (seconds) of a Kheish v1 signature.
pub const KHEISH_TIMESTAMP_HEADER: &str = "X-Kheish-Timestamp";
/// Header carrying `v1=<64 hex>`.
pub const KHEISH_SIGNATURE_HEADER: &str = "X-Kheish-Signature";
/// Header carrying the Unix timestamp (seconds) of a Slack request.
pub const SLACK_TIMESTAMP_HEADER: &str = "X-Slack-Request-Timestamp";
/// Header carrying `v0=<64 hex>`.
pub const SLACK_SIGNATURE_HEADER: &str = "X-Slack-Signature";
/// Slack's fixed replay window (SPEC §8): |now − timestamp| ≤ 300 s.
pub const SLACK_MAX_AGE_SECS: u32 = 300;

/// Length in hex digits of an HMAC-SHA256 tag.
const TAG_HEX_LEN: usize = 64;

/// The two signature schemes, for callers (such as `sign`) that pick one at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `X-Kheish-Timestamp` / `X-Kheish-Signature: v1=HMAC(v1:METHOD:PATH_AND_QUERY:TS:BODY)`.
    KheishV1,
    /// `X-Slack-Request-Timestamp` / `X-Slack-Signature: v0=HMAC(v0:TS:BODY)`.
    SlackV0,
}

impl Scheme {
    /// The timestamp header name.
    pub fn timestamp_header(self) -> &'static str {
        match self {
            Scheme::KheishV1 => KHEISH_TIMESTAMP_HEADER,
            Scheme::SlackV0 => SLACK_TIMESTAMP_HEADER,
        }
    }

    /// The signature header name.
    pub fn signature_header(self) -> &'static str {
        match self {
            Scheme::KheishV1 => KHEISH_SIGNATURE_HEADER,
            Scheme::SlackV0 => SLACK_SIGNATURE_HEADER,
        }
    }

    /// The version prefix of the signature value (`v1=` or `v0=`).
    fn signature_prefix(self) -> &'static str {
        match self {
            Scheme::KheishV1 => "v1=",
            Scheme::SlackV0 => "v0=",
        }
    }

    /// Whether method and request target are part of the signed bytes (Slack signs only the
    /// timestamp and the body).
    pub fn signs_request_target(self) -> bool {
        matches!(self, Scheme::KheishV1)
    }

    /// The signed bytes that precede the raw body: `v1:METHOD:PATH_AND_QUERY:TS:` or `v0:TS:`.
    /// `method` and `path_and_query` are ignored by the Slack scheme.
    pub fn canonical_prefix(self, method: &str, path_and_query: &str, timestamp: i64) -> String {
        match self {
            Scheme::KheishV1 => kheish_v1_canonical_prefix(method, path_and_query, timestamp),
            Scheme::SlackV0 => slack_v0_canonical_prefix(timestamp),
        }
    }

    /// The header value (`v1=<hex>` / `v0=<hex>`) for this request.
    pub fn sign(
        self,
        secret: &[u8],
        method: &str,
        path_and_query: &str,
        timestamp: i64,
        body: &[u8],
    ) -> String {
        let prefix = self.canonical_prefix(method, path_and_query, timestamp);
        let tag = mac(secret, prefix.as_bytes(), body).finalize().into_bytes();
        format!("{}{}", self.signature_prefix(), hex_lower(&tag))
    }

    /// Verifies a request under this scheme; see [`verify_kheish_v1`] for the rules.
    #[allow(clippy::too_many_arguments)] // Mirrors the request parts one to one.
    pub fn verify(
        self,
        candidates: &[&[u8]],
        method: &str,
        path_and_query: &str,
        timestamp_headers: &[&str],
        signature_headers: &[&str],
        body: &[u8],
        now_unix: i64,
        max_age_secs: u32,
    ) -> Result<(), AuthError> {
        let timestamp_raw = single_header(self.timestamp_header(), timestamp_headers)?;
        let signature_raw = single_header(self.signature_header(), signature_headers)?;
        let timestamp = parse_timestamp(self.timestamp_header(), timestamp_raw)?;
        let tag = parse_signature(self, signature_raw)?;
        check_freshness(self.timestamp_header(), timestamp, now_unix, max_age_secs)?;
        let prefix = self.canonical_prefix(method, path_and_query, timestamp);
        // Every candidate is tried, so the time taken does not say which one matched.
        let mut matched = false;
        for secret in candidates {
            matched |= mac(secret, prefix.as_bytes(), body)
                .verify_slice(&tag)
                .is_ok();
        }
        if matched {
            Ok(())
        } else {
            Err(AuthError::Mismatch)
        }
    }
}

/// Why a signed request was refused. Each message names the check that failed and the header
/// concerned; none contains the expected signature or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing `{0}` header")]
    MissingHeader(&'static str),
    #[error("duplicate `{0}` header: it must appear exactly once")]
    DuplicateHeader(&'static str),
    #[error("malformed `{header}` header: expected integer Unix seconds")]
    MalformedTimestamp { header: &'static str },
    #[error(
        "malformed `{header}` header: expected `{prefix}` followed by exactly 64 hex digits ({problem})"
    )]
    MalformedSignature {
        header: &'static str,
        prefix: &'static str,
        /// What is wrong with the received value, described without repeating it.
        problem: String,
    },
    #[error(
        "stale `{header}`: the timestamp is {} seconds in the {}, more than the allowed {max_age_secs}",
        skew_secs.unsigned_abs(),
        if *skew_secs >= 0 { "past" } else { "future" }
    )]
    StaleTimestamp {
        header: &'static str,
        /// `now − timestamp`: positive for a timestamp in the past, negative for the future.
        skew_secs: i64,
        max_age_secs: u32,
    },
    #[error(
        "signature mismatch: the request was not signed with the configured secret, or was changed after signing"
    )]
    Mismatch,
}

/// `v1:METHOD:PATH_AND_QUERY:TIMESTAMP:`, the bytes that precede the raw body in a Kheish v1 MAC.
/// `method` and `path_and_query` are used exactly as given (the request target as received:
/// percent-encoding and query kept).
pub fn kheish_v1_canonical_prefix(method: &str, path_and_query: &str, timestamp: i64) -> String {
    format!("v1:{method}:{path_and_query}:{timestamp}:")
}

/// `v0:TIMESTAMP:`, the bytes that precede the raw body in a Slack v0 MAC.
pub fn slack_v0_canonical_prefix(timestamp: i64) -> String {
    format!("v0:{timestamp}:")
}

/// `v1=<64 lowercase hex>`: HMAC-SHA256 keyed with `secret` over
/// `v1:` METHOD `:` PATH_AND_QUERY `:` TIMESTAMP `:` RAW_BODY (SPEC §7.2).
pub fn kheish_v1_signature(
    secret: &[u8],
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    Scheme::KheishV1.sign(secret, method, path_and_query, timestamp, body)
}

/// `v0=<64 lowercase hex>`: HMAC-SHA256 keyed with the signing secret over `v0:TIMESTAMP:BODY`
/// (SPEC §8).
pub fn slack_v0_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    Scheme::SlackV0.sign(secret, "", "", timestamp, body)
}

/// Verifies a Kheish v1 signed request (SPEC §7.2):
/// - `timestamp_headers` / `signature_headers` are every value the request carried for
///   `X-Kheish-Timestamp` / `X-Kheish-Signature`; each must appear exactly once;
/// - the timestamp is integer Unix seconds and |`now_unix` − timestamp| ≤ `max_age_secs`, in both
///   directions;
/// - the signature is `v1=` followed by exactly 64 hex digits, either case;
/// - the MAC over `v1:METHOD:PATH_AND_QUERY:TS:BODY` matches under ANY of `candidates` (the
///   current secret plus, during a rotation grace window, the previous one), compared in
///   constant time. No candidates means nothing can match.
///
/// Header values have surrounding spaces and tabs removed first (HTTP optional whitespace).
#[allow(clippy::too_many_arguments)] // Mirrors the request parts one to one.
pub fn verify_kheish_v1(
    candidates: &[&[u8]],
    method: &str,
    path_and_query: &str,
    timestamp_headers: &[&str],
    signature_headers: &[&str],
    body: &[u8],
    now_unix: i64,
    max_age_secs: u32,
) -> Result<(), AuthError> {
    Scheme::KheishV1.verify(
        candidates,
        method,
        path_and_query,
        timestamp_headers,
        signature_headers,
        body,
        now_unix,
        max_age_secs,
    )
}

/// Verifies a Slack v0 signed request (SPEC §8) with the same rules as [`verify_kheish_v1`]:
/// headers `X-Slack-Request-Timestamp` / `X-Slack-Signature` exactly once, `v0=` + 64 hex,
/// |now − ts| ≤ `max_age_secs` (Slack ingress passes [`SLACK_MAX_AGE_SECS`]).
pub fn verify_slack_v0(
    candidates: &[&[u8]],
    timestamp_headers: &[&str],
    signature_headers: &[&str],
    body: &[u8],
    now_unix: i64,
    max_age_secs: u32,
) -> Result<(), AuthError> {
    Scheme::SlackV0.verify(
        candidates,
        "",
        "",
        timestamp_headers,
        signature_headers,
        body,
        now_unix,
        max_age_secs,
    )
}

/// The one value of a header that must appear exactly once.
pub fn single_header<'a>(name: &'static str, values: &[&'a str]) -> Result<&'a str, AuthError> {
    match values {
        [] => Err(AuthError::MissingHeader(name)),
        [one] => Ok(one.trim_matches([' ', '\t'])),
        _ => Err(AuthError::DuplicateHeader(name)),
    }
}

fn mac(secret: &[u8], prefix: &[u8], body: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret).expect("invariant: HMAC accepts keys of any length");
    mac.update(prefix);
    mac.update(body);
    mac
}

/// Integer Unix seconds: ASCII digits only (no sign, no fraction, no exponent) that fit an
/// `i64`.
fn parse_timestamp(header: &'static str, raw: &str) -> Result<i64, AuthError> {
    let malformed = AuthError::MalformedTimestamp { header };
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed);
    }
    raw.parse().map_err(|_| malformed)
}

/// `v1=` / `v0=` (exactly, lowercase) followed by exactly 64 hex digits of either case.
fn parse_signature(scheme: Scheme, raw: &str) -> Result<[u8; 32], AuthError> {
    let prefix = scheme.signature_prefix();
    let malformed = |problem: String| AuthError::MalformedSignature {
        header: scheme.signature_header(),
        prefix,
        problem,
    };
    let Some(hex) = raw.strip_prefix(prefix) else {
        return Err(malformed(format!("it does not start with `{prefix}`")));
    };
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed(
            "it contains a character that is not a hex digit".into(),
        ));
    }
    // All ASCII from here on, so the byte length is the number of digits.
    if hex.len() != TAG_HEX_LEN {
        return Err(malformed(format!(
            "got {} hex digits after `{prefix}`",
            hex.len()
        )));
    }
    let mut tag = [0u8; 32];
    for (byte, pair) in tag.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = hex_value(pair[0]) << 4 | hex_value(pair[1]);
    }
    Ok(tag)
}

fn check_freshness(
    header: &'static str,
    timestamp: i64,
    now_unix: i64,
    max_age_secs: u32,
) -> Result<(), AuthError> {
    let skew_secs = now_unix.saturating_sub(timestamp);
    if skew_secs.unsigned_abs() > u64::from(max_age_secs) {
        return Err(AuthError::StaleTimestamp {
            header,
            skew_secs,
            max_age_secs,
        });
    }
    Ok(())
}

/// The value of one hex digit; callers have checked `is_ascii_hexdigit`.
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit.to_ascii_lowercase() - b'a' + 10,
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPEC §7.2 fixed vector.
    const SECRET: &[u8] = b"hmac-test-secret";
    const PATH: &str = "/v1/connectors/http/orders?source=a%2Fb&attempt=1";
    const TS: i64 = 1710000000;
    const BODY: &[u8] =
        br#"{"content":"hello","idempotency_key":"order-123","metadata":{"k":"v"}}"#;
    const SIG: &str = "v1=f13a4b8c5099a2ffc6b8a913e0998d6765d61a693c27f594ca34ede2e0d4e557";

    // Slack's documented example (api.slack.com "Verifying requests from Slack").
    const SLACK_SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const SLACK_TS: i64 = 1531420618;
    const SLACK_BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    const MAX_AGE: u32 = 300;

    /// Verifies the §7.2 request with the given header values, clock and candidates.
    fn check(
        candidates: &[&[u8]],
        timestamps: &[&str],
        signatures: &[&str],
        now: i64,
        expected: Result<(), AuthError>,
    ) {
        let res = verify_kheish_v1(
            candidates, "POST", PATH, timestamps, signatures, BODY, now, MAX_AGE,
        );
        assert_eq!(
            res, expected,
            "timestamps={timestamps:?} signatures={signatures:?} now={now}"
        );
    }

    fn check_slack(signatures: &[&str], now: i64, expected: Result<(), AuthError>) {
        let res = verify_slack_v0(
            &[SLACK_SECRET],
            &["1531420618"],
            signatures,
            SLACK_BODY,
            now,
            SLACK_MAX_AGE_SECS,
        );
        assert_eq!(res, expected, "signatures={signatures:?} now={now}");
    }

    fn malformed_sig(problem: &str) -> Result<(), AuthError> {
        Err(AuthError::MalformedSignature {
            header: KHEISH_SIGNATURE_HEADER,
            prefix: "v1=",
            problem: problem.to_string(),
        })
    }

    fn stale(skew_secs: i64) -> Result<(), AuthError> {
        Err(AuthError::StaleTimestamp {
            header: KHEISH_TIMESTAMP_HEADER,
            skew_secs,
            max_age_secs: MAX_AGE,
        })
    }

    #[test]
    fn spec_vector_signs() {
        assert_eq!(kheish_v1_signature(SECRET, "POST", PATH, TS, BODY), SIG);
    }

    #[test]
    fn spec_vector_canonical_prefix() {
        assert_eq!(
            kheish_v1_canonical_prefix("POST", PATH, TS),
            "v1:POST:/v1/connectors/http/orders?source=a%2Fb&attempt=1:1710000000:"
        );
        assert_eq!(slack_v0_canonical_prefix(SLACK_TS), "v0:1531420618:");
    }

    #[test]
    fn spec_vector_verifies() {
        check(&[SECRET], &["1710000000"], &[SIG], TS, Ok(()));
    }

    #[test]
    fn slack_documented_example_signs() {
        assert_eq!(
            slack_v0_signature(SLACK_SECRET, SLACK_TS, SLACK_BODY),
            SLACK_SIG
        );
    }

    #[test]
    fn slack_documented_example_verifies() {
        check_slack(&[SLACK_SIG], SLACK_TS, Ok(()));
    }

    #[test]
    fn slack_rules() {
        check_slack(
            &[],
            SLACK_TS,
            Err(AuthError::MissingHeader(SLACK_SIGNATURE_HEADER)),
        );
        check_slack(
            &[SLACK_SIG, SLACK_SIG],
            SLACK_TS,
            Err(AuthError::DuplicateHeader(SLACK_SIGNATURE_HEADER)),
        );
        check_slack(
            &[&SIG.replace("v1=", "v0=")],
            SLACK_TS,
            Err(AuthError::Mismatch),
        );
        check_slack(
            &[&SLACK_SIG.replace("v0=", "v1=")],
            SLACK_TS,
            Err(AuthError::MalformedSignature {
                header: SLACK_SIGNATURE_HEADER,
                prefix: "v0=",
                problem: "it does not start with `v0=`".into(),
            }),
        );
        check_slack(&[SLACK_SIG], SLACK_TS + 300, Ok(()));
        check_slack(
            &[SLACK_SIG],
            SLACK_TS + 301,
            Err(AuthError::StaleTimestamp {
                header: SLACK_TIMESTAMP_HEADER,
                skew_secs: 301,
                max_age_secs: 300,
            }),
        );
    }

    #[test]
    fn uppercase_hex_accepted() {
        let upper = format!("v1={}", SIG[3..].to_ascii_uppercase());
        check(&[SECRET], &["1710000000"], &[&upper], TS, Ok(()));
    }

    #[test]
    fn optional_whitespace_around_values_is_ignored() {
        check(
            &[SECRET],
            &[" 1710000000\t"],
            &[&format!(" {SIG} ")],
            TS,
            Ok(()),
        );
    }

    #[test]
    fn signature_format_is_strict() {
        let ts = &["1710000000"][..];
        let hex = &SIG[3..];
        check(
            &[SECRET],
            ts,
            &[&SIG[..SIG.len() - 1]],
            TS,
            malformed_sig("got 63 hex digits after `v1=`"),
        );
        check(
            &[SECRET],
            ts,
            &[&format!("{SIG}0")],
            TS,
            malformed_sig("got 65 hex digits after `v1=`"),
        );
        check(
            &[SECRET],
            ts,
            &[hex],
            TS,
            malformed_sig("it does not start with `v1=`"),
        );
        check(
            &[SECRET],
            ts,
            &[&format!("V1={hex}")],
            TS,
            malformed_sig("it does not start with `v1=`"),
        );
        check(
            &[SECRET],
            ts,
            &[&format!("sha256={hex}")],
            TS,
            malformed_sig("it does not start with `v1=`"),
        );
        check(
            &[SECRET],
            ts,
            &["v1="],
            TS,
            malformed_sig("got 0 hex digits after `v1=`"),
        );
        let not_hex = format!("v1=g{}", &hex[1..]);
        check(
            &[SECRET],
            ts,
            &[&not_hex],
            TS,
            malformed_sig("it contains a character that is not a hex digit"),
        );
        let multibyte = format!("v1=é{}", &hex[2..]);
        check(
            &[SECRET],
            ts,
            &[&multibyte],
            TS,
            malformed_sig("it contains a character that is not a hex digit"),
        );
    }

    #[test]
    fn headers_must_appear_exactly_once() {
        check(
            &[SECRET],
            &[],
            &[SIG],
            TS,
            Err(AuthError::MissingHeader(KHEISH_TIMESTAMP_HEADER)),
        );
        check(
            &[SECRET],
            &["1710000000"],
            &[],
            TS,
            Err(AuthError::MissingHeader(KHEISH_SIGNATURE_HEADER)),
        );
        check(
            &[SECRET],
            &["1710000000", "1710000000"],
            &[SIG],
            TS,
            Err(AuthError::DuplicateHeader(KHEISH_TIMESTAMP_HEADER)),
        );
        check(
            &[SECRET],
            &["1710000000"],
            &[SIG, SIG],
            TS,
            Err(AuthError::DuplicateHeader(KHEISH_SIGNATURE_HEADER)),
        );
    }

    #[test]
    fn timestamp_must_be_integer_seconds() {
        let bad = Err(AuthError::MalformedTimestamp {
            header: KHEISH_TIMESTAMP_HEADER,
        });
        for raw in [
            "",
            "abc",
            "1710000000.0",
            "+1710000000",
            "-1710000000",
            "1e9",
            "9223372036854775808",
            "1710000000000000000000",
        ] {
            check(&[SECRET], &[raw], &[SIG], TS, bad.clone());
        }
    }

    #[test]
    fn freshness_is_two_sided() {
        let ts = &["1710000000"][..];
        check(&[SECRET], ts, &[SIG], TS + 300, Ok(()));
        check(&[SECRET], ts, &[SIG], TS - 300, Ok(()));
        check(&[SECRET], ts, &[SIG], TS + 301, stale(301));
        check(&[SECRET], ts, &[SIG], TS - 301, stale(-301));
        check(&[SECRET], ts, &[SIG], TS + 86_400, stale(86_400));
    }

    #[test]
    fn any_candidate_may_match() {
        let ts = &["1710000000"][..];
        let previous: &[u8] = SECRET;
        let current: &[u8] = b"the-new-secret";
        check(&[current, previous], ts, &[SIG], TS, Ok(()));
        check(&[previous, current], ts, &[SIG], TS, Ok(()));
        check(&[current], ts, &[SIG], TS, Err(AuthError::Mismatch));
        check(&[], ts, &[SIG], TS, Err(AuthError::Mismatch));
    }

    #[test]
    fn every_signed_part_matters() {
        let ok = |method: &str, path: &str, ts: &str, body: &[u8]| {
            verify_kheish_v1(&[SECRET], method, path, &[ts], &[SIG], body, TS, u32::MAX)
        };
        assert_eq!(ok("POST", PATH, "1710000000", BODY), Ok(()));
        assert_eq!(
            ok("PUT", PATH, "1710000000", BODY),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            ok(
                "POST",
                "/v1/connectors/http/orders?source=a/b&attempt=1",
                "1710000000",
                BODY
            ),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            ok("POST", PATH, "1710000001", BODY),
            Err(AuthError::Mismatch)
        );
        let mut body = BODY.to_vec();
        body.push(b'\n');
        assert_eq!(
            ok("POST", PATH, "1710000000", &body),
            Err(AuthError::Mismatch)
        );
    }

    #[test]
    fn messages_name_the_check_and_never_the_expected_signature() {
        let errors = [
            AuthError::MissingHeader(KHEISH_SIGNATURE_HEADER),
            AuthError::DuplicateHeader(KHEISH_TIMESTAMP_HEADER),
            AuthError::MalformedTimestamp {
                header: KHEISH_TIMESTAMP_HEADER,
            },
            AuthError::StaleTimestamp {
                header: KHEISH_TIMESTAMP_HEADER,
                skew_secs: -400,
                max_age_secs: 300,
            },
            AuthError::Mismatch,
        ];
        let expected = [
            "missing `X-Kheish-Signature` header",
            "duplicate `X-Kheish-Timestamp` header: it must appear exactly once",
            "malformed `X-Kheish-Timestamp` header: expected integer Unix seconds",
            "stale `X-Kheish-Timestamp`: the timestamp is 400 seconds in the future, more than the allowed 300",
            "signature mismatch: the request was not signed with the configured secret, or was changed after signing",
        ];
        for (err, want) in errors.iter().zip(expected) {
            assert_eq!(err.to_string(), want);
        }
        let wrong = "v1=0000000000000000000000000000000000000000000000000000000000000000";
        let err = verify_kheish_v1(
            &[SECRET],
            "POST",
            PATH,
            &["1710000000"],
            &[wrong],
            BODY,
            TS,
            MAX_AGE,
        )
        .unwrap_err();
        assert!(!format!("{err} {err:?}").contains(&SIG[3..]));
    }

    #[test]
    fn scheme_header_names() {
        assert_eq!(Scheme::KheishV1.timestamp_header(), "X-Kheish-Timestamp");
        assert_eq!(Scheme::KheishV1.signature_header(), "X-Kheish-Signature");
        assert_eq!(
            Scheme::SlackV0.timestamp_header(),
            "X-Slack-Request-Timestamp"
        );
        assert_eq!(Scheme::SlackV0.signature_header(), "X-Slack-Signature");
    }
}
