//! The one place that writes to the terminal: results to stdout (human text or one JSON document
//! under `--json`), diagnostics and log lines to stderr, progress bars only on a terminal.
//!
//! A [`Printer`] is cheap to clone and safe to share between threads (`serve` logs from request
//! and worker threads); each write takes the stream's lock so lines never interleave.
//!
//! Repeated identical warnings and errors are rate-limited (SPEC §5: an outage must not flood
//! stderr): the first is printed; identical ones within the next minute are only counted, and
//! the count is printed as `<line> (N more in the last minute)` when that minute ends, or
//! earlier when a different warning or error is printed (so the log stays in order), or when
//! the daemon stops ([`Printer::flush_repeats`]). Info and debug lines (the access log) are
//! never held back.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::ColorChoice;
use crate::model::{Diagnostic, Severity};

/// Log levels, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    /// Parses `KHEISH_LOG` (`error`, `warn`, `info`, `debug`, `trace`); unknown values give `None`.
    pub fn parse(s: &str) -> Option<LogLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Some(LogLevel::Error),
            "warn" | "warning" => Some(LogLevel::Warn),
            "info" => Some(LogLevel::Info),
            "debug" | "trace" => Some(LogLevel::Debug),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

#[derive(Debug)]
struct Inner {
    json: bool,
    level: LogLevel,
    color: bool,
    repeats: Arc<RepeatGate>,
}

/// Owner of stdout and stderr. See the module docs.
#[derive(Debug, Clone)]
pub struct Printer {
    inner: Arc<Inner>,
}

