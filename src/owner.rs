//! Claim owners that name a process of this host, so that a starting daemon (or
//! `drain-deliveries`) can release at once the run and delivery claims of a process that no
//! longer exists, instead of waiting out their lease (issue 15).
//!
//! The format (version `proc`, documented in docs/operations.md):
//!
//! ```text
//! proc:<host>:<pid>:<start>:<boot>:<pidns>:<role>
//! ```
//!
//! - `host`: the host name (`/proc/sys/kernel/hostname`), characters other than
//!   `[A-Za-z0-9._-]` replaced by `_`;
//! - `pid`: the process id, as this pid namespace sees it;
//! - `start`: the process start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot),
//!   so a pid reused by a later process is not mistaken for the owner;
//! - `boot`: the kernel's boot id (`/proc/sys/kernel/random/boot_id`, without dashes), so a
//!   pid and start time from before a reboot are never compared with this boot's processes;
//! - `pidns`: the inode of the pid namespace (`/proc/self/ns/pid`), so two containers sharing a
//!   state root never judge each other's pids;
//! - `role`: what holds the claim (`serve-1a2b3c4d` for a daemon's delivery pool, `drain-…`,
//!   `echo-worker-1`, …); it may contain `:`.
//!
//! An owner is [`Liveness::Gone`] only when host, boot and pid namespace are this process's and
//! the pid no longer exists, is a zombie, or now belongs to a process with another start time.
//! Every other owner — another host, another boot, another pid namespace, a `/proc` that cannot
//! be read, or an owner in another format (the control plane's `control-plane:<address>` of
//! external workers) — is [`Liveness::Unknown`] and keeps its lease until it expires. Where
//! `/proc` is missing (not Linux), [`this_process`] falls back to `<role>-<pid>`, which is never
//! released early.

use std::fmt;
use std::io;
use std::sync::OnceLock;

/// The marker that starts every owner of this format.
const MARKER: &str = "proc";

/// A parsed process owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOwner {
    pub host: String,
    pub pid: u32,
    pub start: u64,
    pub boot: String,
    pub pidns: u64,
    pub role: String,
}

/// What is known about the process behind a claim owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// A process of this host that still runs (same pid, same start time).
    Alive,
    /// A process of this host that is gone: its claims may be released at once.
    Gone,
    /// Not this format, not this host / boot / pid namespace, or unreadable: keep the lease.
    Unknown,
}

/// Where this process lives: what an owner must match to be judged here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Here {
    host: String,
    boot: String,
    pidns: u64,
    pid: u32,
    start: u64,
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    start: u64,
    /// State `Z` (zombie) or `X` (dead): the process runs no code any more.
    dead: bool,
}

impl fmt::Display for ProcessOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{MARKER}:{}:{}:{}:{}:{}:{}",
            self.host, self.pid, self.start, self.boot, self.pidns, self.role
        )
    }
}

impl ProcessOwner {
    /// Parses an owner of this format; `None` for anything else (other owners are not
    /// processes of a host).
    pub fn parse(owner: &str) -> Option<ProcessOwner> {
        let mut parts = owner.splitn(7, ':');
        if parts.next()? != MARKER {
            return None;
        }
        let host = parts.next()?;
        let pid = parts.next()?;
        let start = parts.next()?;
        let boot = parts.next()?;
        let pidns = parts.next()?;
        let role = parts.next()?;
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        let boot_ok = boot.len() == 32 && boot.bytes().all(|b| b.is_ascii_hexdigit());
        if !host_ok || !boot_ok || role.is_empty() {
            return None;
        }
        Some(ProcessOwner {
            host: host.to_string(),
            pid: digits(pid)?.try_into().ok().filter(|p| *p > 0)?,
            start: digits(start)?,
            boot: boot.to_ascii_lowercase(),
            pidns: digits(pidns)?,
            role: role.to_string(),
        })
    }

    /// The owner naming process `pid` of this host (as it runs now) with `role`; `None` when
    /// `/proc` does not say (no such process, or not Linux).
    pub fn of_pid(pid: u32, role: &str) -> Option<ProcessOwner> {
        let here = here()?;
        let stat = read_stat(pid).ok()?;
        Some(ProcessOwner {
            host: here.host.clone(),
            pid,
            start: stat.start,
            boot: here.boot.clone(),
            pidns: here.pidns,
            role: role.to_string(),
        })
    }
}

/// The claim owner of this process for `role`: [`ProcessOwner`]'s format, or `<role>-<pid>`
/// where `/proc` cannot tell who this process is.
pub fn this_process(role: &str) -> String {
    match here() {
        Some(here) => ProcessOwner {
            host: here.host.clone(),
            pid: here.pid,
            start: here.start,
            boot: here.boot.clone(),
            pidns: here.pidns,
            role: role.to_string(),
        }
        .to_string(),
        None => format!("{role}-{}", std::process::id()),
    }
}

