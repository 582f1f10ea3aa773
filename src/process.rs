//! Child processes the daemon starts (the `exec` run handler today, `child_process` sidecars
//! next): a cleared environment with an explicit allow-list, the child as leader of its own
//! process group (so stopping it stops everything it started), capped capture of its output,
//! log lines that cannot be forged, and stopping a group with SIGTERM, then SIGKILL.
//!
//! std has no signal API and the crate forbids `unsafe`, so signals are sent by running
//! `kill(1)`. Nothing here knows about runs, sessions or HTTP.

use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};

/// Environment variables a child inherits from the daemon; everything else (every `KHEISH_*`
/// variable, admin tokens, the master key) is cleared.
pub const INHERITED_ENV: [&str; 5] = ["PATH", "LANG", "LC_ALL", "HOME", "TMPDIR"];

/// A command with a cleared environment (plus [`INHERITED_ENV`] and `extra_env`), piped
/// stdin/stdout/stderr, started as the leader of its own process group.
pub fn command(program: &str, args: &[String], extra_env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear();
    for key in INHERITED_ENV {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    for (key, value) in extra_env {
        cmd.env(key, value);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd
}

/// A stream read to its end: at most `cap` bytes kept, whether more was written, and the read
/// error that ended it early, if any.
#[derive(Debug, Default)]
pub struct Captured {
    pub bytes: Vec<u8>,
    pub overflowed: bool,
    pub error: Option<String>,
}

/// Reads `reader` to EOF keeping at most `cap` bytes; the rest is drained so the writer never
/// blocks on a full pipe.
pub fn read_capped(mut reader: impl Read, cap: usize) -> Captured {
    let mut captured = Captured::default();
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                let room = cap.saturating_sub(captured.bytes.len());
                if n > room {
                    captured.overflowed = true;
                }
                captured.bytes.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                captured.error = Some(e.to_string());
                break;
            }
        }
    }
    captured
}

/// Caps on the lines [`for_each_line`] hands on.
#[derive(Debug, Clone, Copy)]
pub struct LineCaps {
    /// Lines handed on; later ones are counted and reported once at the end.
    pub max_lines: usize,
    /// Characters kept of each line.
    pub max_chars: usize,
}

/// Reads `reader` line by line to EOF and calls `line` with each one made safe for a log:
/// trailing newline removed, cut to `caps.max_chars` characters, control characters escaped (so
/// a child cannot forge log lines). After `caps.max_lines` lines the rest are only counted;
/// returns that count. When `wanted` is false the stream is still drained but nothing is
/// formatted.
pub fn for_each_line(
    reader: impl Read,
    caps: LineCaps,
    wanted: bool,
    mut line: impl FnMut(&str),
) -> usize {
    let mut reader = BufReader::new(reader);
    let mut handed = 0usize;
    let mut dropped = 0usize;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if !wanted {
            continue;
        }
        if handed >= caps.max_lines {
            dropped += 1;
            continue;
        }
        handed += 1;
        line(&log_safe(&buf, caps.max_chars));
    }
    dropped
}

/// `bytes` as one log-safe line of at most `max_chars` characters: trailing newline removed,
/// control characters escaped (a child cannot forge log lines or move the terminal cursor).
pub fn log_safe(bytes: &[u8], max_chars: usize) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\n', '\r'])
        .chars()
        .take(max_chars)
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() && c != '\t' {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A signal to a process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ask to stop (SIGTERM).
    Term,
    /// Stop now (SIGKILL).
    Kill,
}

/// Sends `signal` to process group `pgid` (a child started by [`command`] leads its own group).
/// A group that is already gone is not an error.
pub fn signal_group(pgid: u32, signal: Signal) -> io::Result<()> {
    let group = format!("-{pgid}");
    let flag = match signal {
        Signal::Term => "-TERM",
        Signal::Kill => "-KILL",
    };
    let mut last_err = None;
    for program in ["/bin/kill", "/usr/bin/kill", "kill"] {
        let res = Command::new(program)
            .args([flag, "--", &group])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match res {
            // A non-zero status means the group is already gone (ESRCH): nothing left to signal.
            Ok(_) => return Ok(()),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no kill(1) found")))
}

/// "`what` exited with code N" / "… was killed by signal N".
pub fn exit_description(what: &str, status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("{what} exited with code {code}"),
        (None, Some(signal)) => format!("{what} was killed by signal {signal}"),
        (None, None) => format!("{what} ended with {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_descriptions() {
        assert_eq!(
            exit_description("handler command", ExitStatus::from_raw(3 << 8)),
            "handler command exited with code 3"
        );
        assert_eq!(
            exit_description("handler command", ExitStatus::from_raw(9)),
            "handler command was killed by signal 9"
        );
    }

    #[test]
    fn the_inherited_environment_has_no_kheish_variables() {
        assert!(INHERITED_ENV.iter().all(|k| !k.starts_with("KHEISH")));
    }

    #[test]
    fn capture_is_capped_and_drained() {
        let c = read_capped(&b"hello world"[..], 5);
        assert_eq!(c.bytes, b"hello");
        assert!(c.overflowed);
        let c = read_capped(&b"hi"[..], 5);
        assert_eq!((c.bytes.as_slice(), c.overflowed), (&b"hi"[..], false));
    }

    #[test]
    fn lines_are_capped_and_escaped() {
        let caps = LineCaps {
            max_lines: 2,
            max_chars: 6,
        };
        let mut seen = Vec::new();
        let dropped = for_each_line(&b"a\x1b[2Jb\nsecond line\nthird\n"[..], caps, true, |l| {
            seen.push(l.to_string())
        });
        assert_eq!(seen, ["a\\u{1b}[2Jb", "second"]);
        assert_eq!(dropped, 1);
        let mut none = 0;
        assert_eq!(for_each_line(&b"x\ny\n"[..], caps, false, |_| none += 1), 0);
        assert_eq!(none, 0);
    }

    #[test]
    fn env_is_cleared_but_for_the_allow_list_and_extras() {
        // cargo sets CARGO_MANIFEST_DIR for the test process: it must not reach the child.
        let script = "echo ${CARGO_MANIFEST_DIR:-unset} ${PATH:+path} $EXTRA";
        let out = command(
            "sh",
            &["-c".into(), script.into()],
            &[("EXTRA".into(), "yes".into())],
        )
        .output()
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "unset path yes"
        );
    }

    #[test]
    fn kill_stops_a_group_that_ignores_term() {
        let script = "trap '' TERM; echo ready; exec sleep 30";
        let mut child = command("sh", &["-c".into(), script.into()], &[])
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(first.trim(), "ready");
        let pid = child.id();
        signal_group(pid, Signal::Term).unwrap();
        signal_group(pid, Signal::Kill).unwrap();
        let status = child.wait().unwrap();
        // TERM is ignored by the group, so only the KILL can have ended it.
        assert_eq!(
            status.signal(),
            Some(9),
            "{}",
            exit_description("x", status)
        );
        // The group is gone now; signalling it again is not an error.
        signal_group(pid, Signal::Kill).unwrap();
    }
}
