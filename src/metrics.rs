//! The daemon's in-memory metrics, rendered as Prometheus text exposition format 0.0.4
//! (SPEC §13): ingress requests by connector and outcome, HTTP request latency by route
//! template, HTTP requests by route and status, delivery attempts by plugin and outcome, plus
//! whatever other parts of the daemon report
//! through [`Sample`]s (collectors registered with [`Metrics::add_collector`], or the `extra`
//! argument of [`Metrics::render`]).
//!
//! Recording is lock-light: a read lock to find the series and an atomic add; the write lock is
//! taken only the first time a series appears. Labels are route templates, connector ids of
//! configured connectors, status codes, delivery plugin names and attempt outcomes — never raw
//! paths, queries, headers, target addresses or secrets — so the number of series stays bounded
//! by the configuration.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use crate::model::ConnectorId;

/// Outcomes counted per connector on ingress (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IngressOutcome {
    /// A new event was durably accepted (202).
    Accepted,
    /// A replay of an accepted event with the same fingerprint (200).
    Duplicate,
    /// A replayed key with a different payload (409 `idempotency_conflict`).
    Conflict,
    /// Refused for its content, session or policy (4xx other than the ones below).
    Rejected,
    /// Refused by the connector's rate limit (429).
    RateLimited,
    /// Failed authentication (401).
    Unauthorized,
    /// Answered by the protocol without a run (for example Slack's `url_verification`).
    Ignored,
}

impl IngressOutcome {
    pub const ALL: [IngressOutcome; 7] = [
        IngressOutcome::Accepted,
        IngressOutcome::Duplicate,
        IngressOutcome::Conflict,
        IngressOutcome::Rejected,
        IngressOutcome::RateLimited,
        IngressOutcome::Unauthorized,
        IngressOutcome::Ignored,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            IngressOutcome::Accepted => "accepted",
            IngressOutcome::Duplicate => "duplicate",
            IngressOutcome::Conflict => "conflict",
            IngressOutcome::Rejected => "rejected",
            IngressOutcome::RateLimited => "rate_limited",
            IngressOutcome::Unauthorized => "unauthorized",
            IngressOutcome::Ignored => "ignored",
        }
    }
}

/// The protocol statuses of an external event (SPEC §10.2), each rendered for every external
/// connector seen, zeros included.
pub const EXTERNAL_EVENT_STATUSES: [&str; 5] =
    ["accepted", "duplicate", "rejected", "rate_limited", "error"];

/// Upper bounds (seconds) of the request-latency histogram buckets; `+Inf` is implied.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Whether a [`Sample`] is a counter (only goes up) or a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKind {
    Counter,
    Gauge,
}

impl SampleKind {
    fn as_str(self) -> &'static str {
        match self {
            SampleKind::Counter => "counter",
            SampleKind::Gauge => "gauge",
        }
    }
}

/// One value owned by another part of the daemon, rendered next to the registry's own metrics.
/// Samples with the same `name` form one family (one `# HELP`/`# TYPE` block); give them the
/// same `help` and `kind`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, `[a-zA-Z_:][a-zA-Z0-9_:]*`; counters end in `_total`.
    pub name: &'static str,
    /// One line of help text.
    pub help: &'static str,
    pub kind: SampleKind,
    /// Label pairs. Values are escaped on output but must never be secrets or raw paths.
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Sample {
    /// A counter without labels.
    pub fn counter(name: &'static str, help: &'static str, value: f64) -> Sample {
        Sample {
            name,
            help,
            kind: SampleKind::Counter,
            labels: Vec::new(),
            value,
        }
    }

    /// A gauge without labels.
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Sample {
        Sample {
            name,
            help,
            kind: SampleKind::Gauge,
            labels: Vec::new(),
            value,
        }
    }

    /// Adds a label.
    pub fn label(mut self, name: &'static str, value: impl Into<String>) -> Sample {
        self.labels.push((name, value.into()));
        self
    }
}

/// A callback that reports samples at scrape time (see [`Metrics::add_collector`]).
pub type Collector = Box<dyn Fn(&mut Vec<Sample>) + Send + Sync>;