/// What is known about the process behind `owner` (see the module docs).
pub fn liveness(owner: &str) -> Liveness {
    let (Some(owner), Some(here)) = (ProcessOwner::parse(owner), here()) else {
        return Liveness::Unknown;
    };
    if owner.host != here.host || owner.boot != here.boot || owner.pidns != here.pidns {
        return Liveness::Unknown;
    }
    judge(owner.start, read_stat(owner.pid))
}

/// True when `owner` is a process of this host that is gone: its claims may be released.
pub fn is_gone(owner: &str) -> bool {
    liveness(owner) == Liveness::Gone
}

/// The verdict on an owner started at `start` from what its pid's `/proc` entry says now.
fn judge(start: u64, stat: io::Result<Stat>) -> Liveness {
    match stat {
        Ok(stat) if stat.dead || stat.start != start => Liveness::Gone,
        Ok(_) => Liveness::Alive,
        // No such process (ESRCH when it exits while being read).
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(3) => {
            Liveness::Gone
        }
        Err(_) => Liveness::Unknown,
    }
}

fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// This process's host, boot, pid namespace, pid and start time, read once.
fn here() -> Option<&'static Here> {
    static HERE: OnceLock<Option<Here>> = OnceLock::new();
    HERE.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
        let pid = std::process::id();
        Some(Here {
            host: sanitize_host(host.trim())?,
            boot: parse_boot_id(&boot)?,
            pidns: parse_ns_link(&ns.to_string_lossy())?,
            pid,
            start: read_stat(pid).ok()?.start,
        })
    })
    .as_ref()
}

/// A host name in the owner's alphabet (`None` when empty).
fn sanitize_host(host: &str) -> Option<String> {
    let clean: String = host
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    (!clean.is_empty()).then_some(clean)
}

/// `119b2a97-d387-4e86-9dbd-8a5fff4bb5c4` -> 32 lowercase hex digits.
fn parse_boot_id(text: &str) -> Option<String> {
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_lowercase())
}

/// `pid:[4026531836]` -> 4026531836.
fn parse_ns_link(link: &str) -> Option<u64> {
    digits(link.strip_prefix("pid:[")?.strip_suffix(']')?)
}

fn read_stat(pid: u32) -> io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat is not in the expected format"),
        )
    })
}

