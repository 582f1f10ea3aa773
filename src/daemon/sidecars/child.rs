//! One `child_process` sidecar's supervision loop (SPEC §10.6), on its own std thread: issue a
//! credential lease, spawn the child (cleared environment, own process group, stdin null,
//! stdout/stderr captured into the daemon log with a line budget), wait for readiness
//! (manifest protocol 1 and health `ready|degraded` with the same `instance_id`, probed from
//! 10 ms apart backing off to every 250 ms, for up to 20 s), then poll health every 5 s until the child exits or the supervisor
//! says stop. Failures (spawn error, readiness timeout, exit) restart with backoff; the lease
//! of a spawn is revoked when that spawn ends.
//!
//! Waits are on the worker's event channel (`Stop` from the supervisor, `Exited` from the
//! thread that reaps the child) with a timeout: never a sleep. A `Stop` seen anywhere is
//! remembered, so a stop that arrives while a failed child is being stopped is not lost.

use std::io::{BufRead, BufReader, Read};
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::spec::{child_env, restart_delay, ChildSpec, LineBudget};
use super::{Ctx, Event};
use crate::model::now_ms;
use crate::net::sidecar_api::{HealthStatus, SidecarClient, PROTOCOL_VERSION};
use crate::output::Printer;
use crate::process::{self, Signal};

/// Lines of one stream of a child that reach the daemon log per [`LOG_WINDOW`].
const LOG_LINES_PER_WINDOW: u32 = 50;
const LOG_WINDOW: Duration = Duration::from_secs(10);
/// Characters kept of a logged line; bytes read as one line at most (a child writing without
/// newlines cannot grow the daemon's memory).
const LOG_LINE_CHARS: usize = 1000;
const LOG_LINE_BYTES: u64 = 8 * 1024;
/// The pause after the first failed readiness probe (then doubling up to `ready_poll`).
const FIRST_READY_PROBE: Duration = Duration::from_millis(10);
/// How long to wait for the group leader to be reaped after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The worker's event channel plus the remembered stop.
pub(super) struct Inbox {
    pub(super) rx: Receiver<Event>,
    pub(super) stopped: bool,
}

/// What [`Inbox::next`] saw.
enum Next {
    Stop,
    Exited {
        spawn: u64,
        status: Option<ExitStatus>,
    },
    Timeout,
}

impl Inbox {
    /// The next event within `timeout`; a remembered stop answers at once.
    fn next(&mut self, timeout: Duration) -> Next {
        if self.stopped {
            return Next::Stop;
        }
        match self.rx.recv_timeout(timeout) {
            Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => {
                self.stopped = true;
                Next::Stop
            }
            Ok(Event::Exited { spawn, status }) => Next::Exited { spawn, status },
            Err(RecvTimeoutError::Timeout) => Next::Timeout,
        }
    }