/// Counters keyed by a label set; see the module docs for the locking.
#[derive(Debug)]
struct CounterFamily<K: Ord> {
    series: RwLock<BTreeMap<K, AtomicU64>>,
}

impl<K: Ord + Clone> CounterFamily<K> {
    fn new() -> Self {
        CounterFamily {
            series: RwLock::new(BTreeMap::new()),
        }
    }

    fn add(&self, key: &K, n: u64) {
        {
            let series = self.series.read().unwrap_or_else(|p| p.into_inner());
            if let Some(counter) = series.get(key) {
                counter.fetch_add(n, Ordering::Relaxed);
                return;
            }
        }
        let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
        series
            .entry(key.clone())
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<(K, u64)> {
        let series = self.series.read().unwrap_or_else(|p| p.into_inner());
        series
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }
}

/// One latency histogram: per-bucket (non-cumulative) counts, the overflow bucket last, and the
/// sum in nanoseconds (an integer, so concurrent adds need no compare-and-swap loop).
#[derive(Debug)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, seconds: f64) {
        // NaN and negative values (a clock step) count as 0 rather than poisoning the sum.
        let seconds = if seconds.is_finite() && seconds > 0.0 {
            seconds
        } else {
            0.0
        };
        let idx = LATENCY_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        // `as` saturates; 2^64 ns is 584 years.
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }
}

/// The daemon's metrics registry. One per daemon, shared by every request thread.
pub struct Metrics {
    /// `kheish_ingress_requests_total{connector, outcome}`.
    ingress: CounterFamily<(String, IngressOutcome)>,
    /// `kheish_http_requests_total{route, status}`.
    requests: CounterFamily<(&'static str, u16)>,
    /// `kheish_http_request_duration_seconds{route}`.
    latency: RwLock<BTreeMap<&'static str, Histogram>>,
    /// `kheish_delivery_attempts_total{plugin, outcome}`.
    delivery_attempts: CounterFamily<(String, String)>,
    /// `kheish_external_ingress_events_total{connector, status}`.
    external_events: CounterFamily<(String, &'static str)>,
    /// Scrape-time reporters registered by other parts of the daemon.
    collectors: RwLock<Vec<Collector>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            ingress: CounterFamily::new(),
            requests: CounterFamily::new(),
            latency: RwLock::new(BTreeMap::new()),
            delivery_attempts: CounterFamily::new(),
            external_events: CounterFamily::new(),
            collectors: RwLock::new(Vec::new()),
        }
    }

    /// Counts one ingress request of `connector` with `outcome`. Pass only configured
    /// connectors (never a name taken from an unknown route), so label values stay bounded.
    pub fn ingress(&self, connector: &ConnectorId, outcome: IngressOutcome) {
        self.ingress.add(&(connector.to_string(), outcome), 1);
    }

    /// Counts one external sidecar event (one per `/events` request, one per item of an
    /// `/events/batch` request) of `connector` by its protocol status: `accepted`,
    /// `duplicate`, `rejected`, `rate_limited` or `error` (SPEC §10.2).
    pub fn external_event(&self, connector: &ConnectorId, status: &'static str) {
        self.external_events
            .add(&(connector.to_string(), status), 1);
    }

    /// Records one HTTP request's latency under its route template and status.
    pub fn request(&self, route: &'static str, status: u16, seconds: f64) {
        self.requests.add(&(route, status), 1);
        {
            let latency = self.latency.read().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = latency.get(route) {
                h.observe(seconds);
                return;
            }
        }
        let mut latency = self.latency.write().unwrap_or_else(|p| p.into_inner());
        latency
            .entry(route)
            .or_insert_with(Histogram::new)
            .observe(seconds);
    }

    /// Counts one delivery attempt to `plugin` (`http`, `slack`, `telegram`, `external`) that
    /// ended with `outcome` (the worker's fixed set: `delivered`, `retryable`,
    /// `terminal`, `dead_lettered`). Both are label values, so pass only those bounded names — never a
    /// target address, an error text or an HTTP status taken from a target.
    pub fn delivery_attempt(&self, plugin: &str, outcome: &str) {
        self.delivery_attempts
            .add(&(plugin.to_string(), outcome.to_string()), 1);
    }