/// Reads the state (field 3) and start time (field 22) of a `/proc/<pid>/stat` line. The
/// command name (field 2) is in parentheses and may itself contain `)` and spaces, so fields
/// are counted from the LAST `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = *fields.first()?;
    let start = digits(fields.get(19)?)?;
    Some(Stat {
        start,
        dead: matches!(state, "Z" | "X" | "x"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    const STAT: &str = "3183 (a) b) c) S 3179 3179 31914 0 -1 4194304 99 0 0 0 0 0 0 0 20 0 1 0 \
                        1086402 3133440 368 18446744073709551615 0";

    fn sample() -> ProcessOwner {
        ProcessOwner {
            host: "vm-1.example".into(),
            pid: 3183,
            start: 1_086_402,
            boot: "119b2a97d3874e869dbd8a5fff4bb5c4".into(),
            pidns: 4_026_531_836,
            role: "serve-0a1b2c3d".into(),
        }
    }

    #[test]
    fn an_owner_round_trips_through_its_text() {
        let owner = sample();
        let text = owner.to_string();
        assert_eq!(
            text,
            "proc:vm-1.example:3183:1086402:119b2a97d3874e869dbd8a5fff4bb5c4:4026531836:serve-0a1b2c3d"
        );
        assert_eq!(ProcessOwner::parse(&text), Some(owner.clone()));
        // The role may contain colons.
        let colons = ProcessOwner {
            role: "a:b:c".into(),
            ..owner
        };
        assert_eq!(ProcessOwner::parse(&colons.to_string()), Some(colons));
    }

    #[test]
    fn other_owner_formats_do_not_parse() {
        let good = sample().to_string();
        for bad in [
            "control-plane:127.0.0.1",
            "control-plane:::1",
            "echo-worker-1",
            "serve-1234-0a1b2c3d-0",
            "",
            "proc",
            "proc:vm:1:2:119b2a97d3874e869dbd8a5fff4bb5c4:4026531836",
            "proc:vm:1:2:119b2a97d3874e869dbd8a5fff4bb5c4:4026531836:",
            "proc::1:2:119b2a97d3874e869dbd8a5fff4bb5c4:4026531836:r",
            "proc:v m:1:2:119b2a97d3874e869dbd8a5fff4bb5c4:4026531836:r",
            "proc:vm:0:2:119b2a97d3874e869dbd8a5fff4bb5c4:4026531836:r",
            "proc:vm:-1:2:119b2a97d3874e869dbd8a5fff4bb5c4:4026531836:r",
            "proc:vm:99999999999:2:119b2a97d3874e869dbd8a5fff4bb5c4:4026531836:r",
            "proc:vm:1:+2:119b2a97d3874e869dbd8a5fff4bb5c4:4026531836:r",
            "proc:vm:1:2:119b2a97d3874e869dbd8a5fff4bb5c:4026531836:r",
            "proc:vm:1:2:119b2a97d3874e869dbd8a5fff4bb5cz:4026531836:r",
            "proc:vm:1:2:119b2a97d3874e869dbd8a5fff4bb5c4:ns:r",
            "PROC:vm:1:2:119b2a97d3874e869dbd8a5fff4bb5c4:4026531836:r",
        ] {
            assert_eq!(ProcessOwner::parse(bad), None, "{bad:?}");
            assert_eq!(liveness(bad), Liveness::Unknown, "{bad:?}");
        }
        assert!(ProcessOwner::parse(&good).is_some());
    }

    #[test]
    fn stat_lines_are_read_from_the_last_parenthesis() {
        assert_eq!(
            parse_stat(STAT),
            Some(Stat {
                start: 1_086_402,
                dead: false
            })
        );
        let zombie = STAT.replace(") S ", ") Z ");
        assert!(parse_stat(&zombie).unwrap().dead);
        assert_eq!(parse_stat("3183 (cat) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn boot_ids_namespaces_and_hosts_are_normalised() {
        assert_eq!(
            parse_boot_id("119B2A97-d387-4e86-9dbd-8a5fff4bb5c4\n").as_deref(),
            Some("119b2a97d3874e869dbd8a5fff4bb5c4")
        );
        assert_eq!(parse_boot_id("not-a-boot-id"), None);
        assert_eq!(parse_ns_link("pid:[4026531836]"), Some(4_026_531_836));
        assert_eq!(parse_ns_link("net:[4026531836]"), None);
        assert_eq!(sanitize_host("my host:1").as_deref(), Some("my_host_1"));
        assert_eq!(sanitize_host(""), None);
    }

    #[test]
    fn the_verdict_follows_pid_start_time_and_state() {
        let alive = Stat {
            start: 7,
            dead: false,
        };
        assert_eq!(judge(7, Ok(alive)), Liveness::Alive);
        assert_eq!(judge(8, Ok(alive)), Liveness::Gone, "pid reused");
        let zombie = Stat {
            start: 7,
            dead: true,
        };
        assert_eq!(judge(7, Ok(zombie)), Liveness::Gone);
        let missing = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(judge(7, Err(missing)), Liveness::Gone);
        assert_eq!(
            judge(7, Err(io::Error::from_raw_os_error(3))),
            Liveness::Gone
        );
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(judge(7, Err(denied)), Liveness::Unknown);
    }

    /// The rest needs Linux's `/proc` (the platform `serve` runs on).
    fn me() -> ProcessOwner {
        let text = this_process("test-role");
        ProcessOwner::parse(&text).unwrap_or_else(|| panic!("not a process owner: {text}"))
    }

    #[test]
    fn this_process_is_alive_and_a_changed_field_is_gone_or_unknown() {
        let me = me();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.role, "test-role");
        assert_eq!(liveness(&me.to_string()), Liveness::Alive);
        assert!(!is_gone(&me.to_string()));
        // The same pid with another start time: the pid was reused by another process.
        let reused = ProcessOwner {
            start: me.start + 1,
            ..me.clone()
        };
        assert_eq!(liveness(&reused.to_string()), Liveness::Gone);
        // A pid that cannot exist (pids stay below pid_max).
        let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let missing = ProcessOwner {
            pid: pid_max,
            ..me.clone()
        };
        assert_eq!(liveness(&missing.to_string()), Liveness::Gone);
        // Another host, boot or pid namespace is never judged here.
        for other in [
            ProcessOwner {
                host: format!("{}-other", me.host),
                ..missing.clone()
            },
            ProcessOwner {
                boot: "0".repeat(32),
                ..missing.clone()
            },
            ProcessOwner {
                pidns: me.pidns + 1,
                ..missing.clone()
            },
        ] {
            assert_eq!(liveness(&other.to_string()), Liveness::Unknown, "{other}");
        }
    }

    #[test]
    fn a_child_is_alive_while_it_runs_and_gone_once_it_exited_even_unreaped() {
        let mut child = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let owner = ProcessOwner::of_pid(child.id(), "drain-x")
            .unwrap()
            .to_string();
        assert_eq!(liveness(&owner), Liveness::Alive);
        // EOF on stdin ends `cat`; not reaped yet, it stays a zombie, which is gone too.
        drop(child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while liveness(&owner) != Liveness::Gone {
            assert!(
                Instant::now() < deadline,
                "the exited child still looks alive"
            );
            std::thread::yield_now();
        }
        child.wait().unwrap();
        assert_eq!(liveness(&owner), Liveness::Gone);
    }
}
