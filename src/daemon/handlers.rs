//! Run handlers inside `serve` (SPEC §11.1): the `echo` and `exec` workers. `--handler none`
//! starts nothing; runs then wait for a worker to claim them through the control plane.
//!
//! [`HandlerPool::spawn`] starts `--handler-concurrency` worker threads, each with its own
//! database connection. A worker claims the oldest claimable run (owner: this process, role
//! `echo-worker-N` / `exec-worker-N`), handles it and settles it; when nothing is claimable it
//! waits on `App::runs_queued` until ingress queues a run, the earliest claim lease expires (an expired
//! claim makes a run claimable again without any notification), or 30 s pass. It never polls.
//! Control-plane claimers (`POST /v1/runs/claim`) may run beside the workers: everyone claims
//! through the same transaction, oldest run first.
//!
//! Shutdown handshake ([`HandlerPool::shutdown`]): set the stop flag, bump `runs_queued` so idle
//! workers wake, send every worker a stop event so a worker waiting on an `exec` child wakes
//! too, then join. A worker checks the flag after every wake. An interrupted `exec` run has its
//! process group killed and goes back to the queue (it is released, not failed), so a restart
//! handles it again.
//!
//! `exec` runs `--handler-command` with:
//! - stdin: one JSON object, the run as `GET /v1/runs/{id}` shows it (without outputs) plus
//!   `"session"` (the session view, or null);
//! - a cleared environment: only `PATH`, `LANG`, `LC_ALL`, `HOME` and `TMPDIR` are inherited, so
//!   no `KHEISH_*` variable, admin token or master key reaches the command;
//! - its own process group, so a timeout stops the command and everything it started (SIGTERM,
//!   then SIGKILL after [`TERM_GRACE`]);
//! - stdout as the output: a JSON object with `content` and/or `parts` (and optionally
//!   `reply_targets`) is structured output, anything else is text content, empty stdout
//!   completes the run without output (stdout is capped at [`MAX_STDOUT_BYTES`]);
//! - stderr lines logged at debug level, prefixed with the run id (capped);
//! - a non-zero exit, a signal or the timeout fails the run with an error naming the cause.

use std::io::{self, Write};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::model::error_chain as chain;
use crate::model::now_ms;
use crate::model::reply::ReplyTarget;
use crate::model::run::{Run, RunInput, RunStatus, Session};
use crate::output::LogLevel;
use crate::owner;
use crate::process::{self, Captured, LineCaps, Signal};
use crate::server::App;
use crate::store::run_writes::{Finish, Finished};
use crate::store::runs::{NewRunOutput, RunError};
use crate::store::{Store, StoreError};
use crate::views::run_view;

/// The most stdout an `exec` command may write; more fails the run.
pub const MAX_STDOUT_BYTES: usize = 4 * 1024 * 1024;
/// stderr lines logged per run (the rest is read and dropped) and the longest line logged.
const STDERR_CAPS: LineCaps = LineCaps {
    max_lines: 200,
    max_chars: 512,
};
/// Lease on top of `--handler-timeout`, so a run is not handed to another worker while its
/// command is still allowed to run.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// The lease of an `echo` claim: echo settles in milliseconds (a restart frees a crash's claims).
const ECHO_LEASE: Duration = Duration::from_secs(5);
/// The longest an idle worker waits without being woken.
const IDLE_WAIT: Duration = Duration::from_secs(30);
/// After a SIGTERM, how long the command has to exit before it gets SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);
/// After a SIGKILL, how long to wait for the exit status and stdout before giving up on them.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Runs an `echo` worker claims (and completes) in one writer job.
const ECHO_BATCH: u32 = 32;
/// Pause after a database error before claiming again (woken early by shutdown).
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Why the pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// `--handler exec` without a program.
    #[error(
        "--handler exec needs --handler-command (the program, then its arguments, one per flag)"
    )]
    NoCommand,
    /// A worker's database connection could not be opened.
    #[error("opening the state root for the run handlers")]
    Store(#[from] StoreError),
    /// The OS refused a thread.
    #[error("starting a run handler thread")]
    Thread(#[source] io::Error),
}

/// Which run handler `serve` runs (`--handler`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerMode {
    /// No workers: runs wait for a claim through the control plane.
    None,
    /// Reply with the run's own text.
    Echo,
    /// Run a command per run.
    Exec {
        /// Program, then arguments (empty is refused at start).
        command: Vec<String>,
        /// Per-run time limit.
        timeout: Duration,
    },
}

