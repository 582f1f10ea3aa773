//! The `http` delivery plugin (SPEC §11.2, §11.3, §11.5): one `POST` of the output envelope as
//! JSON to the reply target's URL, and the mapping of what came back to an [`AttemptOutcome`].
//!
//! The target address is parsed again at delivery time (an address that became invalid is a
//! terminal `invalid_target`). Requests go through [`crate::net::agent`] only, so they carry
//! the outbound hygiene: no proxy, no redirects, bounded time, capped body, public addresses
//! only unless the target opts in. No message built here names more of the URL than
//! [`crate::net::redact_target`] gives, and header values never appear in one.

use std::io::{self, Read};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::delivery::{AttemptOutcome, ProgressSink, Transport};
use crate::model::delivery::DeliveryJob;
use crate::model::reply::{HttpAddress, ReplyPlugin, TargetAddress};
use crate::net::{self, parse_retry_after, OutboundConfig};

/// The header carrying the attempt number (1 for the first send).
pub const ATTEMPT_HEADER: &str = "X-Kheish-Delivery-Attempt";

/// Headers the transport sets itself; an address header with one of these names is dropped so
/// the daemon's value is the only one sent.
const DAEMON_HEADERS: [&str; 4] = [
    "content-type",
    "idempotency-key",
    "user-agent",
    "x-kheish-delivery-attempt",
];

/// The `http` transport. Agents are built lazily, one per effective `allow_private_network`
/// value, and reused across deliveries so ureq can pool keep-alive connections. A connection
/// pooled by the private-network agent is never reused by the public-only one.
pub struct HttpTransport {
    /// Timeouts and body cap; `allow_private_network` here allows private targets for every
    /// delivery (test set-ups), on top of each target's own opt-in.
    config: OutboundConfig,
    /// Index 0: public addresses only; index 1: private networks allowed.
    agents: [OnceLock<ureq::Agent>; 2],
}

impl HttpTransport {
    /// The production transport: [`OutboundConfig::http_delivery`] (15 s total, 64 KiB body).
    pub fn new() -> HttpTransport {
        HttpTransport::with_config(OutboundConfig::http_delivery())
    }

    /// A transport with other limits (tests use short timeouts).
    pub fn with_config(config: OutboundConfig) -> HttpTransport {
        HttpTransport {
            config,
            agents: [OnceLock::new(), OnceLock::new()],
        }
    }

    fn agent(&self, allow_private_network: bool) -> &ureq::Agent {
        let allow = allow_private_network || self.config.allow_private_network;
        self.agents[usize::from(allow)].get_or_init(|| {
            net::agent(&OutboundConfig {
                allow_private_network: allow,
                ..self.config
            })
        })
    }

