//! Outbound HTTP (SPEC §11.5, §15): the one place that builds ureq agents, and the address
//! policy every outbound request goes through.
//!
//! - [`agent`] builds an agent with bounded timeouts, no proxy from the environment, no
//!   redirects, and HTTP statuses returned as responses; its resolver checks EVERY address a
//!   host resolves to with [`is_public_ip`] and hands exactly the checked addresses to the
//!   connector, so the connection is pinned to what was checked (no second lookup).
//! - [`classify`] turns a `ureq::Error` into a [`FailureClass`] by matching types, never text.
//! - [`redact_target`] is the only way a URL appears in a message: `scheme://host[:port]`.
//!
//! The address predicates are pure so that every range is unit-tested on values; no test ever
//! connects to a non-loopback address. No other module may build a ureq agent.

pub mod sidecar_api;
pub mod slack_api;
pub mod telegram_api;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// API calls by method and outcome, for `/metrics`: the platform clients (`slack_api`,
/// `telegram_api`) count every call here, with their own fixed method and outcome names, so the
/// series stay bounded.
#[derive(Debug, Default)]
pub struct CallStats {
    counts: std::sync::Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
}

impl CallStats {
    pub fn record(&self, method: &'static str, outcome: &'static str) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((method, outcome))
            .or_default() += 1;
    }

    /// `(method, outcome, count)` of every pair seen, sorted.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((m, o), n)| (*m, *o, *n))
            .collect()
    }
}

/// The `User-Agent` of every outbound request.
pub const USER_AGENT: &str = concat!("kheishctl/", env!("CARGO_PKG_VERSION"));

/// The most addresses handed to the connector (ureq's own resolver keeps 16 as well); every
/// address of the answer is checked first, even past this many.
const MAX_PINNED_ADDRS: usize = 16;

/// Limits and address policy of one family of outbound requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundConfig {
    /// End-to-end budget of one request: lookup, connect, send, response headers and the
    /// (capped) body read. 15 s for http deliveries, 3 s for sidecar manifest/health.
    pub total_timeout: Duration,
    /// Budget for the host lookup and, separately, for establishing the connection (TCP + TLS).
    pub connect_timeout: Duration,
    /// The most response-body bytes a caller reads; the rest is never read.
    pub max_response_bytes: u64,
    /// When true, private, loopback and other non-public addresses may be reached. Production
    /// keeps it false; a reply target may opt in for itself (`allow_private_network`).
    pub allow_private_network: bool,
}

impl OutboundConfig {
    /// The `http` delivery plugin: 15 s total, 5 s connect, 64 KiB of response body.
    pub fn http_delivery() -> OutboundConfig {
        OutboundConfig {
            total_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_response_bytes: 64 * 1024,
            allow_private_network: false,
        }
    }

    /// Sidecar manifest and health calls: 3 s total, 2 s connect, 64 KiB of response body.
    pub fn sidecar_control() -> OutboundConfig {
        OutboundConfig {
            total_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            max_response_bytes: 64 * 1024,
            allow_private_network: false,
        }
    }
}

/// Builds the ureq agent for `cfg`. Agents pool keep-alive connections, so callers build one
/// per distinct config and reuse it.
pub fn agent(cfg: &OutboundConfig) -> ureq::Agent {
    ureq::Agent::with_parts(
        agent_config(cfg),
        DefaultConnector::default(),
        GuardedResolver {
            allow_private_network: cfg.allow_private_network,
            lookup: system_lookup,
        },
    )
}

/// The ureq config behind [`agent`].
///
/// `Config::builder()` starts from `Config::default()`, which calls `Proxy::try_from_env()`
/// (`ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY` and their lowercase forms), so `proxy(None)` must be
/// explicit. With no proxy, ureq always asks our resolver for the target's addresses (with a
/// proxy it would let the proxy resolve the name and skip the address check entirely).
fn agent_config(cfg: &OutboundConfig) -> ureq::config::Config {
    ureq::config::Config::builder()
        .proxy(None)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .http_status_as_error(false)
        .user_agent(USER_AGENT)
        .timeout_global(Some(cfg.total_timeout))
        .timeout_resolve(Some(cfg.connect_timeout))
        .timeout_connect(Some(cfg.connect_timeout))
        .timeout_recv_response(Some(cfg.total_timeout))
        .timeout_recv_body(Some(cfg.total_timeout))
        .build()
}