/// The run handler settings of one daemon.
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    pub mode: HandlerMode,
    /// Worker threads (`--handler-concurrency`, at least one).
    pub concurrency: u16,
}

/// What the workers of this pool do with a run.
#[derive(Debug, Clone)]
enum Mode {
    Echo,
    Exec {
        /// Program, then arguments (never empty).
        command: Vec<String>,
        timeout: Duration,
    },
}

/// The running handler workers. Call [`HandlerPool::shutdown`] during the daemon's shutdown;
/// dropping the pool does the same.
pub struct HandlerPool {
    app: Arc<App>,
    stop: Arc<AtomicBool>,
    workers: Vec<(JoinHandle<()>, mpsc::Sender<Event>)>,
}

impl HandlerPool {
    /// Starts `config.concurrency` workers for `config.mode` (none for `--handler none`).
    pub fn spawn(app: Arc<App>, config: &HandlerConfig) -> Result<HandlerPool, HandlerError> {
        let mode = match &config.mode {
            HandlerMode::None => None,
            HandlerMode::Echo => Some(Mode::Echo),
            HandlerMode::Exec { command, timeout } => {
                if command.is_empty() {
                    return Err(HandlerError::NoCommand);
                }
                Some(Mode::Exec {
                    command: command.clone(),
                    timeout: *timeout,
                })
            }
        };
        let mut pool = HandlerPool {
            app: Arc::clone(&app),
            stop: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
        };
        let Some(mode) = mode else {
            return Ok(pool);
        };
        let label = match mode {
            Mode::Echo => "echo",
            Mode::Exec { .. } => "exec",
        };
        for n in 1..=config.concurrency.max(1) {
            let (tx, rx) = mpsc::channel();
            let worker = Worker {
                app: Arc::clone(&app),
                store: Store::open(&app.state_root)?,
                owner: owner::this_process(&format!("{label}-worker-{n}")),
                label: format!("{label}-worker-{n}"),
                mode: mode.clone(),
                stop: Arc::clone(&pool.stop),
                events: rx,
                events_tx: tx.clone(),
                next_token: 0,
            };
            let thread = std::thread::Builder::new()
                .name(worker.label.clone())
                .spawn(move || worker.run())
                .map_err(HandlerError::Thread)?;
            pool.workers.push((thread, tx));
        }
        app.out.info(&format!(
            "run handler `{label}` started with {} worker(s)",
            pool.workers.len()
        ));
        Ok(pool)
    }

    /// Number of worker threads (0 for `--handler none`).
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// True for `--handler none`.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Stops every worker and joins it. Idle workers stop at once; a worker running an `exec`
    /// command kills its process group and releases the run back to the queue; an `echo`
    /// worker finishes the run it holds (milliseconds).
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        self.stop.store(true, Ordering::SeqCst);
        self.app.runs_queued.notify_all();
        for (_, tx) in &self.workers {
            // A worker that already exited has dropped its receiver; nothing to wake.
            let _ = tx.send(Event::Stop);
        }
        for (thread, _) in self.workers.drain(..) {
            if thread.join().is_err() {
                self.app.out.error("a run handler worker panicked");
            }
        }
    }
}

impl Drop for HandlerPool {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// What a worker's event channel carries while it runs an `exec` command.
enum Event {
    /// The command's process exited (sent by its waiter thread).
    Exited {
        token: u64,
        status: io::Result<ExitStatus>,
    },
    /// The command's stdout reached EOF (or its cap).
    Stdout { token: u64, captured: Captured },
    /// The pool is shutting down.
    Stop,
}

/// How an `exec` command ended.
enum ExecEnd {
    /// Exited, and stdout reached EOF, within the timeout.
    Exited {
        status: ExitStatus,
        stdout: Captured,
    },
    TimedOut,
    Interrupted,
    StartFailed(String),
}

/// One worker thread's state.
struct Worker {
    app: Arc<App>,
    store: Store,
    /// The run claim owner (this process) and the label of threads and log lines.
    owner: String,
    label: String,
    mode: Mode,
    stop: Arc<AtomicBool>,
    events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    /// Tags the events of one command, so late events of an earlier one are ignored.
    next_token: u64,
}

impl Worker {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn lease(&self) -> Duration {
        match &self.mode {
            Mode::Echo => ECHO_LEASE,
            Mode::Exec { timeout, .. } => *timeout + TERM_GRACE + KILL_GRACE + LEASE_MARGIN,
        }
    }

