//! The one raw HTTP/1.1 client of the tests, so a test controls every byte it sends (duplicate
//! headers, invalid UTF-8, bad framing) and sees every byte that comes back. It builds request
//! bytes, sends them on a fresh loopback connection and parses one response; the header and
//! chunked-body readers are shared with the fake receiver (`support::receiver`), which parses
//! the daemon's requests with them.
//!
//! It must not grow an HTTP library: no keep-alive, no redirects, no retries. A test that needs
//! any of those is testing the daemon's transport and says so itself.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// How long a connect, a read or a write may take before the exchange counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Every header line in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body parsed as JSON (panics with the status and body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// The first value of header `name` in `headers` (case-insensitive).
pub fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// No extra headers, typed for [`request_bytes`] and [`chunked_request_bytes`].
pub const NO_HEADERS: &[(&str, &str)] = &[];

/// The bytes of `method target` with `Host`, `Connection: close`, `headers` in order, and a
/// `Content-Length` body.
pub fn request_bytes<K: AsRef<str>, V: AsRef<str>>(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(K, V)],
    body: &[u8],
) -> Vec<u8> {
    let mut bytes = head_bytes(addr, method, target, headers);
    bytes.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// The bytes of a `POST` of `len` spaces with chunked transfer encoding (64 KiB chunks).
pub fn chunked_request_bytes<K: AsRef<str>, V: AsRef<str>>(
    addr: SocketAddr,
    target: &str,
    headers: &[(K, V)],
    len: usize,
) -> Vec<u8> {
    let mut bytes = head_bytes(addr, "POST", target, headers);
    bytes.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
    let mut left = len;
    while left > 0 {
        let n = left.min(64 * 1024);
        bytes.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        bytes.extend(std::iter::repeat_n(b' ', n));
        bytes.extend_from_slice(b"\r\n");
        left -= n;
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}

/// The request line and headers, without the blank line that ends them.
fn head_bytes<K: AsRef<str>, V: AsRef<str>>(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(K, V)],
) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{}: {}\r\n", k.as_ref(), v.as_ref()));
    }
    head.into_bytes()
}

/// Sends `request` on a fresh connection and reads one final (non-1xx) response.
///
/// `Err` says what failed: the connection was refused, reset or closed before a complete
/// response, or the response was not HTTP. The request is written from a second thread while
/// this one reads, so a server that answers before reading everything (413) is seen even if it
/// then closes. With `half_close` the write side is shut after the request, so a server waiting
/// for bytes that never come sees EOF.
pub fn exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> Result<Response, String> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("setting timeouts: {e}"))?;
    let head_only = request.starts_with(b"HEAD ");
    let mut writer = stream
        .try_clone()
        .map_err(|e| format!("cloning the stream: {e}"))?;
    let request = request.to_vec();
    let writing = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
        if half_close {
            let _ = writer.shutdown(Shutdown::Write);
        }
    });
    let resp = read_response(&mut BufReader::new(stream), head_only);
    let _ = writing.join();
    resp
}

/// [`exchange`] for tests that expect an answer: panics with the reason when there is none.
pub fn send(addr: SocketAddr, request: &[u8]) -> Response {
    exchange(addr, request, false).unwrap_or_else(|e| {
        panic!(
            "no HTTP response from {addr}: {e}\n--- request\n{}",
            String::from_utf8_lossy(&request[..request.len().min(2048)])
        )
    })
}

/// Reads one final (non-1xx) response: a `Content-Length`, chunked or read-to-EOF body, none
/// for `HEAD` (`head_only`), 204 and 304.
pub fn read_response(reader: &mut impl BufRead, head_only: bool) -> Result<Response, String> {
    loop {
        let status_line = read_line(reader)?.ok_or("connection closed before a status line")?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers = read_headers(reader)?;
        if (100..200).contains(&status) {
            continue;
        }
        let mut body = Vec::new();
        if head_only || status == 204 || status == 304 {
            // No body follows.
        } else if let Some(len) = header(&headers, "content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| format!("bad Content-Length {len:?}"))?;
            body.resize(len, 0);
            reader
                .read_exact(&mut body)
                .map_err(|e| format!("reading a {len}-byte body: {e}"))?;
        } else if is_chunked(&headers) {
            body = read_chunked_body(reader)?;
        } else {
            reader
                .read_to_end(&mut body)
                .map_err(|e| format!("reading the body to EOF: {e}"))?;
        }
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}

/// Whether `Transfer-Encoding` names `chunked`.
pub fn is_chunked(headers: &[(String, String)]) -> bool {
    header(headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

/// One line including its line end; `Ok(None)` at EOF.
pub fn read_line(reader: &mut impl BufRead) -> Result<Option<String>, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(line)),
        Err(e) => Err(format!("reading a line: {e}")),
    }
}

/// Header lines up to the blank line that ends them, names and values trimmed.
pub fn read_headers(reader: &mut impl BufRead) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or("connection closed inside the headers")?;
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(headers);
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("header line without a colon: {line:?}"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
}

/// A chunked body (chunk extensions and trailers skipped), after the headers.
pub fn read_chunked_body(reader: &mut impl BufRead) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let size_line = read_line(reader)?.ok_or("connection closed before a chunk size")?;
        let size_field = size_line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_field, 16)
            .map_err(|_| format!("bad chunk size {size_line:?}"))?;
        if size == 0 {
            // Trailers, then the blank line.
            while read_line(reader)?.is_some_and(|t| !t.trim().is_empty()) {}
            return Ok(body);
        }
        let mut chunk = vec![0; size + 2];
        reader
            .read_exact(&mut chunk)
            .map_err(|e| format!("reading a {size}-byte chunk: {e}"))?;
        body.extend_from_slice(&chunk[..size]);
    }
}