    /// Registers a callback that pushes samples each time metrics are rendered: the way a part
    /// of the daemon that owns its own counters (the ingress writer's commits, the delivery
    /// queue's depth) exposes them without this module knowing about it.
    ///
    /// ```
    /// # use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
    /// # use kheishctl::metrics::{Metrics, Sample};
    /// let metrics = Metrics::new();
    /// let commits = Arc::new(AtomicU64::new(0));
    /// let seen = Arc::clone(&commits);
    /// metrics.add_collector(Box::new(move |out: &mut Vec<Sample>| {
    ///     out.push(Sample::counter(
    ///         "kheish_store_commits_total",
    ///         "Group commits of the ingress writer.",
    ///         seen.load(Ordering::Relaxed) as f64,
    ///     ))
    /// }));
    /// commits.fetch_add(3, Ordering::Relaxed);
    /// assert!(metrics.render(&[]).contains("kheish_store_commits_total 3\n"));
    /// ```
    pub fn add_collector(&self, collector: Collector) {
        self.collectors
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(collector);
    }

    /// The whole exposition: the registry's own families, then the collectors' samples and
    /// `extra`, grouped into families by name in order of first appearance.
    pub fn render(&self, extra: &[Sample]) -> String {
        let mut out = String::new();

        let ingress = self.ingress.snapshot();
        family_header(
            &mut out,
            "kheish_ingress_requests_total",
            "Ingress requests by connector and outcome.",
            "counter",
        );
        // Every outcome of every connector seen so far, zeros included, so rate() and ratios
        // work from the first scrape.
        let mut connectors: Vec<&str> = ingress.iter().map(|((c, _), _)| c.as_str()).collect();
        connectors.dedup();
        for connector in connectors {
            for outcome in IngressOutcome::ALL {
                let value = ingress
                    .iter()
                    .find(|((c, o), _)| c == connector && *o == outcome)
                    .map_or(0, |(_, v)| *v);
                write_series(
                    &mut out,
                    "kheish_ingress_requests_total",
                    &[("connector", connector), ("outcome", outcome.as_str())],
                    &value.to_string(),
                );
            }
        }

        family_header(
            &mut out,
            "kheish_http_requests_total",
            "HTTP requests by route template and status code.",
            "counter",
        );
        for ((route, status), value) in self.requests.snapshot() {
            write_series(
                &mut out,
                "kheish_http_requests_total",
                &[("route", route), ("status", &status.to_string())],
                &value.to_string(),
            );
        }

        family_header(
            &mut out,
            "kheish_http_request_duration_seconds",
            "HTTP request latency by route template, from request read to response written.",
            "histogram",
        );
        {
            let latency = self.latency.read().unwrap_or_else(|p| p.into_inner());
            for (route, h) in latency.iter() {
                write_histogram(&mut out, route, h);
            }
        }

        family_header(
            &mut out,
            "kheish_delivery_attempts_total",
            "Delivery attempts by plugin and outcome.",
            "counter",
        );
        for ((plugin, outcome), value) in self.delivery_attempts.snapshot() {
            write_series(
                &mut out,
                "kheish_delivery_attempts_total",
                &[("plugin", &plugin), ("outcome", &outcome)],
                &value.to_string(),
            );
        }

        family_header(
            &mut out,
            "kheish_external_ingress_events_total",
            "External sidecar events by connector and protocol status (accepted, duplicate, rejected, rate_limited, error).",
            "counter",
        );
        let external = self.external_events.snapshot();
        let mut connectors: Vec<&str> = external.iter().map(|((c, _), _)| c.as_str()).collect();
        connectors.dedup();
        for connector in connectors {
            for status in EXTERNAL_EVENT_STATUSES {
                let value = external
                    .iter()
                    .find(|((c, s), _)| c == connector && *s == status)
                    .map_or(0, |(_, v)| *v);
                write_series(
                    &mut out,
                    "kheish_external_ingress_events_total",
                    &[("connector", connector), ("status", status)],
                    &value.to_string(),
                );
            }
        }

        let mut samples: Vec<Sample> = Vec::new();
        for collect in self
            .collectors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            collect(&mut samples);
        }
        samples.extend_from_slice(extra);
        write_samples(&mut out, &samples);
        out
    }
}

