//! The pure half of the sidecar supervisor: what should run ([`Desired`], built from a
//! connector set), the timings (SPEC §10.6 defaults, `KHEISH_SIDECAR_*` overrides), the
//! environment of a child ([`child_env`]), the restart backoff ([`restart_delay`]) and the
//! per-stream log-line budget ([`LineBudget`]). No I/O, no clock it is not given.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::knobs::{self, Refused};
use crate::config::ExternalMode;
use crate::registry::ConnectorSet;
use crate::secrets::Secret;

/// Variables a child inherits from the daemon when they are set (SPEC §10.6): the basics, TLS
/// trust stores and the Python path, so an interpreter in a virtualenv finds its packages.
/// Every other variable of the daemon (admin tokens, `KHEISH_MASTER_KEY`, other connectors'
/// `*_env` secrets) is cleared.
pub const INHERITED_ENV: [&str; 10] = [
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
];

pub const ENV_NAME: &str = "KHEISH_EXTERNAL_CONNECTOR_NAME";
pub const ENV_BASE_URL: &str = "KHEISH_EXTERNAL_CONNECTOR_BASE_URL";
pub const ENV_DAEMON_BASE_URL: &str = "KHEISH_EXTERNAL_CONNECTOR_DAEMON_BASE_URL";
pub const ENV_SHARED_TOKEN: &str = "KHEISH_EXTERNAL_CONNECTOR_SHARED_TOKEN";
pub const ENV_CREDENTIAL_TOKEN: &str = "KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_TOKEN";
pub const ENV_CREDENTIAL_KEYS_JSON: &str = "KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_KEYS_JSON";

/// Supervision timings. The defaults are SPEC §10.6's; each can be overridden through a
/// `KHEISH_SIDECAR_*` variable (milliseconds), as the delivery policy is through
/// `KHEISH_DELIVERY_*` — tests and benchmarks use short ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// `KHEISH_SIDECAR_INITIAL_RESTART_MS` (1000): the first restart delay; doubles per failure.
    pub initial_restart: Duration,
    /// `KHEISH_SIDECAR_MAX_RESTART_MS` (60000): the cap of the doubling (jitter comes on top).
    pub max_restart: Duration,
    /// `KHEISH_SIDECAR_READY_TIMEOUT_MS` (20000): how long a new child may take to be ready.
    pub ready_timeout: Duration,
    /// The longest pause between two readiness probes of a starting child (250 ms; the first
    /// pauses are shorter; not configurable).
    pub ready_poll: Duration,
    /// `KHEISH_SIDECAR_HEALTH_INTERVAL_MS` (5000): health polls of a running sidecar.
    pub health_interval: Duration,
    /// `KHEISH_SIDECAR_STOP_GRACE_MS` (10000): SIGTERM to SIGKILL.
    pub stop_grace: Duration,
}