    /// Waits until `deadline` unless stopped first; true when stopped.
    pub(super) fn stopped_before(&mut self, deadline: Instant) -> bool {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.stopped;
            }
            match self.next(left) {
                Next::Stop => return true,
                Next::Exited { .. } | Next::Timeout => {}
            }
        }
    }

    /// Waits up to `timeout` for spawn `spawn` to be reaped; a stop is remembered, not
    /// returned (the caller is already stopping the child).
    fn exited(&mut self, spawn: u64, timeout: Duration) -> Option<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.rx.recv_timeout(left) {
                Ok(Event::Stop) => self.stopped = true,
                Ok(Event::Exited { spawn: s, status }) if s == spawn => return Some(status),
                Ok(Event::Exited { .. }) => {}
                Err(RecvTimeoutError::Timeout) => return None,
                // Cannot happen while the caller holds a sender; treat as "not seen".
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

/// How one spawn ended.
enum Ended {
    /// The supervisor asked to stop; the child is gone.
    Stopped,
    /// The child could not start, never became ready, or exited: restart it.
    Failed { was_ready: bool },
}

/// Supervises `spec` until told to stop.
pub(super) fn supervise(ctx: &Ctx, spec: &ChildSpec, inbox: &mut Inbox) {
    let mut attempt: u32 = 0;
    let mut spawn: u64 = 0;
    loop {
        spawn += 1;
        let was_ready = match run_once(ctx, spec, spawn, inbox) {
            Ended::Stopped => return,
            Ended::Failed { was_ready } => was_ready,
        };
        if was_ready {
            attempt = 0;
        }
        let delay = restart_delay(attempt, &ctx.timings, rand::random::<f64>());
        attempt = attempt.saturating_add(1);
        ctx.app.sidecars.update(&spec.name, |s| {
            s.instance_id = None;
            s.health = "down".into();
            s.restarts += 1;
        });
        ctx.app.out.warn(&format!(
            "sidecar `{}`: restarting in {:.1}s (attempt {attempt})",
            spec.name,
            delay.as_secs_f64()
        ));
        if inbox.stopped_before(Instant::now() + delay) {
            return;
        }
    }
}

/// One spawn of the child, from lease to exit.
fn run_once(ctx: &Ctx, spec: &ChildSpec, spawn: u64, inbox: &mut Inbox) -> Ended {
    let name = spec.name.as_str();
    let out = &ctx.app.out;
    let lease = if spec.credential_slots.is_empty() {
        None
    } else {
        match ctx.app.leases.issue(name, &spec.credential_slots, now_ms()) {
            Ok(lease) => Some(lease),
            Err(e) => {
                out.error(&format!(
                    "sidecar `{name}`: cannot issue a credential lease: {e}"
                ));
                return Ended::Failed { was_ready: false };
            }
        }
    };
    // Whatever way this spawn ends, its lease ends with it.
    let _revoke = lease.as_ref().map(|l| Revoke {
        ctx,
        name,
        lease_id: l.lease_id.clone(),
    });
    let env = child_env(
        spec,
        &ctx.daemon_base_url,
        lease.as_ref().map(|l| &l.token),
        &|k| std::env::var(k).ok(),
    );
    let mut cmd = process::command(&spec.command, &spec.args, &env);
    drop(env);
    cmd.stdin(Stdio::null());
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            // A missing working directory fails the spawn like a missing command does: name
            // the field that is wrong.
            let check = match &spec.working_dir {
                Some(dir) if !dir.is_dir() => format!(
                    "`{}` is not a directory; check `child_process.working_dir`",
                    dir.display()
                ),
                Some(dir) => format!(
                    "in `{}`; check `child_process.command` and `child_process.working_dir`",
                    dir.display()
                ),
                None => "check `child_process.command`".to_string(),
            };
            out.error(&format!(
                "sidecar `{name}`: cannot start `{}`: {e}; {check}",
                spec.command
            ));
            return Ended::Failed { was_ready: false };
        }
    };
    drop(cmd);
    let pid = child.id();
    capture(out, name, "stdout", child.stdout.take());
    capture(out, name, "stderr", child.stderr.take());
    let reaper = ctx.events_tx.clone();
    let reaped = std::thread::Builder::new()
        .name("sidecar-reaper".into())
        .spawn(move || {
            let status = child.wait().ok();
            let _ = reaper.send(Event::Exited { spawn, status });
        });
    if let Err(e) = reaped {
        out.error(&format!(
            "sidecar `{name}`: cannot start its reaper thread: {e}"
        ));
        kill_group(out, name, pid);
        return Ended::Failed { was_ready: false };
    }
    out.info(&format!(
        "sidecar `{name}`: started `{}` (pid {pid})",
        spec.command
    ));
    ctx.app.sidecars.update(name, |s| {
        s.instance_id = None;
        s.health = "starting".into();
    });
    let token = spec.shared_token.as_ref().map(|t| t.expose().to_string());
    // child_process base URLs are loopback by validation: the private-network guard is off.
    let client = match SidecarClient::new(&spec.base_url, token, true) {
        Ok(client) => client,
        Err(e) => {
            out.error(&format!("sidecar `{name}`: {e}"));
            stop_child(ctx, name, pid, spawn, inbox);
            return Ended::Failed { was_ready: false };
        }
    };

    let (instance_id, status) = match await_ready(ctx, name, &client, spawn, inbox) {
        Ready::Yes(instance_id, status) => (instance_id, status),
        Ready::Stop => {
            stop_child(ctx, name, pid, spawn, inbox);
            return Ended::Stopped;
        }
        Ready::Exited(status) => {
            out.warn(&exited(name, status, "before it was ready"));
            kill_group(out, name, pid);
            return Ended::Failed { was_ready: false };
        }
        Ready::No(reason) => {
            out.warn(&format!(
                "sidecar `{name}`: not ready within {:?}: {reason}; stopping it",
                ctx.timings.ready_timeout
            ));
            stop_child(ctx, name, pid, spawn, inbox);
            return Ended::Failed { was_ready: false };
        }
        Ready::Refused(reason) => {
            out.warn(&format!(
                "sidecar `{name}`: cannot be used: {reason}; stopping it"
            ));
            stop_child(ctx, name, pid, spawn, inbox);
            return Ended::Failed { was_ready: false };
        }
    };
    ctx.app.sidecars.update(name, |s| {
        s.instance_id = Some(instance_id.clone());
        s.health = status.as_str().into();
    });
    out.info(&format!(
        "sidecar `{name}`: ready (instance `{instance_id}`, health {})",
        status.as_str()
    ));

    loop {
        match inbox.next(ctx.timings.health_interval) {
            Next::Timeout => poll_health(ctx, name, &client, &instance_id),
            Next::Stop => {
                stop_child(ctx, name, pid, spawn, inbox);
                return Ended::Stopped;
            }
            Next::Exited { spawn: s, status } if s == spawn => {
                out.warn(&exited(name, status, "while running"));
                // Whatever the leader left behind in its group goes with it.
                kill_group(out, name, pid);
                return Ended::Failed { was_ready: true };
            }
            Next::Exited { .. } => {}
        }
    }
}