impl Printer {
    /// Builds the printer from the global flags. `color` is resolved against stderr being a
    /// terminal and `NO_COLOR`.
    pub fn new(json: bool, level: LogLevel, color: ColorChoice) -> Printer {
        let color = match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && io::stderr().is_terminal()
            }
        };
        Printer {
            inner: Arc::new(Inner {
                json,
                level,
                color,
                repeats: Arc::default(),
            }),
        }
    }

    /// A printer for tests and library callers that want no color and default levels.
    pub fn plain(json: bool) -> Printer {
        Printer::new(json, LogLevel::Info, ColorChoice::Never)
    }

    /// True under `--json`: results must go through [`Printer::json`].
    pub fn json_mode(&self) -> bool {
        self.inner.json
    }

    /// True when a progress bar may be shown: stderr is a terminal, not `--json`, not quiet.
    pub fn progress_allowed(&self) -> bool {
        !self.inner.json && self.inner.level >= LogLevel::Info && io::stderr().is_terminal()
    }

    /// Writes one line of human result text to stdout.
    pub fn line(&self, text: &str) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.write_all(b"\n")?;
        out.flush()
    }

    /// Writes raw bytes to stdout (completion scripts, man pages).
    pub fn raw(&self, bytes: &[u8]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(bytes)?;
        out.flush()
    }

    /// Writes one JSON document (pretty, newline-terminated) to stdout.
    pub fn json<T: Serialize + ?Sized>(&self, value: &T) -> io::Result<()> {
        let mut out = io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, value).map_err(json_io_error)?;
        out.write_all(b"\n")?;
        out.flush()
    }

    /// Writes one compact JSON line to stdout (streams, readiness lines).
    pub fn json_line<T: Serialize + ?Sized>(&self, value: &T) -> io::Result<()> {
        let mut out = io::stdout().lock();
        serde_json::to_writer(&mut out, value).map_err(json_io_error)?;
        out.write_all(b"\n")?;
        out.flush()
    }

    /// Writes a config diagnostic to stderr: the `error: FILE:LINE:COL: …` line, then `help: …`.
    pub fn diagnostic(&self, d: &Diagnostic) {
        let head = match d.severity {
            Severity::Error => self.paint("error", "1;31"),
            Severity::Warning => self.paint("warning", "1;33"),
        };
        let rendered = d.to_string();
        let rest = rendered
            .split_once(": ")
            .map(|(_, rest)| rest)
            .unwrap_or(&rendered);
        let mut text = format!("{head}: {rest}\n");
        if let Some(help) = &d.help {
            text.push_str(&format!("  {}: {help}\n", self.paint("help", "1;36")));
        }
        self.stderr(&text);
    }

    /// Logs at error level (always shown).
    pub fn error(&self, msg: &str) {
        self.log(LogLevel::Error, msg);
    }

    /// Logs at warn level.
    pub fn warn(&self, msg: &str) {
        self.log(LogLevel::Warn, msg);
    }

    /// Logs at info level (hidden by `-q`).
    pub fn info(&self, msg: &str) {
        self.log(LogLevel::Info, msg);
    }

    /// Logs at debug level (shown with `-v` or `KHEISH_LOG=debug`).
    pub fn debug(&self, msg: &str) {
        self.log(LogLevel::Debug, msg);
    }

    /// True when messages of `level` are written.
    pub fn enabled(&self, level: LogLevel) -> bool {
        level <= self.inner.level
    }

    /// Prints the counts of repeated lines not yet summarised (the daemon calls this as it
    /// stops, so no count is lost).
    pub fn flush_repeats(&self) {
        let mut repeats = self.inner.repeats.lock();
        let pending = repeats.drain();
        write_lines(&pending);
    }

    fn log(&self, level: LogLevel, msg: &str) {
        if !self.enabled(level) {
            return;
        }
        let label = match level {
            LogLevel::Error => self.paint(level.label(), "1;31"),
            LogLevel::Warn => self.paint(level.label(), "1;33"),
            _ => level.label().to_string(),
        };
        let line = format!("{label}: {msg}");
        if level > LogLevel::Warn {
            return write_lines(&[line]);
        }
        // Written while holding the gate, so summaries and lines keep their order.
        let mut repeats = self.inner.repeats.lock();
        let lines = repeats.admit(&line, Instant::now());
        write_lines(&lines);
        if repeats.next_deadline().is_some() {
            RepeatGate::ensure_timer(&self.inner.repeats, &mut repeats);
        }
    }

    fn paint(&self, text: &str, sgr: &str) -> String {
        if self.inner.color {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn stderr(&self, text: &str) {
        let mut err = io::stderr().lock();
        // A closed stderr must not take the process down; there is nowhere left to report it.
        let _ = err.write_all(text.as_bytes());
        let _ = err.flush();
    }
}

/// Writes `lines` to stderr, each newline-terminated, in one locked write.
fn write_lines(lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    let mut text = String::new();
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    let mut err = io::stderr().lock();
    // A closed stderr must not take the process down; there is nowhere left to report it.
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

/// Identical warnings and errors within this long after the first are counted, not printed.
const REPEAT_WINDOW: Duration = Duration::from_secs(60);
/// Distinct lines tracked at once; past that, new lines are printed without being tracked
/// (never dropped), so the map stays small whatever is logged.
const REPEAT_SLOTS: usize = 256;

/// The rate limiter's bookkeeping, pure (time is an argument) so it is tested without a
/// clock: each distinct line printed in the last minute, and how many identical ones came
/// after it.
#[derive(Debug, Default)]
struct Repeats {
    lines: HashMap<String, Repeat>,
}

#[derive(Debug)]
struct Repeat {
    /// When the line was printed.
    first: Instant,
    /// Identical lines held back since.
    more: u64,
}

impl Repeats {
    /// What to write for `line` at `now`, in order: summaries of minutes that ended, then —
    /// unless `line` repeats one printed in the last minute — the summaries of lines held back
    /// so far (a different line ends their run) and `line` itself.
    fn admit(&mut self, line: &str, now: Instant) -> Vec<String> {
        let mut out = self.expire(now);
        if let Some(repeat) = self.lines.get_mut(line) {
            repeat.more += 1;
            return out;
        }
        out.extend(self.drain());
        if self.lines.len() < REPEAT_SLOTS {
            self.lines.insert(
                line.to_string(),
                Repeat {
                    first: now,
                    more: 0,
                },
            );
        }
        out.push(line.to_string());
        out
    }

    /// The summaries of lines whose minute has ended; forgets those lines.
    fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        self.lines.retain(|line, repeat| {
            let live = now.saturating_duration_since(repeat.first) < REPEAT_WINDOW;
            if !live && repeat.more > 0 {
                out.push(summary(line, repeat.more));
            }
            live
        });
        out
    }

    /// The summaries of every line held back so far; forgets those lines (lines printed with
    /// nothing held back still count as printed).
    fn drain(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        self.lines.retain(|line, repeat| {
            if repeat.more > 0 {
                out.push(summary(line, repeat.more));
            }
            repeat.more == 0
        });
        out
    }

    /// When the earliest held-back count is due, if any is pending.
    fn next_deadline(&self) -> Option<Instant> {
        self.lines
            .values()
            .filter(|r| r.more > 0)
            .map(|r| r.first + REPEAT_WINDOW)
            .min()
    }
}

fn summary(line: &str, more: u64) -> String {
    format!("{line} ({more} more in the last minute)")
}

/// [`Repeats`] shared by a printer's clones, plus the timer thread that prints a count when
/// its minute ends even if nothing else is logged. The thread runs only while counts are
/// pending (a CLI command never starts one) and waits on a condvar with a deadline.
#[derive(Debug, Default)]
struct RepeatGate {
    state: Mutex<GateState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    repeats: Repeats,
    timer_running: bool,
}

impl std::ops::Deref for GateState {
    type Target = Repeats;
    fn deref(&self) -> &Repeats {
        &self.repeats
    }
}

impl std::ops::DerefMut for GateState {
    fn deref_mut(&mut self) -> &mut Repeats {
        &mut self.repeats
    }
}

impl RepeatGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the timer thread unless it runs. Without a thread (spawning failed) the counts
    /// still come out with the next warning or error.
    fn ensure_timer(gate: &Arc<RepeatGate>, state: &mut GateState) {
        if state.timer_running {
            return;
        }
        let thread_gate = Arc::clone(gate);
        state.timer_running = std::thread::Builder::new()
            .name("log-repeats".into())
            .spawn(move || thread_gate.run_timer())
            .is_ok();
    }

    fn run_timer(&self) {
        let mut state = self.lock();
        loop {
            let Some(due) = state.next_deadline() else {
                state.timer_running = false;
                return;
            };
            let now = Instant::now();
            if due > now {
                state = self
                    .wake
                    .wait_timeout(state, due - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            let lines = state.expire(now);
            write_lines(&lines);
        }
    }
}

/// Writes the final `error: …` line for an error that reached `main` (the only other print site).
pub fn print_fatal(err: &anyhow::Error) {
    let mut stderr = io::stderr().lock();
    let _ = writeln!(stderr, "error: {err:#}");
}

/// A JSON write error as an io::Error that keeps its kind (a closed pipe stays `BrokenPipe`, so
/// `main` exits 0 for `kheishctl … --json | head`).
fn json_io_error(e: serde_json::Error) -> io::Error {
    match e.io_error_kind() {
        Some(kind) => io::Error::new(kind, e),
        None => io::Error::other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_parse() {
        assert_eq!(LogLevel::parse("debug"), Some(LogLevel::Debug));
        assert_eq!(LogLevel::parse(" WARN "), Some(LogLevel::Warn));
        assert_eq!(LogLevel::parse("loud"), None);
        assert!(LogLevel::Error < LogLevel::Debug);
    }

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn identical_lines_within_a_minute_are_counted() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut r = Repeats::default();
        assert_eq!(
            r.admit("error: disk full", at(0)),
            lines(&["error: disk full"])
        );
        assert!(r.admit("error: disk full", at(1)).is_empty());
        assert!(r.admit("error: disk full", at(2)).is_empty());
        assert_eq!(r.next_deadline(), Some(at(60)));
        // Nothing is due before the minute ends.
        assert!(r.expire(at(59)).is_empty());
        assert_eq!(
            r.expire(at(60)),
            lines(&["error: disk full (2 more in the last minute)"])
        );
        assert_eq!(r.next_deadline(), None);
        // A new minute starts with a printed line again.
        assert_eq!(
            r.admit("error: disk full", at(61)),
            lines(&["error: disk full"])
        );
    }

    #[test]
    fn a_different_line_prints_the_counts_first() {
        let t0 = Instant::now();
        let mut r = Repeats::default();
        r.admit("error: a", t0);
        r.admit("error: a", t0);
        assert_eq!(
            r.admit("warn: b", t0),
            lines(&["error: a (1 more in the last minute)", "warn: b"])
        );
        // `a` was summarised, so it is printed again; `b` (nothing held back) is still known.
        assert_eq!(r.admit("error: a", t0), lines(&["error: a"]));
        assert!(r.admit("warn: b", t0).is_empty());
        // Interleaved repeats stay quiet until their minute ends.
        assert!(r.admit("error: a", t0).is_empty());
        assert!(r.admit("warn: b", t0).is_empty());
        let mut summaries = r.expire(t0 + REPEAT_WINDOW);
        summaries.sort();
        assert_eq!(
            summaries,
            lines(&[
                "error: a (1 more in the last minute)",
                "warn: b (2 more in the last minute)"
            ])
        );
    }

    #[test]
    fn drain_prints_pending_counts_once() {
        let t0 = Instant::now();
        let mut r = Repeats::default();
        r.admit("error: x", t0);
        assert!(r.drain().is_empty(), "nothing held back");
        r.admit("error: x", t0);
        assert_eq!(r.drain(), lines(&["error: x (1 more in the last minute)"]));
        assert!(r.drain().is_empty());
    }

    #[test]
    fn the_map_stays_bounded() {
        let t0 = Instant::now();
        let mut r = Repeats::default();
        for i in 0..REPEAT_SLOTS + 10 {
            let line = format!("error: {i}");
            assert_eq!(r.admit(&line, t0), vec![line]);
        }
        assert_eq!(r.lines.len(), REPEAT_SLOTS);
        // An untracked line is printed every time, never dropped.
        let extra = format!("error: {}", REPEAT_SLOTS + 1);
        assert_eq!(r.admit(&extra, t0), vec![extra.clone()]);
    }

    #[test]
    fn quiet_hides_info() {
        let p = Printer::new(false, LogLevel::Error, ColorChoice::Never);
        assert!(p.enabled(LogLevel::Error));
        assert!(!p.enabled(LogLevel::Info));
    }
}