/// The cumulative `_bucket` lines, `_sum` and `_count` of one route. `_count` is derived from
/// the buckets read here, so it always equals the `+Inf` bucket.
fn write_histogram(out: &mut String, route: &str, h: &Histogram) {
    let name = "kheish_http_request_duration_seconds";
    let mut cumulative = 0u64;
    for (idx, bucket) in h.buckets.iter().enumerate() {
        cumulative += bucket.load(Ordering::Relaxed);
        let le = LATENCY_BUCKETS
            .get(idx)
            .map_or_else(|| "+Inf".to_string(), |le| format_float(*le));
        write_series(
            out,
            &format!("{name}_bucket"),
            &[("route", route), ("le", &le)],
            &cumulative.to_string(),
        );
    }
    let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    write_series(
        out,
        &format!("{name}_sum"),
        &[("route", route)],
        &format_float(sum),
    );
    write_series(
        out,
        &format!("{name}_count"),
        &[("route", route)],
        &cumulative.to_string(),
    );
}

/// Writes samples grouped into families by name, in order of first appearance.
fn write_samples(out: &mut String, samples: &[Sample]) {
    let mut names: Vec<&'static str> = Vec::new();
    for s in samples {
        if !names.contains(&s.name) {
            names.push(s.name);
        }
    }
    for name in names {
        let mut family = samples.iter().filter(|s| s.name == name).peekable();
        if let Some(first) = family.peek() {
            family_header(out, name, first.help, first.kind.as_str());
        }
        for s in family {
            let labels: Vec<(&str, &str)> =
                s.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            write_series(out, name, &labels, &format_float(s.value));
        }
    }
}

