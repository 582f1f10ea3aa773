//! Per-connection deadlines of the listener (SPEC §5): what a connection waits for and until
//! when. The socket wrapper [`Watched`] reports reads, the request handler reports the parsed
//! head, the read body and the answer, and the connection task sleeps until
//! [`Clock::deadline`] and closes the connection when it passes.
//!
//! | waiting for | deadline |
//! |---|---|
//! | the request head | `--header-timeout` from the accept, or from the first byte of a later request |
//! | the body | `--request-timeout` from the same start (the request answers 408 then) |
//! | the daemon's answer | none (a commit, a claim long-poll) |
//! | the next request (keep-alive) | `--idle-timeout` from the answer |
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a keep-alive connection
//! idles, so it cannot tell a slow head from an idle client. The head's bytes are also scanned
//! here for bare-LF line ends, which hyper accepts but the daemon answers with a 400 problem.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The listener's limits (`serve` flags; SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `--max-connections`: open connections in all.
    pub max_connections: usize,
    /// `--max-connections-per-client`: open connections from one client address.
    pub max_connections_per_client: usize,
    /// `--header-timeout`: the request head must arrive within this.
    pub header_timeout: Duration,
    /// `--request-timeout`: the whole request, head and body, must arrive within this.
    pub request_timeout: Duration,
    /// `--idle-timeout`: a keep-alive connection may wait this long for its next request.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            max_connections_per_client: 128,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A body that stalls past the request deadline is answered 408 by the request; the connection
/// itself is closed this much later if even that answer cannot be written.
const BODY_BACKSTOP: Duration = Duration::from_secs(1);

/// What a connection is waiting for, which decides its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The request head (from the accept, or from the first byte of a later request).
    Head,
    /// The body: the request as a whole has a deadline.
    Body,
    /// The daemon's answer: no read deadline (long-polls, commits).
    Answer,
    /// The next request on a keep-alive connection.
    Idle,
}

/// The deadlines of one connection (see the module docs). The IO wrapper reports reads, the
/// request handler reports the head, the body and the answer; the connection task sleeps until
/// [`Clock::deadline`].
pub struct Clock {
    limits: Limits,
    state: Mutex<ClockState>,
}

struct ClockState {
    wait: Wait,
    /// When the current request's first byte arrived (or the connection was accepted).
    started: Instant,
    head: HeadScan,
}

/// What the request handler learns when a head has been parsed.
pub struct HeadInfo {
    /// The whole request (head and body) must have arrived by then.
    pub body_deadline: Instant,
    /// A line of the head ended with a bare LF instead of CRLF.
    pub bare_lf: bool,
}

impl Clock {
    pub fn new(limits: Limits, now: Instant) -> Clock {
        Clock {
            limits,
            state: Mutex::new(ClockState {
                wait: Wait::Head,
                started: now,
                head: HeadScan::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived from the client.
    fn on_read(&self, bytes: &[u8]) {
        let mut state = self.lock();
        if state.wait == Wait::Idle {
            state.wait = Wait::Head;
            state.started = Instant::now();
            state.head = HeadScan::default();
        }
        if state.wait == Wait::Head {
            state.head.feed(bytes);
        }
    }

    /// hyper parsed a request head; the body (if any) is read next.
    pub fn head_done(&self) -> HeadInfo {
        let mut state = self.lock();
        if state.wait == Wait::Idle {
            // A pipelined head that was already buffered.
            state.started = Instant::now();
        }
        state.wait = Wait::Body;
        HeadInfo {
            body_deadline: state.started + self.limits.request_timeout,
            bare_lf: state.head.bare_lf,
        }
    }

    /// The request has been read; the daemon works on its answer.
    pub fn body_done(&self) {
        self.lock().wait = Wait::Answer;
    }

    /// The answer is handed to hyper; the connection idles until the next request.
    pub fn answered(&self) {
        let mut state = self.lock();
        state.wait = Wait::Idle;
        state.started = Instant::now();
        state.head = HeadScan::default();
    }

    /// When the connection is closed unless something happens first, and what it waits for.
    pub fn deadline(&self) -> Option<(Instant, &'static str)> {
        let state = self.lock();
        match state.wait {
            Wait::Head => Some((state.started + self.limits.header_timeout, "header")),
            Wait::Body => Some((
                state.started + self.limits.request_timeout + BODY_BACKSTOP,
                "request",
            )),
            Wait::Answer => None,
            Wait::Idle => Some((state.started + self.limits.idle_timeout, "idle")),
        }
    }
}

/// Scans the bytes of a request head for bare-LF line ends, up to the blank line that ends it.
#[derive(Debug, Default)]
struct HeadScan {
    prev: u8,
    /// Something other than line ends was seen on the current line.
    line_has_content: bool,
    /// Some content was seen at all (leading blank lines do not end a head).
    seen_content: bool,
    done: bool,
    bare_lf: bool,
}

impl HeadScan {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.done {
                return;
            }
            match b {
                b'\n' => {
                    if self.prev != b'\r' {
                        self.bare_lf = true;
                    }
                    if !self.line_has_content && self.seen_content {
                        self.done = true;
                    }
                    self.line_has_content = false;
                }
                b'\r' => {}
                _ => {
                    self.line_has_content = true;
                    self.seen_content = true;
                }
            }
            self.prev = b;
        }
    }
}

/// The connection's socket as hyper sees it: reads are reported to the [`Clock`].
pub struct Watched {
    pub io: TcpStream,
    pub clock: Arc<Clock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                self.clock.on_read(new);
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> HeadScan {
        let mut s = HeadScan::default();
        for c in chunks {
            s.feed(c);
        }
        s
    }

    #[test]
    fn bare_lf_is_found_in_the_head_only() {
        assert!(!scan(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody\nwith\nlf"]).bare_lf);
        assert!(scan(&[b"GET / HTTP/1.1\nHost: x\n\n"]).bare_lf);
        assert!(scan(&[b"GET / HTTP/1.1\r\nHost: x\n\r\n"]).bare_lf);
        // Split across reads, the CR in one chunk and the LF in the next.
        let s = scan(&[b"GET / HTTP/1.1\r", b"\nHost: x\r\n\r", b"\n", b"a\nb"]);
        assert!(!s.bare_lf && s.done);
    }
}