/// A request refused because its host is, or resolves to, a non-public address and private
/// networks are not allowed (SPEC §11.5). Returned by the resolver inside
/// `ureq::Error::Other`; [`classify`] finds it by type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{target}` resolves to a non-public address; outbound requests reach only public addresses \
     unless the reply target sets `allow_private_network`"
)]
pub struct BlockedPrivateAddress {
    /// The redacted target, `scheme://host[:port]`.
    pub target: String,
    /// The first refused address (none when the name itself is a localhost name). Kept for
    /// debugging; deliberately not part of the message.
    pub address: Option<IpAddr>,
}

/// A name lookup: `(host, port, budget)` → every address of the answer.
type LookupFn = fn(String, u16, &NextTimeout) -> Result<Vec<SocketAddr>, ureq::Error>;

/// The resolver of every agent: system lookup, then the public-address check on every answer.
/// What it returns is exactly what the connector dials, so the connection is pinned to the
/// checked addresses.
#[derive(Debug)]
struct GuardedResolver {
    allow_private_network: bool,
    /// [`system_lookup`] in production; tests substitute fixed answers.
    lookup: LookupFn,
}

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return Err(ureq::Error::BadUri(
                "the URL has no scheme or host".to_string(),
            ));
        };
        let port = match (uri.port_u16(), scheme) {
            (Some(port), _) => port,
            (None, "http") => 80,
            (None, "https") => 443,
            (None, _) => {
                return Err(ureq::Error::BadUri(format!(
                    "scheme `{scheme}` is not http or https"
                )))
            }
        };
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let blocked = |address: Option<IpAddr>| {
            let target = match url::Url::parse(&uri.to_string()) {
                Ok(url) => redact_target(&url),
                Err(_) => format!("{scheme}://{host}"),
            };
            ureq::Error::Other(Box::new(BlockedPrivateAddress { target, address }))
        };
        if !self.allow_private_network && is_local_or_metadata_name(bare_host) {
            return Err(blocked(None));
        }
        let answers = match bare_host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => (self.lookup)(bare_host.to_string(), port, &timeout)?,
        };
        if !self.allow_private_network {
            if let Some(bad) = answers.iter().find(|a| !is_public_ip(a.ip())) {
                return Err(blocked(Some(bad.ip())));
            }
        }
        let mut pinned = self.empty();
        for addr in config
            .ip_family()
            .keep_wanted(answers.into_iter())
            .take(MAX_PINNED_ADDRS)
        {
            pinned.push(addr);
        }
        if pinned.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(pinned)
    }
}

/// Resolves `host:port` with the system resolver within `timeout`. The lookup runs on a
/// helper thread because `getaddrinfo` cannot be interrupted; a late answer is dropped.
fn system_lookup(
    host: String,
    port: u16,
    timeout: &NextTimeout,
) -> Result<Vec<SocketAddr>, ureq::Error> {
    let resolve = move || {
        (host.as_str(), port)
            .to_socket_addrs()
            .map(|addrs| addrs.collect::<Vec<_>>())
    };
    let answers = if timeout.after.is_not_happening() {
        resolve()
    } else {
        let (tx, rx) = mpsc::sync_channel(1);
        std::thread::spawn(move || {
            // The receiver is gone when the lookup outlived its budget; nothing to report.
            let _ = tx.send(resolve());
        });
        match rx.recv_timeout(*timeout.after) {
            Ok(answers) => answers,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(ureq::Error::Timeout(timeout.reason))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(io::Error::other(
                "the lookup thread ended without an answer",
            )),
        }
    };
    match answers {
        Ok(addrs) if !addrs.is_empty() => Ok(addrs),
        // Every lookup failure (no such name, no answer, resolver unreachable) is a DNS failure.
        Ok(_) | Err(_) => Err(ureq::Error::HostNotFound),
    }
}

