//! The one place that writes to the terminal: results to stdout (human text or one JSON document
//! under `--json`), diagnostics and log lines to stderr, progress bars only on a terminal.
//!
//! A [`Printer`] is cheap to clone and safe to share between threads (`serve` logs from request
//! and worker threads); each write takes the stream's lock so lines never interleave.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{self, IsTerminal, Write};
use std::sync::Arc;

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
            inner: Arc::new(Inner { json, level, color }),
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

    fn log(&self, level: LogLevel, msg: &str) {
        if !self.enabled(level) {
            return;
        }
        let label = match level {
            LogLevel::Error => self.paint(level.label(), "1;31"),
            LogLevel::Warn => self.paint(level.label(), "1;33"),
            _ => level.label().to_string(),
        };
        self.stderr(&format!("{label}: {msg}\n"));
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

    #[test]
    fn quiet_hides_info() {
        let p = Printer::new(false, LogLevel::Error, ColorChoice::Never);
        assert!(p.enabled(LogLevel::Error));
        assert!(!p.enabled(LogLevel::Info));
    }
}