    fn run(mut self) {
        let lease_ms = i64::try_from(self.lease().as_millis()).unwrap_or(i64::MAX);
        loop {
            // Generation first, flag second: a shutdown or a new run after this read makes the
            // wait below return at once.
            let seen = self.app.runs_queued.generation();
            if self.stopping() {
                break;
            }
            let now = now_ms();
            // Claims go through the group-commit writer, batched with accepted events.
            match self
                .app
                .writer
                .claim_runs(&self.owner, lease_ms, self.batch(), None, now)
            {
                Ok(runs) if !runs.is_empty() => {
                    self.handle_batch(runs);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    self.app
                        .out
                        .error(&format!("{}: claiming a run: {}", self.label, chain(&e)));
                    let g = self.app.runs_queued.generation();
                    if !self.stopping() {
                        self.app.runs_queued.wait_past(g, ERROR_BACKOFF);
                    }
                    continue;
                }
            }
            if self.stopping() {
                break;
            }
            let wait = match self.store.next_claim_expiry(None) {
                Ok(Some(at)) => Duration::from_millis((at - now).max(0) as u64 + 1).min(IDLE_WAIT),
                _ => IDLE_WAIT,
            };
            self.app.runs_queued.wait_past(seen, wait);
        }
    }

    /// Runs claimed at once: echo settles in microseconds, so it claims a batch and completes
    /// it in one writer job; an `exec` command may take its whole timeout, so it claims one.
    fn batch(&self) -> u32 {
        match self.mode {
            Mode::Echo => ECHO_BATCH,
            Mode::Exec { .. } => 1,
        }
    }

    fn handle_batch(&mut self, runs: Vec<Run>) {
        match self.mode.clone() {
            Mode::Echo => {
                let items = runs
                    .iter()
                    .map(|run| Finish {
                        run_id: run.run_id.clone(),
                        owner: Some(self.owner.clone()),
                        output: Some(NewRunOutput {
                            content: Some(echo_text(&run.input)),
                            ..NewRunOutput::default()
                        }),
                        status: RunStatus::Completed,
                        error: None,
                    })
                    .collect();
                let results = self.app.writer.finish_runs(items, now_ms());
                for (run, result) in runs.iter().zip(results) {
                    self.settled(run, true, result);
                }
            }
            Mode::Exec { command, timeout } => {
                for run in runs {
                    self.app
                        .out
                        .debug(&format!("{}: handling run {}", self.label, run.run_id));
                    self.exec(&run, &command, timeout);
                }
            }
        }
    }

    /// Reports one finished run: wakes the delivery workers for its deliveries, or logs why
    /// its result was dropped.
    fn settled(&self, run: &Run, with_output: bool, result: Result<Finished, RunError>) {
        match result {
            Ok((_, _, queued)) => {
                if queued.has_pending() {
                    self.app.deliveries_queued.notify_all();
                }
                self.app.out.debug(&format!(
                    "run {} completed by {}{}",
                    run.run_id,
                    self.label,
                    if with_output { "" } else { " (no output)" }
                ));
            }
            Err(e) => self.settle_error(run, &e),
        }
    }