/// What went wrong with an outbound request, by type. Each class has a stable code (stored as
/// a delivery's `last_error_code`) and says whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The host is or resolves to a non-public address (terminal).
    BlockedPrivateAddress,
    /// The host name did not resolve.
    DnsFailed,
    /// A connect, read or total budget ran out.
    Timeout,
    /// Refused, reset or closed before a complete response.
    ConnectionFailed,
    /// The TLS handshake or certificate check failed.
    TlsFailed,
    /// The target answered something that is not HTTP/1.1.
    InvalidResponse,
    /// The request itself cannot be built (bad URL, bad header value): terminal.
    InvalidRequest,
    /// Anything else ureq reports.
    Other,
}

impl FailureClass {
    /// The stable code (`blocked_private_address`, `dns_failed`, `timeout`, …).
    pub fn code(self) -> &'static str {
        match self {
            FailureClass::BlockedPrivateAddress => "blocked_private_address",
            FailureClass::DnsFailed => "dns_failed",
            FailureClass::Timeout => "timeout",
            FailureClass::ConnectionFailed => "connection_failed",
            FailureClass::TlsFailed => "tls_failed",
            FailureClass::InvalidResponse => "invalid_response",
            FailureClass::InvalidRequest => "invalid_target",
            FailureClass::Other => "request_failed",
        }
    }

    /// True when a later attempt may succeed.
    pub fn is_retryable(self) -> bool {
        !matches!(
            self,
            FailureClass::BlockedPrivateAddress | FailureClass::InvalidRequest
        )
    }

    /// A message naming only `target` (already redacted) and the failure class.
    pub fn reason(self, target: &str) -> String {
        match self {
            FailureClass::BlockedPrivateAddress => format!(
                "`{target}` resolves to a non-public address; outbound requests reach only public \
                 addresses unless the reply target sets `allow_private_network`"
            ),
            FailureClass::DnsFailed => format!("the host of `{target}` did not resolve"),
            FailureClass::Timeout => format!("`{target}` did not answer in time"),
            FailureClass::ConnectionFailed => {
                format!("the connection to `{target}` was refused or closed before a response")
            }
            FailureClass::TlsFailed => format!("the TLS handshake with `{target}` failed"),
            FailureClass::InvalidResponse => {
                format!("`{target}` answered with a malformed HTTP response")
            }
            FailureClass::InvalidRequest => format!(
                "the request to `{target}` cannot be built (invalid URL or header value); fix the \
                 reply target"
            ),
            FailureClass::Other => format!("the request to `{target}` failed"),
        }
    }
}

/// Classifies a ureq error by its variant (and, for wrapped errors, by downcasting) — never by
/// its text.
pub fn classify(err: &ureq::Error) -> FailureClass {
    match err {
        ureq::Error::Other(inner) if inner.is::<BlockedPrivateAddress>() => {
            FailureClass::BlockedPrivateAddress
        }
        ureq::Error::HostNotFound => FailureClass::DnsFailed,
        ureq::Error::Timeout(_) => FailureClass::Timeout,
        ureq::Error::Io(io_err) => classify_io(io_err),
        ureq::Error::ConnectionFailed | ureq::Error::BodyStalled => FailureClass::ConnectionFailed,
        ureq::Error::Tls(_)
        | ureq::Error::Rustls(_)
        | ureq::Error::Pem(_)
        | ureq::Error::TlsRequired => FailureClass::TlsFailed,
        ureq::Error::Protocol(_) | ureq::Error::LargeResponseHeader(..) => {
            FailureClass::InvalidResponse
        }
        ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::RequireHttpsOnly(_) => {
            FailureClass::InvalidRequest
        }
        _ => FailureClass::Other,
    }
}

fn classify_io(err: &io::Error) -> FailureClass {
    // ureq wraps its own errors in io::Error when they cross a `Read` boundary (body reads).
    if let Some(inner) = err.get_ref().and_then(|e| e.downcast_ref::<ureq::Error>()) {
        return classify(inner);
    }
    match err.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => FailureClass::Timeout,
        _ => FailureClass::ConnectionFailed,
    }
}

/// The delay a `Retry-After` value asks for (RFC 9110 §10.2.3): delta-seconds, or an HTTP-date
/// taken relative to `now` (a date in the past means zero). Anything else gives `None`.
/// Very large delta-seconds saturate; the retry policy clamps them.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let date = parse_http_date(value)?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an HTTP-date in the three forms RFC 9110 §5.6.7 requires recipients to accept
/// (IMF-fixdate, RFC 850, asctime), through the `httpdate` crate.
pub(crate) fn parse_http_date(value: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(value).ok()
}