    /// Sends one attempt and also reports how many response-body bytes were read.
    fn attempt(&self, job: &DeliveryJob) -> (AttemptOutcome, u64) {
        let address = match parse_target(job) {
            Ok(address) => address,
            Err(outcome) => return (outcome, 0),
        };
        let target = net::redact_target(&address.url);
        let body = envelope(job).to_string();

        let mut request = self
            .agent(address.allow_private_network)
            .post(address.url.as_str());
        for (name, value) in &address.headers {
            if !DAEMON_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        let res = request
            .header("Content-Type", "application/json")
            .header(
                "Idempotency-Key",
                idempotency_key(&job.delivery.delivery_id),
            )
            .header(ATTEMPT_HEADER, job.attempt.to_string())
            .header("User-Agent", net::USER_AGENT)
            .send(body.as_bytes());

        let mut response = match res {
            Ok(response) => response,
            Err(err) => {
                let class = net::classify(&err);
                return (failure(class, &target), 0);
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // Read (and discard) at most the cap: a fully read small body lets ureq reuse the
        // connection; a larger one is abandoned and its connection closed. A body read error
        // does not change the outcome, which the status already decided.
        let n_read = read_capped(response.body_mut(), self.config.max_response_bytes);
        (status_outcome(status, retry_after, &target), n_read)
    }
}

impl Default for HttpTransport {
    fn default() -> HttpTransport {
        HttpTransport::new()
    }
}

impl Transport for HttpTransport {
    fn deliver(&self, job: &DeliveryJob, _progress: &mut dyn ProgressSink) -> AttemptOutcome {
        self.attempt(job).0
    }
}

/// `kheish:<delivery_id>`: stable across the retries of one delivery, new on replay (a replay
/// is a new delivery).
pub fn idempotency_key(delivery_id: &str) -> String {
    format!("kheish:{delivery_id}")
}

/// Re-validates the stored target (SPEC §11.2: targets are validated again when delivered).
fn parse_target(job: &DeliveryJob) -> Result<HttpAddress, AttemptOutcome> {
    let target = &job.delivery.target;
    let invalid = |problem: String| AttemptOutcome::Terminal {
        code: "invalid_target".to_string(),
        reason: format!("the http reply target is invalid: {problem}"),
        http_status: None,
    };
    if target.plugin != ReplyPlugin::Http {
        return Err(invalid(format!(
            "it names plugin `{}`, not `http`",
            target.plugin.as_str()
        )));
    }
    // The parse errors name members and header names, never the URL or a header value.
    match TargetAddress::parse(ReplyPlugin::Http, &target.address) {
        Ok(TargetAddress::Http(address)) => Ok(address),
        Ok(_) => Err(invalid("it is not an http address".to_string())),
        Err(problem) => Err(invalid(problem)),
    }
}

/// The JSON body of every attempt.
fn envelope(job: &DeliveryJob) -> serde_json::Value {
    let d = &job.delivery;
    serde_json::json!({
        "delivery_id": d.delivery_id,
        "attempt": job.attempt,
        "run_id": d.run_id,
        "session_id": d.session_id,
        "output_id": d.output_id,
        "connector": d.connector,
        "content": job.content,
        "parts": job.parts,
    })
}

/// Reads at most `cap` bytes of `body` and discards them; returns how many were read.
fn read_capped(body: &mut ureq::Body, cap: u64) -> u64 {
    let reader = body.with_config().limit(cap).reader();
    io::copy(&mut reader.take(cap), &mut io::sink()).unwrap_or(0)
}

/// The outcome of a response with `status`.
fn status_outcome(status: u16, retry_after: Option<Duration>, target: &str) -> AttemptOutcome {
    let http_status = Some(status);
    match status {
        200..=299 => AttemptOutcome::Delivered { http_status },
        300..=399 => AttemptOutcome::Terminal {
            code: "redirect_not_followed".to_string(),
            reason: format!(
                "`{target}` answered HTTP {status} (a redirect); redirects are not followed, \
                 point the reply target at the final URL"
            ),
            http_status,
        },
        408 | 425 | 429 | 500..=599 => AttemptOutcome::Retryable {
            code: format!("http_status_{status}"),
            reason: format!("`{target}` answered HTTP {status}"),
            http_status,
            retry_after,
        },
        400..=499 => AttemptOutcome::Terminal {
            code: format!("http_status_{status}"),
            reason: format!("`{target}` answered HTTP {status}"),
            http_status,
        },
        _ => AttemptOutcome::Retryable {
            code: format!("http_status_{status}"),
            reason: format!("`{target}` answered with unexpected HTTP status {status}"),
            http_status,
            retry_after,
        },
    }
}

/// The outcome of a request that got no response.
fn failure(class: net::FailureClass, target: &str) -> AttemptOutcome {
    let code = class.code().to_string();
    let reason = class.reason(target);
    if class.is_retryable() {
        AttemptOutcome::Retryable {
            code,
            reason,
            http_status: None,
            retry_after: None,
        }
    } else {
        AttemptOutcome::Terminal {
            code,
            reason,
            http_status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::{SocketAddr, TcpListener};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{mpsc, Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::Instant;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::model::delivery::{Delivery, DeliveryStatus};
    use crate::model::reply::ReplyTarget;
    use crate::net::parse_http_date;

    /// Bound on every wait for the local receiver; tests finish far sooner.
    const WAIT: Duration = Duration::from_secs(10);
    const CAP: u64 = 64 * 1024;

    /// How the receiver answers one request.
    #[derive(Clone)]
    enum Reply {
        Status(u16),
        WithHeader(u16, &'static str, String),
        /// 200 with a `Content-Length` body of this many bytes, pulled lazily and counted.
        Huge(u64),
    }

    /// One request as the receiver saw it.
    struct Seen {
        url: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn header_count(&self, name: &str) -> usize {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .count()
        }
    }

    /// A tiny_http receiver on 127.0.0.1:0 that records requests and answers from a script
    /// (the last reply repeats). Dropping it unblocks and joins its thread.
    struct Receiver {
        addr: SocketAddr,
        server: Arc<tiny_http::Server>,
        requests: mpsc::Receiver<Seen>,
        /// One message per finished `respond` (the answer was written or the client went away).
        responded: mpsc::Receiver<()>,
        /// Body bytes the server pulled for `Reply::Huge`.
        pulled: Arc<AtomicU64>,
        thread: Option<JoinHandle<()>>,
    }

    impl Receiver {
        fn start(script: Vec<Reply>) -> Receiver {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
            let addr = server.server_addr().to_ip().unwrap();
            let (req_tx, requests) = mpsc::channel();
            let (done_tx, responded) = mpsc::channel();
            let pulled = Arc::new(AtomicU64::new(0));
            let script = Mutex::new(VecDeque::from(script));
            let thread = {
                let server = Arc::clone(&server);
                let pulled = Arc::clone(&pulled);
                std::thread::spawn(move || {
                    while let Ok(mut request) = server.recv() {
                        let mut body = String::new();
                        let _ = request.as_reader().read_to_string(&mut body);
                        let _ = req_tx.send(Seen {
                            url: request.url().to_string(),
                            headers: request
                                .headers()
                                .iter()
                                .map(|h| (h.field.to_string(), h.value.to_string()))
                                .collect(),
                            body,
                        });
                        let reply = {
                            let mut script = script.lock().unwrap();
                            if script.len() > 1 {
                                script.pop_front().unwrap()
                            } else {
                                script.front().cloned().unwrap_or(Reply::Status(200))
                            }
                        };
                        let _ = match reply {
                            Reply::Status(code) => request.respond(
                                tiny_http::Response::from_string("{}").with_status_code(code),
                            ),
                            Reply::WithHeader(code, name, value) => request.respond(
                                tiny_http::Response::from_string("{}")
                                    .with_status_code(code)
                                    .with_header(
                                        tiny_http::Header::from_bytes(name, value).unwrap(),
                                    ),
                            ),
                            Reply::Huge(len) => request.respond(tiny_http::Response::new(
                                tiny_http::StatusCode(200),
                                Vec::new(),
                                Counted {
                                    inner: io::repeat(b'x').take(len),
                                    pulled: Arc::clone(&pulled),
                                },
                                Some(len as usize),
                                None,
                            )),
                        };
                        let _ = done_tx.send(());
                    }
                })
            };
            Receiver {
                addr,
                server,
                requests,
                responded,
                pulled,
                thread: Some(thread),
            }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        /// The address of a target on this receiver that allows private networks.
        fn address(&self, path: &str) -> String {
            serde_json::json!({"url": self.url(path), "allow_private_network": true}).to_string()
        }

        fn next(&self) -> Seen {
            self.requests
                .recv_timeout(WAIT)
                .expect("the receiver got no request in time")
        }

        fn assert_nothing_more(&self) {
            assert!(self.requests.try_recv().is_err(), "unexpected request");
        }
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// A reader that counts what the server pulled from it.
    struct Counted<R> {
        inner: R,
        pulled: Arc<AtomicU64>,
    }

    impl<R: Read> Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.pulled.fetch_add(n as u64, Ordering::Relaxed);
            Ok(n)
        }
    }

    /// A raw listener that never accepts; with it non-blocking, `accept` tells whether any
    /// client ever connected (the kernel queues a connection before `connect` returns).
    struct Silent(TcpListener);

    impl Silent {
        fn bind() -> Silent {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            Silent(listener)
        }

        fn port(&self) -> u16 {
            self.0.local_addr().unwrap().port()
        }

        fn assert_never_connected(&self) {
            match self.0.accept() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok((_, peer)) => panic!("a connection from {peer} reached the listener"),
                Err(e) => panic!("accept failed: {e}"),
            }
        }
    }

    struct NoProgress;

    impl ProgressSink for NoProgress {
        fn save(&mut self, _: &serde_json::Value) -> Result<(), String> {
            Ok(())
        }
    }

    fn test_config() -> OutboundConfig {
        OutboundConfig {
            total_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_response_bytes: CAP,
            allow_private_network: false,
        }
    }

    fn transport() -> HttpTransport {
        HttpTransport::with_config(test_config())
    }

    fn job(id: &str, address: &str, attempt: u32) -> DeliveryJob {
        DeliveryJob {
            delivery: Delivery {
                session_id: "ses_1".to_string(),
                target_key: "http:test".to_string(),
                attempts: attempt.saturating_sub(1),
                ..Delivery::sample(
                    id,
                    ReplyTarget {
                        plugin: ReplyPlugin::Http,
                        address: address.to_string(),
                    },
                    DeliveryStatus::Pending,
                )
            },
            attempt,
            content: Some("hello".to_string()),
            parts: None,
            assets: Vec::new(),
        }
    }

    fn deliver(transport: &HttpTransport, job: &DeliveryJob) -> AttemptOutcome {
        transport.deliver(job, &mut NoProgress)
    }

    fn code_of(outcome: &AttemptOutcome) -> (&'static str, &str) {
        match outcome {
            AttemptOutcome::Delivered { .. } => ("delivered", ""),
            AttemptOutcome::Retryable { code, .. } => ("retryable", code),
            AttemptOutcome::Terminal { code, .. } => ("terminal", code),
        }
    }

    fn assert_outcome(outcome: &AttemptOutcome, kind: &str, code: &str) {
        assert_eq!(code_of(outcome), (kind, code), "{outcome:?}");
    }

    fn retry_after_of(outcome: &AttemptOutcome) -> Option<Duration> {
        match outcome {
            AttemptOutcome::Retryable { retry_after, .. } => *retry_after,
            other => panic!("expected a retryable outcome, got {other:?}"),
        }
    }

    /// Formats `t` as an IMF-fixdate (the inverse of `days_from_civil`, for tests only).
    fn imf_fixdate(t: SystemTime) -> String {
        const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        format!(
            "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
            DAYS[days.rem_euclid(7) as usize],
            MONTHS[(month - 1) as usize],
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }

    #[test]
    fn a_2xx_is_delivered_with_a_stable_idempotency_key() {
        let receiver = Receiver::start(vec![Reply::Status(200)]);
        let transport = transport();
        let first = job("dlv_abc", &receiver.address("/hook?x=1"), 1);
        assert_eq!(
            deliver(&transport, &first),
            AttemptOutcome::Delivered {
                http_status: Some(200)
            }
        );
        let seen = receiver.next();
        assert_eq!(seen.url, "/hook?x=1");
        assert_eq!(seen.header("Idempotency-Key"), Some("kheish:dlv_abc"));
        assert_eq!(seen.header("X-Kheish-Delivery-Attempt"), Some("1"));
        assert_eq!(seen.header("Content-Type"), Some("application/json"));
        assert_eq!(seen.header("User-Agent"), Some(net::USER_AGENT));
        let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "delivery_id": "dlv_abc", "attempt": 1, "run_id": "run_1", "session_id": "ses_1",
                "output_id": "out_1", "connector": "http/orders", "content": "hello", "parts": null,
            })
        );

        // The same delivery sent again (a retry) carries the same key and the next attempt.
        let second = job("dlv_abc", &receiver.address("/hook?x=1"), 2);
        assert_outcome(&deliver(&transport, &second), "delivered", "");
        let seen = receiver.next();
        assert_eq!(seen.header("Idempotency-Key"), Some("kheish:dlv_abc"));
        assert_eq!(seen.header("X-Kheish-Delivery-Attempt"), Some("2"));
        receiver.assert_nothing_more();
    }

    #[test]
    fn address_headers_are_sent_but_never_override_the_daemons() {
        let receiver = Receiver::start(vec![Reply::Status(204)]);
        let address = serde_json::json!({
            "url": receiver.url("/h"),
            "allow_private_network": true,
            "headers": {"X-Tenant": "acme", "User-Agent": "spoof", "X-Kheish-Delivery-Attempt": "99"},
        });
        let outcome = deliver(&transport(), &job("dlv_h", &address.to_string(), 3));
        assert_outcome(&outcome, "delivered", "");
        let seen = receiver.next();
        assert_eq!(seen.header("X-Tenant"), Some("acme"));
        assert_eq!(seen.header("User-Agent"), Some(net::USER_AGENT));
        assert_eq!(seen.header_count("User-Agent"), 1);
        assert_eq!(seen.header("X-Kheish-Delivery-Attempt"), Some("3"));
        assert_eq!(seen.header_count("X-Kheish-Delivery-Attempt"), 1);
    }

    #[test]
    fn a_5xx_is_retryable_and_the_retry_is_delivered() {
        let receiver = Receiver::start(vec![Reply::Status(500), Reply::Status(200)]);
        let transport = transport();
        let outcome = deliver(&transport, &job("dlv_5", &receiver.address("/"), 1));
        assert_outcome(&outcome, "retryable", "http_status_500");
        assert_eq!(retry_after_of(&outcome), None);
        let outcome = deliver(&transport, &job("dlv_5", &receiver.address("/"), 2));
        assert_outcome(&outcome, "delivered", "");
        let (a, b) = (receiver.next(), receiver.next());
        assert_eq!(a.header("Idempotency-Key"), b.header("Idempotency-Key"));
    }

    #[test]
    fn retryable_statuses() {
        for status in [408, 425, 502, 503] {
            let receiver = Receiver::start(vec![Reply::Status(status)]);
            let outcome = deliver(&transport(), &job("dlv_r", &receiver.address("/"), 1));
            assert_outcome(&outcome, "retryable", &format!("http_status_{status}"));
        }
        let receiver = Receiver::start(vec![Reply::WithHeader(503, "Retry-After", "3".into())]);
        let outcome = deliver(&transport(), &job("dlv_r", &receiver.address("/"), 1));
        assert_eq!(retry_after_of(&outcome), Some(Duration::from_secs(3)));
    }

    #[test]
    fn a_429_carries_retry_after_seconds() {
        let receiver = Receiver::start(vec![Reply::WithHeader(429, "Retry-After", "7".into())]);
        let outcome = deliver(&transport(), &job("dlv_429", &receiver.address("/"), 1));
        assert_outcome(&outcome, "retryable", "http_status_429");
        assert_eq!(retry_after_of(&outcome), Some(Duration::from_secs(7)));
    }

    #[test]
    fn a_429_carries_retry_after_as_an_http_date() {
        let date = imf_fixdate(SystemTime::now() + Duration::from_secs(120));
        let receiver = Receiver::start(vec![Reply::WithHeader(429, "Retry-After", date.clone())]);
        let outcome = deliver(&transport(), &job("dlv_429d", &receiver.address("/"), 1));
        let delay = retry_after_of(&outcome).expect("a delay from the HTTP-date");
        assert!(
            (Duration::from_secs(110)..=Duration::from_secs(120)).contains(&delay),
            "{date}: {delay:?}"
        );
        let receiver = Receiver::start(vec![Reply::WithHeader(429, "Retry-After", "soon".into())]);
        let outcome = deliver(&transport(), &job("dlv_429g", &receiver.address("/"), 1));
        assert_eq!(retry_after_of(&outcome), None);
    }

    #[test]
    fn other_4xx_are_terminal() {
        for status in [400, 401, 404, 410, 422] {
            let receiver = Receiver::start(vec![Reply::Status(status)]);
            let outcome = deliver(&transport(), &job("dlv_4", &receiver.address("/"), 1));
            assert_outcome(&outcome, "terminal", &format!("http_status_{status}"));
        }
    }

    #[test]
    fn redirects_are_not_followed() {
        let elsewhere = Silent::bind();
        let location = format!(
            "http://127.0.0.1:{}/elsewhere?token=LOCSECRET",
            elsewhere.port()
        );
        for status in [301, 302, 307, 308] {
            let receiver = Receiver::start(vec![Reply::WithHeader(
                status,
                "Location",
                location.clone(),
            )]);
            let outcome = deliver(&transport(), &job("dlv_301", &receiver.address("/a"), 1));
            assert_outcome(&outcome, "terminal", "redirect_not_followed");
            let AttemptOutcome::Terminal {
                reason,
                http_status,
                ..
            } = &outcome
            else {
                unreachable!()
            };
            assert_eq!(*http_status, Some(status));
            assert!(
                reason.contains(&format!("`http://{}`", receiver.addr)),
                "{reason}"
            );
            assert!(reason.contains(&status.to_string()), "{reason}");
            assert!(
                !reason.contains("elsewhere") && !reason.contains("LOCSECRET"),
                "{reason}"
            );
            receiver.next();
        }
        elsewhere.assert_never_connected();
    }

    #[test]
    fn a_hanging_target_times_out_within_the_bound() {
        // Never accepted: the kernel completes the handshake and the request sits unanswered.
        let hang = Silent::bind();
        let transport = HttpTransport::with_config(OutboundConfig {
            total_timeout: Duration::from_millis(300),
            ..test_config()
        });
        let address = serde_json::json!({
            "url": format!("http://127.0.0.1:{}/slow", hang.port()),
            "allow_private_network": true,
        });
        let started = Instant::now();
        let outcome = deliver(&transport, &job("dlv_t", &address.to_string(), 1));
        let elapsed = started.elapsed();
        assert_outcome(&outcome, "retryable", "timeout");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }

    #[test]
    fn a_closed_connection_is_a_connection_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let closer = std::thread::spawn(move || {
            // Accept one connection and drop it without a byte of answer.
            let _ = listener.accept();
        });
        let address = serde_json::json!({
            "url": format!("http://127.0.0.1:{port}/"),
            "allow_private_network": true,
        });
        let outcome = deliver(&transport(), &job("dlv_c", &address.to_string(), 1));
        assert_outcome(&outcome, "retryable", "connection_failed");
        closer.join().unwrap();
    }

    #[test]
    fn a_refused_connection_is_a_connection_failure() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let address = serde_json::json!({
            "url": format!("http://127.0.0.1:{port}/"),
            "allow_private_network": true,
        });
        let outcome = deliver(&transport(), &job("dlv_c", &address.to_string(), 1));
        assert_outcome(&outcome, "retryable", "connection_failed");
    }

    #[test]
    fn an_oversize_body_is_read_only_up_to_the_cap() {
        const HUGE: u64 = 10 * 1024 * 1024;
        let receiver = Receiver::start(vec![Reply::Huge(HUGE)]);
        let transport = transport();
        let (outcome, n_read) = transport.attempt(&job("dlv_big", &receiver.address("/"), 1));
        assert_outcome(&outcome, "delivered", "");
        assert_eq!(n_read, CAP);
        receiver.next();
        // The server finishes its answer only because the client closed the connection: had
        // the client kept it open without reading, the write would block until the bound.
        receiver
            .responded
            .recv_timeout(WAIT)
            .expect("the server is still writing: the connection was not closed");
        let pulled = receiver.pulled.load(Ordering::Relaxed);
        assert!(pulled < HUGE, "the whole body was sent ({pulled} bytes)");
    }

    #[test]
    fn loopback_targets_are_blocked_without_the_flag() {
        let silent = Silent::bind();
        for url in [
            format!("http://127.0.0.1:{}/hook", silent.port()),
            format!("http://localhost:{}/hook", silent.port()),
            format!("http://[::ffff:127.0.0.1]:{}/hook", silent.port()),
        ] {
            let outcome = deliver(&transport(), &job("dlv_b", &url, 1));
            assert_outcome(&outcome, "terminal", "blocked_private_address");
            let json = serde_json::json!({"url": url, "allow_private_network": false});
            let outcome = deliver(&transport(), &job("dlv_b", &json.to_string(), 1));
            assert_outcome(&outcome, "terminal", "blocked_private_address");
        }
        silent.assert_never_connected();
    }

    #[test]
    fn localhost_is_delivered_with_the_flag() {
        let receiver = Receiver::start(vec![Reply::Status(200)]);
        let address = serde_json::json!({
            "url": format!("http://localhost:{}/hook", receiver.addr.port()),
            "allow_private_network": true,
        });
        let outcome = deliver(&transport(), &job("dlv_l", &address.to_string(), 1));
        assert_outcome(&outcome, "delivered", "");
        assert_eq!(receiver.next().url, "/hook");
    }

    #[test]
    fn the_transport_wide_flag_allows_private_targets() {
        let receiver = Receiver::start(vec![Reply::Status(200)]);
        let transport = HttpTransport::with_config(OutboundConfig {
            allow_private_network: true,
            ..test_config()
        });
        let outcome = deliver(&transport, &job("dlv_w", &receiver.url("/"), 1));
        assert_outcome(&outcome, "delivered", "");
    }

    #[test]
    fn failure_reasons_never_carry_the_path_query_or_header_values() {
        let receiver = Receiver::start(vec![Reply::Status(500)]);
        let address = serde_json::json!({
            "url": receiver.url("/hooks/PATHSECRET?token=SECRET"),
            "headers": {"X-Api-Token": "SECRET2"},
            "allow_private_network": true,
        });
        let outcome = deliver(&transport(), &job("dlv_s", &address.to_string(), 1));
        assert_outcome(&outcome, "retryable", "http_status_500");
        let seen = receiver.next();
        assert_eq!(seen.header("X-Api-Token"), Some("SECRET2"));
        let text = format!("{outcome:?}");
        assert!(
            !text.contains("SECRET") && !text.contains("hooks"),
            "{text}"
        );
        assert!(
            text.contains(&format!("http://{}", receiver.addr)),
            "{text}"
        );

        // The same holds for failures without a response: blocked, timed out, refused.
        let silent = Silent::bind();
        let url = format!(
            "http://127.0.0.1:{}/hooks/PATHSECRET?token=SECRET",
            silent.port()
        );
        let blocked = serde_json::json!({"url": url, "headers": {"X-Api-Token": "SECRET2"}});
        let timing_out = serde_json::json!({
            "url": url, "headers": {"X-Api-Token": "SECRET2"}, "allow_private_network": true,
        });
        let quick = HttpTransport::with_config(OutboundConfig {
            total_timeout: Duration::from_millis(200),
            ..test_config()
        });
        for (address, code) in [
            (blocked, "blocked_private_address"),
            (timing_out, "timeout"),
        ] {
            let outcome = deliver(&quick, &job("dlv_s", &address.to_string(), 1));
            assert_eq!(code_of(&outcome).1, code, "{outcome:?}");
            let text = format!("{outcome:?}");
            assert!(
                !text.contains("SECRET") && !text.contains("hooks"),
                "{text}"
            );
        }
    }

    #[test]
    fn invalid_targets_are_terminal_and_send_nothing() {
        let silent = Silent::bind();
        let url = format!("http://127.0.0.1:{}/h", silent.port());
        for (address, plugin) in [
            (
                serde_json::json!({"url": url, "headers": {"Authorization": "Bearer SECRET"},
                    "allow_private_network": true})
                .to_string(),
                ReplyPlugin::Http,
            ),
            (
                serde_json::json!({"url": url, "headers": {"X-Bad": "a\u{1}SECRET"},
                    "allow_private_network": true})
                .to_string(),
                ReplyPlugin::Http,
            ),
            ("ftp://example.com/SECRET".to_string(), ReplyPlugin::Http),
            (
                "https://user:SECRET@example.com/".to_string(),
                ReplyPlugin::Http,
            ),
            (
                r#"{"connector":"c","route":{}}"#.to_string(),
                ReplyPlugin::External,
            ),
        ] {
            let mut job = job("dlv_i", &address, 1);
            job.delivery.target.plugin = plugin;
            let outcome = deliver(&transport(), &job);
            assert_outcome(&outcome, "terminal", "invalid_target");
            let text = format!("{outcome:?}");
            assert!(!text.contains("SECRET"), "{text}");
        }
        silent.assert_never_connected();
    }

    fn check_retry_after(value: &str, expected: Option<u64>) {
        // Sun, 06 Nov 1994 08:49:37 GMT minus one minute.
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777 - 60);
        assert_eq!(
            parse_retry_after(value, now),
            expected.map(Duration::from_secs),
            "{value:?}"
        );
    }

    #[test]
    fn retry_after_values() {
        check_retry_after("7", Some(7));
        check_retry_after(" 120 ", Some(120));
        check_retry_after("0", Some(0));
        check_retry_after("99999999999999999999999", Some(u64::MAX));
        check_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", Some(60));
        check_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", Some(60));
        check_retry_after("Sun Nov  6 08:49:37 1994", Some(60));
        check_retry_after("Wed Nov 16 08:49:37 1994", Some(60 + 10 * 86_400));
        // A date in the past means "now".
        check_retry_after("Sun, 06 Nov 1994 08:48:00 GMT", Some(0));
        check_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", Some(0));
        // Before the epoch is outside what httpdate represents: no usable hint, backoff applies.
        check_retry_after("Wed, 31 Dec 1969 23:59:59 GMT", None);
        // Garbage gives nothing, never a panic.
        for value in [
            "",
            " ",
            "-1",
            "+5",
            "1.5",
            "7s",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37:00 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "Funday, 06-Nov-94 08:49:37 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sunday, 06-Nov-94-1 08:49:37 GMT",
            "Sunday Nov  6 08:49:37 1994",
            "Sun Nov  6 08:49:37 94",
            "Sun Nov 106 08:49:37 1994",
            "Sün, 06 Nov 1994 08:49:37 GMT",
            "Sun,",
            ",",
            "Sun",
        ] {
            check_retry_after(value, None);
        }
    }

    #[test]
    fn http_dates_map_to_the_right_instant() {
        for (value, secs) in [
            ("Thu, 01 Jan 1970 00:00:00 GMT", 0),
            ("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_777),
            ("Thu, 29 Feb 2024 12:00:00 GMT", 1_709_208_000),
            ("Tue, 19 Jan 2038 03:14:08 GMT", 2_147_483_648),
            ("Friday, 31-Dec-99 23:59:59 GMT", 946_684_799),
            ("Saturday, 01-Jan-00 00:00:00 GMT", 946_684_800),
            ("Sat Jan  1 00:00:00 2000", 946_684_800),
        ] {
            assert_eq!(
                parse_http_date(value),
                Some(UNIX_EPOCH + Duration::from_secs(secs)),
                "{value}"
            );
        }
        assert_eq!(parse_http_date("Thu, 29 Feb 2023 12:00:00 GMT"), None);
        let now = SystemTime::now();
        let formatted = imf_fixdate(now);
        let parsed = parse_http_date(&formatted).unwrap();
        assert!(now.duration_since(parsed).unwrap() < Duration::from_secs(1));
    }

    #[test]
    fn retry_after_never_panics_on_prefixes_and_odd_bytes() {
        for valid in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            for (idx, _) in valid.char_indices() {
                let _ = parse_retry_after(&valid[..idx], SystemTime::now());
                let _ = parse_retry_after(&valid[idx..], SystemTime::now());
                let odd = format!("{}\u{e9}{}", &valid[..idx], &valid[idx..]);
                let _ = parse_retry_after(&odd, SystemTime::now());
            }
        }
        let _ = parse_retry_after("Mon, 31 Dec 9999 23:59:59 GMT", UNIX_EPOCH);
        let _ = parse_retry_after("Mon, 01 Jan 0000 00:00:00 GMT", SystemTime::now());
    }
}