    fn exec(&mut self, run: &Run, command: &[String], timeout: Duration) {
        let session = match self.store.get_session(&run.session_id) {
            Ok(session) => session,
            Err(e) => {
                self.app.out.warn(&format!(
                    "run {}: reading session `{}` for the handler: {}",
                    run.run_id,
                    run.session_id,
                    chain(&e)
                ));
                None
            }
        };
        let input = exec_input(run, session.as_ref());
        match self.run_command(run, command, timeout, input) {
            ExecEnd::Interrupted => {
                match self
                    .app
                    .writer
                    .release_run(&run.run_id, &self.owner, now_ms())
                {
                    Ok(_) => self.app.out.info(&format!(
                        "run {}: handler interrupted by shutdown; the run is queued again",
                        run.run_id
                    )),
                    Err(e) => self.settle_error(run, &e),
                }
                self.app.runs_queued.notify_all();
            }
            ExecEnd::TimedOut => self.fail(
                run,
                &format!(
                    "handler command timed out after {}",
                    humantime::format_duration(timeout)
                ),
            ),
            ExecEnd::StartFailed(why) => self.fail(run, &why),
            ExecEnd::Exited { status, stdout } => {
                if !status.success() {
                    return self.fail(run, &process::exit_description("handler command", status));
                }
                if let Some(err) = stdout.error {
                    return self.fail(run, &format!("reading the handler's stdout: {err}"));
                }
                if stdout.overflowed {
                    return self.fail(
                        run,
                        &format!("handler output exceeds {MAX_STDOUT_BYTES} bytes"),
                    );
                }
                let checked = parse_stdout(&stdout.bytes).and_then(|output| {
                    let targets = output.iter().flat_map(|o| o.reply_targets.iter().flatten());
                    self.app
                        .connectors()
                        .check_targets(&targets.cloned().collect::<Vec<_>>())?;
                    Ok(output)
                });
                match checked {
                    Ok(output) => self.complete(run, output),
                    Err(why) => self.fail(run, &format!("handler output: {why}")),
                }
            }
        }
    }