/// `scheme://host[:port]` of `url`: never its path, query, userinfo or fragment. Every message
/// that names an outbound target uses this.
pub fn redact_target(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// True when `ip` is a public unicast address that outbound requests may reach without
/// `allow_private_network`. Refused: loopback, private, link-local (cloud metadata), CGNAT,
/// unique-local, unspecified, multicast, broadcast, documentation, benchmarking, reserved ranges
/// and the IPv4-mapped/compatible/NAT64/6to4 forms of any of these.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..=127).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments 192.0.0/24
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || a >= 240) // reserved 240/4
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let seg = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0 // deprecated site-local fec0::/10
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation 2001:db8::/32
        || (seg[0] == 0x0100 && seg[1] == 0 && seg[2] == 0 && seg[3] == 0)) // discard 100::/64
}

/// The IPv4 address hidden in an IPv6 form that reaches it: mapped `::ffff:a.b.c.d`,
/// compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and 6to4 `2002:aabb:ccdd::`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let tail = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if seg[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(tail);
    }
    if seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        return Some(tail);
    }
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        ));
    }
    None
}

/// True for host names that always mean this machine (`localhost` and `*.localhost`).
pub fn is_localhost_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// The names of cloud instance-metadata services (SPEC §2.4 refuses metadata hosts): they
/// resolve to a link-local address inside the cloud, which the address guard refuses too,
/// but a name is refused before any look-up, wherever it would resolve.
const METADATA_NAMES: [&str; 6] = [
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
];

/// True for a localhost name (see [`is_localhost_name`]) or a cloud metadata service's name.
pub fn is_local_or_metadata_name(host: &str) -> bool {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    is_localhost_name(&lower) || METADATA_NAMES.contains(&lower.as_str())
}