impl Default for Timings {
    fn default() -> Timings {
        Timings {
            initial_restart: Duration::from_secs(1),
            max_restart: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(20),
            ready_poll: Duration::from_millis(250),
            health_interval: Duration::from_secs(5),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// An invalid `KHEISH_SIDECAR_*` value (the daemon refuses to start, exit 4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}=`{value}` is invalid: {problem}")]
pub struct TimingError {
    pub var: &'static str,
    pub value: String,
    pub problem: String,
}

impl Timings {
    /// Reads the `KHEISH_SIDECAR_*` variables through `env`; unset or empty means the default.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Timings, TimingError> {
        let d = Timings::default();
        let read = |var: &'static str, default: Duration, min: u64, max: u64| match knobs::number(
            env, var, min, max,
        ) {
            Ok(ms) => Ok(ms.map_or(default, Duration::from_millis)),
            Err(Refused::OutOfRange(value)) => Err(TimingError {
                var,
                value,
                problem: format!("must be between {min} and {max} milliseconds"),
            }),
            Err(Refused::NotANumber(value)) => Err(TimingError {
                var,
                value,
                problem: "must be a whole number of milliseconds".into(),
            }),
        };
        let t = Timings {
            initial_restart: read(
                "KHEISH_SIDECAR_INITIAL_RESTART_MS",
                d.initial_restart,
                1,
                3_600_000,
            )?,
            max_restart: read("KHEISH_SIDECAR_MAX_RESTART_MS", d.max_restart, 1, 3_600_000)?,
            ready_timeout: read(
                "KHEISH_SIDECAR_READY_TIMEOUT_MS",
                d.ready_timeout,
                100,
                3_600_000,
            )?,
            ready_poll: d.ready_poll,
            health_interval: read(
                "KHEISH_SIDECAR_HEALTH_INTERVAL_MS",
                d.health_interval,
                100,
                3_600_000,
            )?,
            stop_grace: read("KHEISH_SIDECAR_STOP_GRACE_MS", d.stop_grace, 100, 600_000)?,
        };
        if t.max_restart < t.initial_restart {
            return Err(TimingError {
                var: "KHEISH_SIDECAR_MAX_RESTART_MS",
                value: t.max_restart.as_millis().to_string(),
                problem: format!(
                    "must not be below KHEISH_SIDECAR_INITIAL_RESTART_MS ({})",
                    t.initial_restart.as_millis()
                ),
            });
        }
        Ok(t)
    }
}

/// The delay before restart number `attempt` (0 for the first failure since the child was last
/// ready): `min(initial × 2^attempt, max)` plus up to a fifth of that as jitter, `unit` being a
/// random number in `[0, 1)`. Jitter keeps several crashing sidecars from restarting in step.
pub fn restart_delay(attempt: u32, t: &Timings, unit: f64) -> Duration {
    let doubled = t
        .initial_restart
        .saturating_mul(2u32.saturating_pow(attempt.min(31)));
    let base = doubled.min(t.max_restart);
    base + base.mul_f64(unit.clamp(0.0, 1.0) / 5.0)
}

/// What one `child_process` connector runs: everything a change of which restarts the child.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub name: String,
    pub base_url: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `ENV_KEY -> secret ref`; the values are served through leases, never put in the env.
    pub credential_slots: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    /// The shared token's current value: the child gets it and the daemon presents it.
    pub shared_token: Option<Secret>,
}

/// A `remote_http` connector whose health the supervisor polls.
#[derive(Debug, Clone)]
pub struct RemoteSpec {
    pub name: String,
    pub base_url: String,
    pub allow_private_network: bool,
    pub shared_token: Option<Secret>,
}

/// One external connector the supervisor looks after.
#[derive(Debug, Clone)]
pub enum Spec {
    Child(ChildSpec),
    Remote(RemoteSpec),
}

fn same_secret(a: &Option<Secret>, b: &Option<Secret>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.expose() == b.expose(),
        _ => false,
    }
}

impl Spec {
    /// True when `other` would run the same way (no restart needed on a reload).
    pub fn same_as(&self, other: &Spec) -> bool {
        match (self, other) {
            (Spec::Child(a), Spec::Child(b)) => {
                a.name == b.name
                    && a.base_url == b.base_url
                    && a.command == b.command
                    && a.args == b.args
                    && a.env == b.env
                    && a.credential_slots == b.credential_slots
                    && a.working_dir == b.working_dir
                    && same_secret(&a.shared_token, &b.shared_token)
            }
            (Spec::Remote(a), Spec::Remote(b)) => {
                a.name == b.name
                    && a.base_url == b.base_url
                    && a.allow_private_network == b.allow_private_network
                    && same_secret(&a.shared_token, &b.shared_token)
            }
            _ => false,
        }
    }
}

/// Every external connector of a set, by name.
pub type Desired = BTreeMap<String, Spec>;