/// Revokes a spawn's lease when dropped.
struct Revoke<'a> {
    ctx: &'a Ctx,
    name: &'a str,
    lease_id: String,
}

impl Drop for Revoke<'_> {
    fn drop(&mut self) {
        self.ctx.app.leases.revoke(self.name, &self.lease_id);
    }
}

/// The outcome of the readiness wait.
enum Ready {
    Yes(String, HealthStatus),
    /// Not ready by the deadline.
    No(String),
    /// Can never be ready (a protocol this daemon does not speak): refused at once.
    Refused(String),
    Exited(Option<ExitStatus>),
    Stop,
}

/// Probes manifest and health until both agree on a serving instance, the timeout passes, the
/// child exits, or a stop arrives.
fn await_ready(
    ctx: &Ctx,
    name: &str,
    client: &SidecarClient,
    spawn: u64,
    inbox: &mut Inbox,
) -> Ready {
    let deadline = Instant::now() + ctx.timings.ready_timeout;
    // Probes start 10 ms apart and back off to `ready_poll`: a sidecar that starts in 100 ms
    // is seen ready within a few ms of it, a slow one costs four requests a second.
    let mut pause = FIRST_READY_PROBE.min(ctx.timings.ready_poll);
    loop {
        let (check, reason) = match probe(client) {
            Ok((instance_id, status)) => return Ready::Yes(instance_id, status),
            Err((check, reason, true)) => {
                ctx.stats.failure(name, check);
                return Ready::Refused(reason);
            }
            Err((check, reason, false)) => (check, reason),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            ctx.stats.failure(name, check);
            return Ready::No(reason);
        }
        let wait = left.min(pause);
        pause = (pause * 2).min(ctx.timings.ready_poll);
        match inbox.next(wait) {
            Next::Stop => return Ready::Stop,
            Next::Exited { spawn: s, status } if s == spawn => return Ready::Exited(status),
            Next::Exited { .. } | Next::Timeout => {}
        }
    }
}

/// One readiness probe: `Ok((instance_id, status))`, or the failing check, why, and whether
/// waiting cannot help (a protocol version this daemon does not speak).
fn probe(client: &SidecarClient) -> Result<(String, HealthStatus), (&'static str, String, bool)> {
    let manifest = client
        .manifest()
        .map_err(|e| ("manifest", e.to_string(), false))?;
    if manifest.protocol_version != PROTOCOL_VERSION {
        return Err((
            "manifest",
            format!(
                "the manifest says protocol_version {}; this daemon speaks {PROTOCOL_VERSION}",
                manifest.protocol_version
            ),
            true,
        ));
    }
    let health = client
        .health()
        .map_err(|e| ("health", e.to_string(), false))?;
    if health.instance_id != manifest.instance_id {
        return Err((
            "health",
            format!(
                "health reports instance `{}` but the manifest `{}`",
                health.instance_id, manifest.instance_id
            ),
            false,
        ));
    }
    if !health.status.is_serving() {
        return Err((
            "health",
            format!("health is `{}`", health.status.as_str()),
            false,
        ));
    }
    Ok((manifest.instance_id, health.status))
}