    /// Starts the command, feeds it the run, and waits for its exit and stdout until the
    /// timeout or a stop event.
    fn run_command(
        &mut self,
        run: &Run,
        command: &[String],
        timeout: Duration,
        input: Vec<u8>,
    ) -> ExecEnd {
        let Some((program, args)) = command.split_first() else {
            return ExecEnd::StartFailed("no handler command configured".to_string());
        };
        let mut child = match process::command(program, args, &[]).spawn() {
            Ok(child) => child,
            Err(e) => {
                return ExecEnd::StartFailed(format!(
                    "cannot start handler command `{program}`: {e}"
                ))
            }
        };
        let pid = child.id();
        self.next_token += 1;
        let token = self.next_token;
        if let Err(e) = self.start_io_threads(run, token, &mut child, input) {
            self.signal(pid, Signal::Kill);
            let _ = child.kill();
            let _ = child.wait();
            return ExecEnd::StartFailed(format!("cannot start handler I/O threads: {e}"));
        }
        let waiter_tx = self.events_tx.clone();
        let waiter = std::thread::Builder::new()
            .name(format!("{}-wait", self.label))
            .spawn(move || {
                let status = child.wait();
                let _ = waiter_tx.send(Event::Exited { token, status });
            });
        if let Err(e) = waiter {
            // The closure (and with it the Child) is gone; the group kill still reaches it.
            self.signal(pid, Signal::Kill);
            return ExecEnd::StartFailed(format!("cannot start the handler waiter thread: {e}"));
        }

        // Wait for both the exit status and stdout's EOF: a process the command started in
        // the background that keeps stdout open is still part of the command.
        let mut status = None;
        let mut stdout = None;
        let deadline = Instant::now() + timeout;
        let mut interrupted = self.stopping();
        while !interrupted && (status.is_none() || stdout.is_none()) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match self.events.recv_timeout(remaining) {
                Ok(Event::Exited {
                    token: t,
                    status: s,
                }) if t == token => status = Some(s),
                Ok(Event::Stdout { token: t, captured }) if t == token => stdout = Some(captured),
                Ok(Event::Exited { .. } | Event::Stdout { .. }) => {} // an earlier command's
                Ok(Event::Stop) => interrupted = true,
                Err(_) => break,
            }
        }
        if !interrupted {
            if let (Some(status), Some(stdout)) = (status.take(), stdout.take()) {
                return match status {
                    Ok(status) => ExecEnd::Exited { status, stdout },
                    Err(e) => ExecEnd::StartFailed(format!("waiting for the handler command: {e}")),
                };
            }
        }
        // Timeout or shutdown: ask the whole group to stop, then kill what is left, and give
        // the waiter and the stdout reader a moment to finish so their threads do not outlive
        // the run.
        for (signal, grace) in [(Signal::Term, TERM_GRACE), (Signal::Kill, KILL_GRACE)] {
            if status.is_some() && stdout.is_some() {
                break;
            }
            self.signal(pid, signal);
            let grace_end = Instant::now() + grace;
            while status.is_none() || stdout.is_none() {
                let remaining = grace_end.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                match self.events.recv_timeout(remaining) {
                    Ok(Event::Exited {
                        token: t,
                        status: s,
                    }) if t == token => status = Some(s),
                    Ok(Event::Stdout { token: t, captured }) if t == token => {
                        stdout = Some(captured)
                    }
                    Ok(Event::Stop) => interrupted = true,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        if status.is_none() {
            self.app.out.warn(&format!(
                "run {}: handler process {pid} did not exit within {} of SIGKILL",
                run.run_id,
                humantime::format_duration(KILL_GRACE)
            ));
        }
        if interrupted {
            ExecEnd::Interrupted
        } else {
            ExecEnd::TimedOut
        }
    }

    /// stdin writer, stdout reader (reports through the event channel), stderr logger.
    fn start_io_threads(
        &self,
        run: &Run,
        token: u64,
        child: &mut Child,
        input: Vec<u8>,
    ) -> io::Result<()> {
        if let Some(mut stdin) = child.stdin.take() {
            std::thread::Builder::new()
                .name(format!("{}-stdin", self.label))
                .spawn(move || {
                    // A command that does not read its input closes the pipe: not an error.
                    let _ = stdin.write_all(&input);
                })?;
        }
        if let Some(stdout) = child.stdout.take() {
            let tx = self.events_tx.clone();
            std::thread::Builder::new()
                .name(format!("{}-stdout", self.label))
                .spawn(move || {
                    let captured = process::read_capped(stdout, MAX_STDOUT_BYTES);
                    let _ = tx.send(Event::Stdout { token, captured });
                })?;
        }
        if let Some(stderr) = child.stderr.take() {
            let out = self.app.out.clone();
            let run_id = run.run_id.clone();
            std::thread::Builder::new()
                .name(format!("{}-stderr", self.label))
                .spawn(move || {
                    let wanted = out.enabled(LogLevel::Debug);
                    let dropped = process::for_each_line(stderr, STDERR_CAPS, wanted, |line| {
                        out.debug(&format!("run {run_id}: handler stderr: {line}"))
                    });
                    if dropped > 0 {
                        out.debug(&format!(
                            "run {run_id}: handler stderr: {dropped} more line(s) not logged"
                        ));
                    }
                })?;
        }
        Ok(())
    }

    /// Signals the command's process group; a failure is logged (the run still ends by its
    /// timeout).
    fn signal(&self, pgid: u32, signal: Signal) {
        if let Err(e) = process::signal_group(pgid, signal) {
            self.app.out.error(&format!(
                "cannot signal handler process group {pgid}: running kill(1) failed: {e}"
            ));
        }
    }

    fn complete(&self, run: &Run, output: Option<NewRunOutput>) {
        let with_output = output.is_some();
        let item = Finish {
            run_id: run.run_id.clone(),
            owner: Some(self.owner.clone()),
            output,
            status: RunStatus::Completed,
            error: None,
        };
        let result = self.finish_one(item);
        self.settled(run, with_output, result);
    }

    fn finish_one(&self, item: Finish) -> Result<Finished, RunError> {
        let mut results = self.app.writer.finish_runs(vec![item], now_ms());
        results
            .pop()
            .unwrap_or_else(|| unreachable!("finish_runs answers once per item"))
    }

    fn fail(&self, run: &Run, error: &str) {
        self.app
            .out
            .warn(&format!("run {} failed: {error}", run.run_id));
        let item = Finish {
            run_id: run.run_id.clone(),
            owner: Some(self.owner.clone()),
            output: None,
            status: RunStatus::Failed,
            error: Some(error.to_string()),
        };
        if let Err(e) = self.finish_one(item) {
            self.settle_error(run, &e);
        }
    }

    fn settle_error(&self, run: &Run, err: &RunError) {
        match err {
            // The lease ran out and someone else claimed (or finished) the run.
            RunError::Conflict { .. } | RunError::NotFound { .. } => self.app.out.warn(&format!(
                "{}: result for run {} dropped: {err}",
                self.label, run.run_id
            )),
            RunError::Store(e) => self.app.out.error(&format!(
                "{}: settling run {} (it is handled again when its lease expires): {}",
                self.label,
                run.run_id,
                chain(e)
            )),
            other => (self.app.out).error(&format!(
                "{}: settling run {}: {other}",
                self.label, run.run_id
            )),
        }
    }
}

/// The text an `echo` run replies with: the content; else the text input items joined with
/// newlines; else a short description of what arrived.
pub fn echo_text(input: &RunInput) -> String {
    if let Some(content) = input.content.as_deref().filter(|c| !c.is_empty()) {
        return content.to_string();
    }
    let items = input.input_items.as_deref().unwrap_or_default();
    let texts: Vec<&str> = items
        .iter()
        .filter(|item| item.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|item| item.get("text").and_then(Value::as_str))
        .collect();
    if !texts.is_empty() {
        return texts.join("\n");
    }
    let attachments = input.attachments.as_deref().map_or(0, <[Value]>::len);
    match (items.len(), attachments) {
        (0, 0) => "[empty input]".to_string(),
        (1, _) => "[1 input item]".to_string(),
        (n, 0) if n > 1 => format!("[{n} input items]"),
        (_, 1) => "[1 attachment]".to_string(),
        (_, n) => format!("[{n} attachments]"),
    }
}

/// The JSON document an `exec` command reads on stdin.
fn exec_input(run: &Run, session: Option<&Session>) -> Vec<u8> {
    let mut doc = run_view(run);
    doc.insert(
        "session".into(),
        session.map_or(Value::Null, |s| {
            serde_json::to_value(s).unwrap_or(Value::Null)
        }),
    );
    let mut bytes = serde_json::to_vec(&doc).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Interprets an `exec` command's stdout. `Ok(None)`: nothing to send (empty output).
pub fn parse_stdout(bytes: &[u8]) -> Result<Option<NewRunOutput>, String> {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    if trimmed.starts_with('{') {
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(trimmed) {
            if map.contains_key("content") || map.contains_key("parts") {
                return structured_output(&map);
            }
        }
    }
    Ok(Some(NewRunOutput {
        content: Some(text.trim_end_matches(['\n', '\r']).to_string()),
        ..NewRunOutput::default()
    }))
}

/// `{"content"?, "parts"?, "reply_targets"?}` printed by an `exec` command.
fn structured_output(map: &Map<String, Value>) -> Result<Option<NewRunOutput>, String> {
    const ALLOWED: [&str; 3] = ["content", "parts", "reply_targets"];
    if let Some(key) = map.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        return Err(format!(
            "unknown member `{key}` in a structured output; allowed: {}",
            ALLOWED.join(", ")
        ));
    }
    let content = match map.get("content") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()).filter(|s| !s.is_empty()),
        Some(_) => return Err("`content` must be a string".to_string()),
    };
    let parts = match map.get("parts") {
        None | Some(Value::Null) => None,
        Some(Value::Array(parts)) => {
            if let Some(idx) = parts
                .iter()
                .position(|p| !p.get("type").is_some_and(Value::is_string))
            {
                return Err(format!(
                    "`parts[{idx}]` must be a JSON object with a string `type`"
                ));
            }
            Some(parts.clone()).filter(|p| !p.is_empty())
        }
        Some(_) => return Err("`parts` must be an array".to_string()),
    };
    let reply_targets = match map.get("reply_targets") {
        None | Some(Value::Null) => None,
        Some(Value::Array(targets)) => Some(
            targets
                .iter()
                .enumerate()
                .map(|(idx, t)| {
                    reply_target(t).map_err(|why| format!("`reply_targets[{idx}]`: {why}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err("`reply_targets` must be an array".to_string()),
    };
    if content.is_none() && parts.is_none() {
        return Ok(None);
    }
    Ok(Some(NewRunOutput {
        content,
        parts,
        reply_targets,
    }))
}

fn reply_target(value: &Value) -> Result<ReplyTarget, String> {
    let Value::Object(map) = value else {
        return Err("must be an object {\"plugin\", \"address\"}".to_string());
    };
    if let Some(key) = map.keys().find(|k| *k != "plugin" && *k != "address") {
        return Err(format!("unknown member `{key}`"));
    }
    let plugin = map
        .get("plugin")
        .and_then(Value::as_str)
        .ok_or("`plugin` must be a string")?;
    ReplyTarget::from_json(plugin, map.get("address").unwrap_or(&Value::Null))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn input(value: Value) -> RunInput {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn echo_texts() {
        let check = |value: Value, expected: &str| assert_eq!(echo_text(&input(value)), expected);
        check(json!({"content": "hello"}), "hello");
        check(
            json!({"input_items": [
                {"type": "text", "text": "a"},
                {"type": "asset_reference", "asset_id": "x"},
                {"type": "text", "text": "b"}
            ]}),
            "a\nb",
        );
        check(
            json!({"input_items": [
                {"type": "asset_reference", "asset_id": "x"},
                {"type": "asset_reference", "asset_id": "y"}
            ]}),
            "[2 input items]",
        );
        check(
            json!({"input_items": [{"type": "asset_reference", "asset_id": "x"}]}),
            "[1 input item]",
        );
        check(
            json!({"content": "", "attachments": [{"asset_id": "a"}, {"asset_id": "b"}]}),
            "[2 attachments]",
        );
        check(json!({}), "[empty input]");
    }

    /// Expected output: content, number of parts, number of reply targets.
    type Shape<'a> = (Option<&'a str>, usize, usize);

    fn check_stdout(stdout: &str, expected: Result<Option<Shape<'_>>, &str>) {
        let got = parse_stdout(stdout.as_bytes());
        match (got, expected) {
            (Ok(None), Ok(None)) => {}
            (Ok(Some(out)), Ok(Some((content, n_parts, n_targets)))) => {
                assert_eq!(out.content.as_deref(), content, "{stdout:?}");
                assert_eq!(out.parts.map_or(0, |p| p.len()), n_parts, "{stdout:?}");
                assert_eq!(
                    out.reply_targets.map_or(0, |t| t.len()),
                    n_targets,
                    "{stdout:?}"
                );
            }
            (Err(e), Err(needle)) => assert!(e.contains(needle), "{stdout:?}: {e}"),
            (got, expected) => panic!("{stdout:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn stdout_shapes() {
        check_stdout("", Ok(None));
        check_stdout(" \n\n", Ok(None));
        check_stdout("hello\n", Ok(Some((Some("hello"), 0, 0))));
        check_stdout("  two\nlines\r\n", Ok(Some((Some("  two\nlines"), 0, 0))));
        check_stdout("[1,2]", Ok(Some((Some("[1,2]"), 0, 0))));
        check_stdout(r#"{"other":1}"#, Ok(Some((Some(r#"{"other":1}"#), 0, 0))));
        check_stdout("{not json", Ok(Some((Some("{not json"), 0, 0))));
        check_stdout(
            "{\"content\":\"from exec\"}\n",
            Ok(Some((Some("from exec"), 0, 0))),
        );
        check_stdout(
            r#"{"parts":[{"type":"text","text":"a"}],"reply_targets":[{"plugin":"http","address":"https://example.com/h"}]}"#,
            Ok(Some((None, 1, 1))),
        );
        check_stdout(r#"{"content":""}"#, Ok(None));
        check_stdout(r#"{"content":5}"#, Err("`content` must be a string"));
        check_stdout(
            r#"{"content":"x","extra":1}"#,
            Err("unknown member `extra`"),
        );
        check_stdout(r#"{"parts":[1]}"#, Err("`parts[0]`"));
        check_stdout(
            r#"{"content":"x","reply_targets":[{"plugin":"http","address":{"url":"https://e.com","headers":{"Host":"x"}}}]}"#,
            Err("`reply_targets[0]`"),
        );
    }
}