/// What should run for `set`.
pub fn desired(set: &ConnectorSet) -> Desired {
    let mut out = Desired::new();
    for (name, rt) in &set.external {
        let c = &rt.config;
        let shared_token = rt.shared_token.as_ref().map(|v| v.current().clone());
        let spec = match (c.mode, &c.child_process) {
            (ExternalMode::ChildProcess, Some(cp)) => Spec::Child(ChildSpec {
                name: name.clone(),
                base_url: c.base_url.clone(),
                command: cp.command.clone(),
                args: cp.args.clone(),
                env: cp.env.clone(),
                credential_slots: cp.credential_slots.clone(),
                working_dir: cp.working_dir.clone(),
                shared_token,
            }),
            // Validation requires the block in child_process mode; without it nothing can run.
            (ExternalMode::ChildProcess, None) => continue,
            (ExternalMode::RemoteHttp, _) => Spec::Remote(RemoteSpec {
                name: name.clone(),
                base_url: c.base_url.clone(),
                allow_private_network: c.allow_private_network,
                shared_token,
            }),
        };
        out.insert(name.clone(), spec);
    }
    out
}

/// The environment of a child, in the order SPEC §10.6 gives: the allowed inherited variables
/// (looked up through `inherited`), then the connector's `env`, then the reserved
/// `KHEISH_EXTERNAL_CONNECTOR_*` variables (validation keeps `env` off those six names, and
/// being last they win anyway). `credential_token` is the spawn's lease token, present exactly
/// when the connector declares credential slots. Holds secrets: never log it.
pub fn child_env(
    spec: &ChildSpec,
    daemon_base_url: &str,
    credential_token: Option<&Secret>,
    inherited: &dyn Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = INHERITED_ENV
        .iter()
        .filter_map(|k| inherited(k).map(|v| (k.to_string(), v)))
        .collect();
    env.extend(spec.env.iter().cloned());
    env.push((ENV_NAME.into(), spec.name.clone()));
    env.push((ENV_BASE_URL.into(), spec.base_url.clone()));
    env.push((ENV_DAEMON_BASE_URL.into(), daemon_base_url.to_string()));
    if let Some(token) = &spec.shared_token {
        env.push((ENV_SHARED_TOKEN.into(), token.expose().to_string()));
    }
    if let Some(token) = credential_token {
        let keys: Vec<&str> = spec
            .credential_slots
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        env.push((ENV_CREDENTIAL_TOKEN.into(), token.expose().to_string()));
        env.push((
            ENV_CREDENTIAL_KEYS_JSON.into(),
            serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into()),
        ));
    }
    env
}