/// True when `host` (a URL host: name, IPv4, or bracketed IPv6) is a loopback address or a
/// localhost name.
pub fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => is_localhost_name(d),
        url::Host::Ipv4(v4) => v4.is_loopback(),
        url::Host::Ipv6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(addr: &str, public: bool) {
        let ip: IpAddr = addr.parse().unwrap();
        assert_eq!(is_public_ip(ip), public, "{addr}");
    }

    #[test]
    fn private_ranges_are_refused() {
        for addr in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "240.0.0.1",
            "192.0.0.8",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:0a00:0001::1",
            "100::1",
            "fec0::1",
        ] {
            check(addr, false);
        }
    }

    #[test]
    fn public_addresses_pass() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            check(addr, true);
        }
    }

    fn resolve_with(
        allow_private_network: bool,
        lookup: LookupFn,
        url: &str,
    ) -> Result<Vec<SocketAddr>, ureq::Error> {
        let uri: Uri = url.parse().unwrap();
        let config = agent_config(&OutboundConfig::http_delivery());
        GuardedResolver {
            allow_private_network,
            lookup,
        }
        .resolve(&uri, &config, NextTimeout::default())
        .map(|addrs| addrs.iter().copied().collect())
    }

    fn resolve(allow_private_network: bool, url: &str) -> Result<Vec<SocketAddr>, ureq::Error> {
        resolve_with(allow_private_network, system_lookup, url)
    }

    fn blocked_with(lookup: LookupFn, url: &str) -> BlockedPrivateAddress {
        match resolve_with(false, lookup, url) {
            Err(ureq::Error::Other(inner)) => match inner.downcast::<BlockedPrivateAddress>() {
                Ok(b) => *b,
                Err(other) => panic!("{url}: unexpected error {other}"),
            },
            other => panic!("{url}: expected a blocked address, got {other:?}"),
        }
    }

    fn blocked(url: &str) -> BlockedPrivateAddress {
        blocked_with(system_lookup, url)
    }

    /// A DNS answer: public addresses with one private address last.
    fn answer_with_private_last(
        _: String,
        port: u16,
        _: &NextTimeout,
    ) -> Result<Vec<SocketAddr>, ureq::Error> {
        let mut addrs: Vec<SocketAddr> = (1..=20u8)
            .map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(8, 8, 4, i)), port))
            .collect();
        addrs.push(SocketAddr::new("fd00::5".parse().unwrap(), port));
        Ok(addrs)
    }

    fn answer_loopback(
        _: String,
        port: u16,
        _: &NextTimeout,
    ) -> Result<Vec<SocketAddr>, ureq::Error> {
        Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)])
    }

    fn answer_public(
        _: String,
        port: u16,
        _: &NextTimeout,
    ) -> Result<Vec<SocketAddr>, ureq::Error> {
        Ok((1..=20u8)
            .map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(1, 1, 1, i)), port))
            .collect())
    }

    fn answer_nothing(_: String, _: u16, _: &NextTimeout) -> Result<Vec<SocketAddr>, ureq::Error> {
        Err(ureq::Error::HostNotFound)
    }

    #[test]
    fn every_dns_answer_is_checked_and_the_checked_ones_are_pinned() {
        // One private address anywhere in the answer refuses the whole name, even past the
        // 16 addresses handed to the connector.
        let err = blocked_with(answer_with_private_last, "https://rebind.example/hook");
        assert_eq!(err.address, Some("fd00::5".parse().unwrap()));
        assert_eq!(err.target, "https://rebind.example");
        let err = blocked_with(
            answer_loopback,
            "http://internal.example:8080/x?token=SECRET",
        );
        assert_eq!(err.target, "http://internal.example:8080");
        // With the flag, the same answers are pinned as returned.
        assert_eq!(
            resolve_with(true, answer_loopback, "http://internal.example:8080/").unwrap(),
            vec!["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
        );
        // An all-public answer is pinned: exactly the checked addresses, at most 16.
        let pinned = resolve_with(false, answer_public, "https://ok.example/").unwrap();
        assert_eq!(pinned.len(), MAX_PINNED_ADDRS);
        assert_eq!(pinned[0], "1.1.1.1:443".parse::<SocketAddr>().unwrap());
        assert!(pinned.iter().all(|a| is_public_ip(a.ip())));
        // A failed lookup is a DNS failure, not a blocked address.
        let err = resolve_with(false, answer_nothing, "https://nx.example/").unwrap_err();
        assert_eq!(classify(&err), FailureClass::DnsFailed);
    }

    #[test]
    fn ip_literals_are_checked_without_a_lookup() {
        // No connection is made: the resolver is called directly.
        for url in [
            "http://127.0.0.1:9/x",
            "http://10.0.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "http://[::1]:8080/",
            "http://[::ffff:192.168.0.1]/",
            "http://[fd00::1]/",
            "http://0.0.0.0/",
        ] {
            let err = blocked(url);
            assert!(err.address.is_some_and(|ip| !is_public_ip(ip)), "{url}");
            assert_eq!(
                classify(&ureq::Error::Other(Box::new(err))),
                FailureClass::BlockedPrivateAddress
            );
        }
        assert_eq!(
            resolve(true, "http://127.0.0.1:9/x").unwrap(),
            vec!["127.0.0.1:9".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            resolve(true, "http://[::1]/").unwrap(),
            vec!["[::1]:80".parse::<SocketAddr>().unwrap()]
        );
        // A public literal is pinned as is (no lookup, no connection).
        assert_eq!(
            resolve(false, "https://1.1.1.1/hook").unwrap(),
            vec!["1.1.1.1:443".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn localhost_names_are_refused_before_any_lookup() {
        for url in [
            "http://localhost:1/",
            "http://LOCALHOST./",
            "https://api.localhost/",
        ] {
            let err = blocked(url);
            assert_eq!(err.address, None, "{url}");
        }
        let err = blocked("http://localhost:8080/secret-path?token=SECRET");
        assert_eq!(err.target, "http://localhost:8080");
        let message = err.to_string();
        assert!(
            !message.contains("SECRET") && !message.contains("secret-path"),
            "{message}"
        );
    }

    #[test]
    fn localhost_resolves_when_private_networks_are_allowed() {
        // `localhost` resolves from the hosts file; the answers are loopback and pinned.
        let addrs = resolve(true, "http://localhost:9/").unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 9),
            "{addrs:?}"
        );
    }

    #[test]
    fn agent_config_has_no_proxy_no_redirects_and_bounded_timeouts() {
        let cfg = OutboundConfig {
            total_timeout: Duration::from_millis(1500),
            connect_timeout: Duration::from_millis(700),
            max_response_bytes: 1024,
            allow_private_network: false,
        };
        let agent = agent(&cfg);
        let config = agent.config();
        // `Config::builder()` would otherwise carry `Proxy::try_from_env()`; the explicit None
        // makes the environment irrelevant, and without a proxy ureq always calls the resolver.
        assert!(config.proxy().is_none());
        assert_eq!(config.max_redirects(), 0);
        assert!(!config.http_status_as_error());
        let timeouts = config.timeouts();
        assert_eq!(timeouts.global, Some(cfg.total_timeout));
        assert_eq!(timeouts.resolve, Some(cfg.connect_timeout));
        assert_eq!(timeouts.connect, Some(cfg.connect_timeout));
        assert_eq!(timeouts.recv_response, Some(cfg.total_timeout));
        assert_eq!(timeouts.recv_body, Some(cfg.total_timeout));
    }

    #[test]
    fn redacted_targets_keep_only_scheme_host_and_port() {
        for (raw, expected) in [
            (
                "https://example.com/a/b?token=x#frag",
                "https://example.com",
            ),
            ("http://example.com:8080/hook", "http://example.com:8080"),
            ("https://example.com:443/hook", "https://example.com"),
            ("http://user:pw@example.com/x", "http://example.com"),
            ("http://[::1]:9000/x?y", "http://[::1]:9000"),
            ("http://127.0.0.1/secret", "http://127.0.0.1"),
        ] {
            assert_eq!(
                redact_target(&url::Url::parse(raw).unwrap()),
                expected,
                "{raw}"
            );
        }
    }

    #[test]
    fn errors_are_classified_by_type() {
        use std::io::ErrorKind;
        for (err, class) in [
            (ureq::Error::HostNotFound, FailureClass::DnsFailed),
            (
                ureq::Error::Timeout(ureq::Timeout::Global),
                FailureClass::Timeout,
            ),
            (
                ureq::Error::Io(ErrorKind::ConnectionRefused.into()),
                FailureClass::ConnectionFailed,
            ),
            (
                ureq::Error::Io(ErrorKind::ConnectionReset.into()),
                FailureClass::ConnectionFailed,
            ),
            (
                ureq::Error::Io(ErrorKind::UnexpectedEof.into()),
                FailureClass::ConnectionFailed,
            ),
            (
                ureq::Error::Io(ErrorKind::TimedOut.into()),
                FailureClass::Timeout,
            ),
            (
                ureq::Error::Timeout(ureq::Timeout::Global).into_io().into(),
                FailureClass::Timeout,
            ),
            (
                ureq::Error::ConnectionFailed,
                FailureClass::ConnectionFailed,
            ),
            (
                ureq::Error::BadUri("x".into()),
                FailureClass::InvalidRequest,
            ),
            (ureq::Error::Tls("bad certificate"), FailureClass::TlsFailed),
            (ureq::Error::BodyExceedsLimit(1), FailureClass::Other),
        ] {
            assert_eq!(classify(&err), class, "{err:?}");
        }
        assert!(!FailureClass::BlockedPrivateAddress.is_retryable());
        assert!(!FailureClass::InvalidRequest.is_retryable());
        assert!(FailureClass::DnsFailed.is_retryable());
        assert_eq!(
            FailureClass::BlockedPrivateAddress.code(),
            "blocked_private_address"
        );
    }

    #[test]
    fn localhost_names() {
        for name in [
            "metadata.google.internal",
            "METADATA.GOOGLE.INTERNAL.",
            "metadata",
        ] {
            assert!(is_local_or_metadata_name(name), "{name}");
        }
        assert!(is_local_or_metadata_name("api.localhost"));
        assert!(!is_local_or_metadata_name("metadata.example.com"));
        assert!(is_localhost_name("localhost"));
        assert!(is_localhost_name("LOCALHOST."));
        assert!(is_localhost_name("api.localhost"));
        assert!(!is_localhost_name("localhost.example.com"));
    }
}