/// A health poll of a running child: its status is exported as is (`draining` is a state, not
/// a crash); a failed poll or another instance makes it `unreachable` until the next poll.
fn poll_health(ctx: &Ctx, name: &str, client: &SidecarClient, instance_id: &str) {
    let (health, problem) = match client.health() {
        Ok(h) if h.instance_id == instance_id => (h.status.as_str().to_string(), None),
        Ok(h) => (
            "unreachable".to_string(),
            Some(format!(
                "health answered for instance `{}`, not `{instance_id}`",
                h.instance_id
            )),
        ),
        Err(e) => ("unreachable".to_string(), Some(e.to_string())),
    };
    if problem.is_some() {
        ctx.stats.failure(name, "health");
    }
    let before = ctx.app.sidecars.get(name).map(|s| s.health);
    if before.as_deref() != Some(health.as_str()) {
        ctx.app.sidecars.update(name, |s| s.health = health.clone());
        match problem {
            Some(why) => ctx
                .app
                .out
                .warn(&format!("sidecar `{name}`: health check failed: {why}")),
            None => ctx
                .app
                .out
                .info(&format!("sidecar `{name}`: health {health}")),
        }
    }
}

/// SIGTERM to the child's group, up to the stop grace for the leader to exit, then SIGKILL;
/// the group is killed at the end in any case, so nothing it started outlives it.
fn stop_child(ctx: &Ctx, name: &str, pid: u32, spawn: u64, inbox: &mut Inbox) {
    let out = &ctx.app.out;
    if let Err(e) = process::signal_group(pid, Signal::Term) {
        out.error(&format!(
            "sidecar `{name}`: cannot signal process group {pid}: {e}"
        ));
    }
    match inbox.exited(spawn, ctx.timings.stop_grace) {
        Some(status) => out.info(&exited(name, status, "after SIGTERM")),
        None => {
            out.warn(&format!(
                "sidecar `{name}`: still running {:?} after SIGTERM; sending SIGKILL",
                ctx.timings.stop_grace
            ));
            kill_group(out, name, pid);
            if inbox.exited(spawn, KILL_WAIT).is_none() {
                out.error(&format!(
                    "sidecar `{name}`: pid {pid} was not reaped {KILL_WAIT:?} after SIGKILL"
                ));
            }
        }
    }
    kill_group(out, name, pid);
}

fn kill_group(out: &Printer, name: &str, pid: u32) {
    if let Err(e) = process::signal_group(pid, Signal::Kill) {
        out.error(&format!(
            "sidecar `{name}`: cannot kill process group {pid}: {e}"
        ));
    }
}

fn exited(name: &str, status: Option<ExitStatus>, when: &str) -> String {
    match status {
        Some(status) => format!(
            "{} {when}",
            process::exit_description(&format!("sidecar `{name}`"), status)
        ),
        None => format!("sidecar `{name}` ended {when} (its exit status could not be read)"),
    }
}

/// Copies one output stream of a child into the daemon log, line by line, made log-safe and
/// within the [`LineBudget`]; the thread ends when the stream does.
fn capture(
    out: &Printer,
    name: &str,
    stream: &'static str,
    pipe: Option<impl Read + Send + 'static>,
) {
    let Some(pipe) = pipe else { return };
    let log = out.clone();
    let out = out.clone();
    let name = name.to_string();
    let failed_name = name.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("sidecar-{stream}"))
        .spawn(move || {
            let mut budget = LineBudget::new(LOG_LINES_PER_WINDOW, LOG_WINDOW);
            let report = |n: u64| {
                out.info(&format!(
                    "sidecar `{name}` {stream}: {n} line(s) not logged (more than {LOG_LINES_PER_WINDOW} per {}s)",
                    LOG_WINDOW.as_secs()
                ))
            };
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match (&mut reader).take(LOG_LINE_BYTES).read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let verdict = budget.line(Instant::now());
                if verdict.report_dropped > 0 {
                    report(verdict.report_dropped);
                }
                if verdict.log {
                    out.info(&format!(
                        "sidecar `{name}` {stream}: {}",
                        process::log_safe(&buf, LOG_LINE_CHARS)
                    ));
                }
            }
            let dropped = budget.finish();
            if dropped > 0 {
                report(dropped);
            }
        });
    if let Err(e) = spawned {
        // The pipe was dropped with the closure: the child's writes fail instead of blocking.
        log.error(&format!(
            "sidecar `{failed_name}`: cannot start the {stream} reader: {e}; its {stream} is discarded"
        ));
    }
}