/// The base URL a child reaches the daemon at: the listen address, with an unspecified IP
/// (`0.0.0.0`, `::`) replaced by the loopback address of its family.
pub fn daemon_base_url(listen: std::net::SocketAddr) -> String {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

/// A rate limit on the lines one stream of a child writes into the daemon log: at most
/// `per_window` lines per `window`; the rest are counted and reported once the next window
/// opens (or the stream ends), so a child printing in a loop costs a few log lines a window.
#[derive(Debug)]
pub struct LineBudget {
    per_window: u32,
    window: Duration,
    window_start: Option<Instant>,
    used: u32,
    dropped: u64,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineVerdict {
    /// Log the line.
    pub log: bool,
    /// Lines dropped in the window that just closed, to report before this line (0: none).
    pub report_dropped: u64,
}

impl LineBudget {
    pub fn new(per_window: u32, window: Duration) -> LineBudget {
        LineBudget {
            per_window,
            window,
            window_start: None,
            used: 0,
            dropped: 0,
        }
    }

    /// Accounts one line written at `now`.
    pub fn line(&mut self, now: Instant) -> LineVerdict {
        let mut report_dropped = 0;
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if expired {
            report_dropped = std::mem::take(&mut self.dropped);
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            LineVerdict {
                log: true,
                report_dropped,
            }
        } else {
            self.dropped += 1;
            LineVerdict {
                log: false,
                report_dropped,
            }
        }
    }

    /// Lines dropped and not reported yet (at the end of the stream).
    pub fn finish(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn timings(initial_ms: u64, max_ms: u64) -> Timings {
        Timings {
            initial_restart: Duration::from_millis(initial_ms),
            max_restart: Duration::from_millis(max_ms),
            ..Timings::default()
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_jitter_adds_at_most_a_fifth() {
        let t = Timings::default();
        let check = |attempt, unit, ms| {
            assert_eq!(
                restart_delay(attempt, &t, unit),
                Duration::from_millis(ms),
                "attempt {attempt}, unit {unit}"
            )
        };
        check(0, 0.0, 1_000);
        check(1, 0.0, 2_000);
        check(2, 0.0, 4_000);
        check(5, 0.0, 32_000);
        check(6, 0.0, 60_000);
        check(40, 0.0, 60_000);
        check(u32::MAX, 0.0, 60_000);
        check(0, 0.5, 1_100);
        check(6, 0.5, 66_000);
        assert!(restart_delay(6, &t, 0.999_999) < Duration::from_secs(72));
        check(0, 7.0, 1_200);
        let small = timings(10, 50);
        assert_eq!(restart_delay(3, &small, 0.0), Duration::from_millis(50));
    }

    #[test]
    fn timings_from_env() {
        let vars: HashMap<&str, &str> = [
            ("KHEISH_SIDECAR_INITIAL_RESTART_MS", "20"),
            ("KHEISH_SIDECAR_READY_TIMEOUT_MS", " 3000 "),
            ("KHEISH_SIDECAR_HEALTH_INTERVAL_MS", ""),
        ]
        .into_iter()
        .collect();
        let t = Timings::from_env(&|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(t.initial_restart, Duration::from_millis(20));
        assert_eq!(t.ready_timeout, Duration::from_secs(3));
        assert_eq!(t.health_interval, Timings::default().health_interval);
        assert_eq!(Timings::from_env(&|_| None).unwrap(), Timings::default());
        let bad = |k: &'static str, v: &'static str| {
            Timings::from_env(&move |q| (q == k).then(|| v.to_string()))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            bad("KHEISH_SIDECAR_STOP_GRACE_MS", "soon"),
            "KHEISH_SIDECAR_STOP_GRACE_MS=`soon` is invalid: must be a whole number of milliseconds"
        );
        assert!(bad("KHEISH_SIDECAR_READY_TIMEOUT_MS", "5").contains("between 100 and"));
        assert!(bad("KHEISH_SIDECAR_MAX_RESTART_MS", "500").contains("must not be below"));
    }

    fn spec(slots: &[(&str, &str)], shared: Option<&str>) -> ChildSpec {
        ChildSpec {
            name: "discord-main".into(),
            base_url: "http://127.0.0.1:8787".into(),
            command: "python3".into(),
            args: vec!["sidecar.py".into()],
            env: vec![
                ("DISCORD_REQUIRE_MENTION".into(), "true".into()),
                ("KHEISH_EXTERNAL_CONNECTOR_TEST_MODE".into(), "1".into()),
                ("PATH".into(), "/opt/bin".into()),
            ],
            credential_slots: slots
                .iter()
                .map(|(k, r)| (k.to_string(), r.to_string()))
                .collect(),
            working_dir: None,
            shared_token: shared.map(|s| Secret::new(s.into())),
        }
    }

    #[test]
    fn child_env_order_and_contents() {
        let parent: HashMap<&str, &str> = [
            ("PATH", "/usr/bin"),
            ("HOME", "/home/k"),
            ("SSL_CERT_FILE", "/etc/ca.pem"),
            ("VIRTUAL_ENV", "/venv"),
            ("KHEISH_MASTER_KEY", "planted-master-key"),
            ("KHEISH_TEST_ADMIN_TOKEN", "planted-admin"),
            ("OTHER_CONNECTOR_TOKEN", "planted-other"),
        ]
        .into_iter()
        .collect();
        let inherited = |k: &str| parent.get(k).map(|v| v.to_string());
        let token = Secret::new("lease-token".into());
        let env = child_env(
            &spec(
                &[("DISCORD_BOT_TOKEN", "c.d.bot"), ("API_KEY", "c.d.api")],
                Some("shared"),
            ),
            "http://127.0.0.1:9000",
            Some(&token),
            &inherited,
        );
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "PATH",
                "HOME",
                "SSL_CERT_FILE",
                "VIRTUAL_ENV",
                "DISCORD_REQUIRE_MENTION",
                "KHEISH_EXTERNAL_CONNECTOR_TEST_MODE",
                "PATH",
                ENV_NAME,
                ENV_BASE_URL,
                ENV_DAEMON_BASE_URL,
                ENV_SHARED_TOKEN,
                ENV_CREDENTIAL_TOKEN,
                ENV_CREDENTIAL_KEYS_JSON,
            ]
        );
        let get = |k: &str| {
            env.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        // The configured env overrides an inherited value (set later).
        assert_eq!(get("PATH"), Some("/opt/bin"));
        assert_eq!(get(ENV_NAME), Some("discord-main"));
        assert_eq!(get(ENV_BASE_URL), Some("http://127.0.0.1:8787"));
        assert_eq!(get(ENV_DAEMON_BASE_URL), Some("http://127.0.0.1:9000"));
        assert_eq!(get(ENV_SHARED_TOKEN), Some("shared"));
        assert_eq!(get(ENV_CREDENTIAL_TOKEN), Some("lease-token"));
        assert_eq!(
            get(ENV_CREDENTIAL_KEYS_JSON),
            Some(r#"["DISCORD_BOT_TOKEN","API_KEY"]"#)
        );
        // Neither the daemon's secrets nor the credential refs reach the child.
        for (_, v) in &env {
            assert!(!v.contains("planted"), "{v}");
            assert!(!v.contains("c.d."), "{v}");
        }
    }

    #[test]
    fn child_env_without_shared_token_or_slots() {
        let env = child_env(&spec(&[], None), "http://127.0.0.1:1", None, &|_| None);
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "DISCORD_REQUIRE_MENTION",
                "KHEISH_EXTERNAL_CONNECTOR_TEST_MODE",
                "PATH",
                ENV_NAME,
                ENV_BASE_URL,
                ENV_DAEMON_BASE_URL
            ]
        );
    }

    #[test]
    fn specs_compare_by_what_runs() {
        let a = Spec::Child(spec(&[("K", "c.d.k")], Some("t1")));
        assert!(a.same_as(&a.clone()));
        assert!(!a.same_as(&Spec::Child(spec(&[("K", "c.d.other")], Some("t1")))));
        assert!(!a.same_as(&Spec::Child(spec(&[("K", "c.d.k")], Some("t2")))));
        assert!(!a.same_as(&Spec::Child(spec(&[("K", "c.d.k")], None))));
        let mut moved = spec(&[("K", "c.d.k")], Some("t1"));
        moved.env.push(("X".into(), "1".into()));
        assert!(!a.same_as(&Spec::Child(moved)));
        let remote = Spec::Remote(RemoteSpec {
            name: "discord-main".into(),
            base_url: "http://127.0.0.1:8787".into(),
            allow_private_network: true,
            shared_token: None,
        });
        assert!(!a.same_as(&remote));
        assert!(remote.same_as(&remote.clone()));
    }

    #[test]
    fn daemon_base_urls() {
        let url = |s: &str| daemon_base_url(s.parse().unwrap());
        assert_eq!(url("127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(url("0.0.0.0:8080"), "http://127.0.0.1:8080");
        assert_eq!(url("[::]:8080"), "http://[::1]:8080");
        assert_eq!(url("192.168.1.2:80"), "http://192.168.1.2:80");
    }

    #[test]
    fn line_budget_drops_past_the_window_cap_and_reports_once() {
        let mut b = LineBudget::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        let verdicts: Vec<(bool, u64)> = [0, 1, 2, 3, 9]
            .iter()
            .map(|s| {
                let v = b.line(t0 + Duration::from_secs(*s));
                (v.log, v.report_dropped)
            })
            .collect();
        assert_eq!(
            verdicts,
            [(true, 0), (true, 0), (false, 0), (false, 0), (false, 0)]
        );
        let next = b.line(t0 + Duration::from_secs(10));
        assert_eq!((next.log, next.report_dropped), (true, 3));
        b.line(t0 + Duration::from_secs(11));
        b.line(t0 + Duration::from_secs(12));
        assert_eq!(b.finish(), 1);
        assert_eq!(b.finish(), 0);
    }
}