fn family_header(out: &mut String, name: &str, help: &str, kind: &str) {
    debug_assert!(valid_name(name), "metric name {name:?}");
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn write_series(out: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (idx, (k, v)) in labels.iter().enumerate() {
            debug_assert!(valid_name(k) && !k.contains(':'), "label name {k:?}");
            if idx > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Label values escape backslash, double quote and line feed (format 0.0.4).
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and line feed (format 0.0.4).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Go-compatible float text: `+Inf`, `-Inf`, `NaN`, otherwise the shortest decimal form that
/// round-trips (Rust's `Display` never uses an exponent, which Prometheus also accepts).
fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ConnectorId {
        s.parse().unwrap()
    }

    /// The lines of `text` that start with `prefix`.
    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn empty_registry_renders_headers_only() {
        assert_eq!(
            Metrics::new().render(&[]),
            "# HELP kheish_ingress_requests_total Ingress requests by connector and outcome.\n\
             # TYPE kheish_ingress_requests_total counter\n\
             # HELP kheish_http_requests_total HTTP requests by route template and status code.\n\
             # TYPE kheish_http_requests_total counter\n\
             # HELP kheish_http_request_duration_seconds HTTP request latency by route template, from request read to response written.\n\
             # TYPE kheish_http_request_duration_seconds histogram\n\
             # HELP kheish_delivery_attempts_total Delivery attempts by plugin and outcome.\n\
             # TYPE kheish_delivery_attempts_total counter\n\
             # HELP kheish_external_ingress_events_total External sidecar events by connector and protocol status (accepted, duplicate, rejected, rate_limited, error).\n\
             # TYPE kheish_external_ingress_events_total counter\n"
        );
    }

    #[test]
    fn external_events_count_every_status_of_seen_connectors() {
        let m = Metrics::new();
        m.external_event(&id("external/d"), "accepted");
        m.external_event(&id("external/d"), "accepted");
        m.external_event(&id("external/d"), "rate_limited");
        let text = m.render(&[]);
        assert_eq!(
            lines(&text, "kheish_external_ingress_events_total{"),
            [
                r#"kheish_external_ingress_events_total{connector="external/d",status="accepted"} 2"#,
                r#"kheish_external_ingress_events_total{connector="external/d",status="duplicate"} 0"#,
                r#"kheish_external_ingress_events_total{connector="external/d",status="rejected"} 0"#,
                r#"kheish_external_ingress_events_total{connector="external/d",status="rate_limited"} 1"#,
                r#"kheish_external_ingress_events_total{connector="external/d",status="error"} 0"#,
            ]
        );
    }

    #[test]
    fn delivery_attempts_count_by_plugin_and_outcome() {
        let m = Metrics::new();
        m.delivery_attempt("http", "retry");
        m.delivery_attempt("http", "delivered");
        m.delivery_attempt("http", "retry");
        m.delivery_attempt("slack", "dead_lettered");
        let text = m.render(&[]);
        assert_eq!(
            lines(&text, "kheish_delivery_attempts_total{"),
            [
                r#"kheish_delivery_attempts_total{plugin="http",outcome="delivered"} 1"#,
                r#"kheish_delivery_attempts_total{plugin="http",outcome="retry"} 2"#,
                r#"kheish_delivery_attempts_total{plugin="slack",outcome="dead_lettered"} 1"#,
            ]
        );
    }

    #[test]
    fn ingress_counts_every_outcome_of_seen_connectors() {
        let m = Metrics::new();
        m.ingress(&id("http/orders"), IngressOutcome::Accepted);
        m.ingress(&id("http/orders"), IngressOutcome::Accepted);
        m.ingress(&id("http/orders"), IngressOutcome::Duplicate);
        m.ingress(&id("slack/team"), IngressOutcome::RateLimited);
        let text = m.render(&[]);
        assert_eq!(
            lines(&text, "kheish_ingress_requests_total{"),
            [
                r#"kheish_ingress_requests_total{connector="http/orders",outcome="accepted"} 2"#,
                r#"kheish_ingress_requests_total{connector="http/orders",outcome="duplicate"} 1"#,
                r#"kheish_ingress_requests_total{connector="http/orders",outcome="conflict"} 0"#,
                r#"kheish_ingress_requests_total{connector="http/orders",outcome="rejected"} 0"#,
                r#"kheish_ingress_requests_total{connector="http/orders",outcome="rate_limited"} 0"#,
                r#"kheish_ingress_requests_total{connector="http/orders",outcome="unauthorized"} 0"#,
                r#"kheish_ingress_requests_total{connector="http/orders",outcome="ignored"} 0"#,
                r#"kheish_ingress_requests_total{connector="slack/team",outcome="accepted"} 0"#,
                r#"kheish_ingress_requests_total{connector="slack/team",outcome="duplicate"} 0"#,
                r#"kheish_ingress_requests_total{connector="slack/team",outcome="conflict"} 0"#,
                r#"kheish_ingress_requests_total{connector="slack/team",outcome="rejected"} 0"#,
                r#"kheish_ingress_requests_total{connector="slack/team",outcome="rate_limited"} 1"#,
                r#"kheish_ingress_requests_total{connector="slack/team",outcome="unauthorized"} 0"#,
                r#"kheish_ingress_requests_total{connector="slack/team",outcome="ignored"} 0"#,
            ]
        );
    }

    #[test]
    fn histogram_is_cumulative_with_sum_and_count() {
        let m = Metrics::new();
        let route = "/v1/connectors/http/{name}";
        m.request(route, 202, 0.0004);
        m.request(route, 202, 0.003);
        m.request(route, 400, 0.003);
        m.request(route, 202, 7.0);
        m.request("/metrics", 200, 0.0001);
        let text = m.render(&[]);
        let name = "kheish_http_request_duration_seconds";
        let buckets = lines(
            &text,
            &format!("{name}_bucket{{route=\"/v1/connectors/http/{{name}}\""),
        );
        let expected: Vec<String> = [
            ("0.0005", 1),
            ("0.001", 1),
            ("0.0025", 1),
            ("0.005", 3),
            ("0.01", 3),
            ("0.025", 3),
            ("0.05", 3),
            ("0.1", 3),
            ("0.25", 3),
            ("0.5", 3),
            ("1", 3),
            ("2.5", 3),
            ("5", 3),
            ("+Inf", 4),
        ]
        .iter()
        .map(|(le, n)| format!("{name}_bucket{{route=\"{route}\",le=\"{le}\"}} {n}"))
        .collect();
        assert_eq!(buckets, expected);
        assert_eq!(
            lines(&text, &format!("{name}_sum{{route=\"{route}\"}}")),
            [format!("{name}_sum{{route=\"{route}\"}} 7.0064")]
        );
        assert_eq!(
            lines(&text, &format!("{name}_count")),
            [
                format!("{name}_count{{route=\"/metrics\"}} 1"),
                format!("{name}_count{{route=\"{route}\"}} 4"),
            ]
        );
        assert_eq!(
            lines(&text, "kheish_http_requests_total{"),
            [
                r#"kheish_http_requests_total{route="/metrics",status="200"} 1"#,
                r#"kheish_http_requests_total{route="/v1/connectors/http/{name}",status="202"} 3"#,
                r#"kheish_http_requests_total{route="/v1/connectors/http/{name}",status="400"} 1"#,
            ]
        );
    }

    #[test]
    fn odd_latencies_do_not_poison_the_sum() {
        let m = Metrics::new();
        m.request("/x", 200, f64::NAN);
        m.request("/x", 200, -1.0);
        let text = m.render(&[]);
        assert!(text.contains("kheish_http_request_duration_seconds_sum{route=\"/x\"} 0\n"));
        assert!(text.contains(
            "kheish_http_request_duration_seconds_bucket{route=\"/x\",le=\"0.0005\"} 2\n"
        ));
    }

    #[test]
    fn extra_samples_group_into_families_and_escape() {
        let m = Metrics::new();
        m.add_collector(Box::new(|out: &mut Vec<Sample>| {
            out.push(Sample::counter(
                "kheish_store_commits_total",
                "Commits.",
                5.0,
            ))
        }));
        let extra = [
            Sample::gauge("kheish_queue_depth", "Queue depth\\by \"plugin\".\nx", 1.5)
                .label("plugin", "http"),
            Sample::counter("kheish_store_committed_events_total", "Events.", 12.0),
            Sample::gauge("kheish_queue_depth", "ignored", f64::INFINITY)
                .label("plugin", "a\"b\\c\nd"),
            Sample::gauge("kheish_nan", "NaN.", f64::NAN),
        ];
        let text = m.render(&extra);
        let tail = &text[text.find("# HELP kheish_store_commits_total").unwrap()..];
        assert_eq!(
            tail,
            "# HELP kheish_store_commits_total Commits.\n\
             # TYPE kheish_store_commits_total counter\n\
             kheish_store_commits_total 5\n\
             # HELP kheish_queue_depth Queue depth\\\\by \"plugin\".\\nx\n\
             # TYPE kheish_queue_depth gauge\n\
             kheish_queue_depth{plugin=\"http\"} 1.5\n\
             kheish_queue_depth{plugin=\"a\\\"b\\\\c\\nd\"} +Inf\n\
             # HELP kheish_store_committed_events_total Events.\n\
             # TYPE kheish_store_committed_events_total counter\n\
             kheish_store_committed_events_total 12\n\
             # HELP kheish_nan NaN.\n\
             # TYPE kheish_nan gauge\n\
             kheish_nan NaN\n"
        );
    }

    #[test]
    fn every_line_is_well_formed() {
        let m = Metrics::new();
        m.ingress(&id("external/discord-main"), IngressOutcome::Unauthorized);
        m.request("/healthz", 200, 0.01);
        for line in m.render(&[]).lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                assert!(
                    rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                    "{line}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
            let name = series.split('{').next().unwrap();
            assert!(valid_name(name), "{line}");
        }
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let m = std::sync::Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = std::sync::Arc::clone(&m);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.ingress(&id("http/orders"), IngressOutcome::Accepted);
                        m.request("/r", 202, 0.002);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = m.render(&[]);
        assert!(text.contains(
            "kheish_ingress_requests_total{connector=\"http/orders\",outcome=\"accepted\"} 4000\n"
        ));
        assert!(text.contains("kheish_http_request_duration_seconds_count{route=\"/r\"} 4000\n"));
    }
}
