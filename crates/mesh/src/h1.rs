//! HTTP/1.1 on both sides of a proxy, read by hand so that every byte that decides anything
//! passes through `ringfence_policy::request` first: the request head is parsed from the raw
//! bytes (at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] fields), bodies are relayed by their
//! framing (`Content-Length` or `chunked`, re-framed on the way), hop-by-hop fields are dropped,
//! and a connection whose framing is in doubt is closed rather than reused.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use ringfence_policy::{Framing, Refusal};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest request or response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header fields accepted.
pub const MAX_HEADERS: usize = 64;
/// The longest chunk-size line accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The request is refused (answer, then close).
    #[error("{0}")]
    Refused(Refusal),
    /// The peer went away or sent nonsense mid-stream (close without an answer).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The upstream answered with something that is not HTTP/1.1.
    #[error("upstream: {0}")]
    Upstream(String),
}

impl From<Refusal> for H1Error {
    fn from(r: Refusal) -> Self {
        Self::Refused(r)
    }
}

/// A stream with a read buffer.
#[derive(Debug)]
pub struct Conn<S> {
    /// The stream.
    pub io: S,
    buf: BytesMut,
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The method, as sent.
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor: u8,
    /// Fields in order, names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RequestHead {
    /// Every value of field `name` (compared without case).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The one value of `name`: `Ok(None)` if absent, refused if sent more than once.
    pub fn one<'a>(&'a self, name: &'a str) -> Result<Option<&'a [u8]>, Refusal> {
        let mut it = self.all(name);
        let first = it.next();
        if it.next().is_some() {
            return Err(Refusal {
                status: 400,
                reason: format!("more than one {name} field"),
            });
        }
        Ok(first)
    }

    /// Whether the client wants the connection closed after this exchange.
    pub fn wants_close(&self) -> bool {
        let listed = |token: &str| {
            self.all("connection").any(|v| {
                v.split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
            })
        };
        if self.minor == 0 {
            !listed("keep-alive")
        } else {
            listed("close")
        }
    }
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// Fields in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// `0` for HTTP/1.0.
    pub minor: u8,
}

/// The hop-by-hop fields a proxy never forwards (RFC 9110 §7.6.1), plus any the
/// `Connection` field names.
fn hop_by_hop(name: &str, connection: &[&[u8]]) -> bool {
    const FIXED: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ];
    FIXED.iter().any(|f| name.eq_ignore_ascii_case(f))
        || name.eq_ignore_ascii_case("transfer-encoding")
        || name.eq_ignore_ascii_case("content-length")
        || connection.iter().any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
        })
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wraps `io`.
    pub fn new(io: S) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Reads more bytes; `Ok(0)` at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8 * 1024);
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// Reads the next request head. `Ok(None)` if the client closed cleanly between requests
    /// or stayed idle for `idle`.
    pub async fn read_request(&mut self, idle: Duration) -> Result<Option<RequestHead>, H1Error> {
        loop {
            if !self.buf.is_empty() {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut fields);
                match req.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let head = RequestHead {
                            method: req.method.unwrap_or_default().to_owned(),
                            target: req.path.unwrap_or_default().to_owned(),
                            minor: req.version.unwrap_or(1),
                            headers: req
                                .headers
                                .iter()
                                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                                .collect(),
                        };
                        self.buf.advance(n);
                        return Ok(Some(head));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(httparse::Error::TooManyHeaders) => {
                        return Err(Refusal {
                            status: 431,
                            reason: format!("more than {MAX_HEADERS} header fields"),
                        }
                        .into());
                    }
                    Err(e) => {
                        return Err(Refusal {
                            status: 400,
                            reason: format!("malformed request head: {e}"),
                        }
                        .into());
                    }
                }
                if self.buf.len() >= MAX_HEAD {
                    return Err(Refusal {
                        status: 431,
                        reason: format!("request head larger than {MAX_HEAD} bytes"),
                    }
                    .into());
                }
            }
            let wait = if self.buf.is_empty() {
                idle
            } else {
                // A head that has started must finish promptly (slow-loris).
                Duration::from_secs(10)
            };
            match tokio::time::timeout(wait, self.fill()).await {
                Err(_) if self.buf.is_empty() => return Ok(None),
                Err(_) => {
                    return Err(Refusal {
                        status: 408,
                        reason: "request head not completed in time".into(),
                    }
                    .into());
                }
                Ok(Ok(0)) if self.buf.is_empty() => return Ok(None),
                Ok(Ok(0)) => {
                    return Err(H1Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Reads a response head, skipping nothing (1xx heads are returned too).
    pub async fn read_response(&mut self, wait: Duration) -> Result<ResponseHead, H1Error> {
        let read = async {
            loop {
                if !self.buf.is_empty() {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut res = httparse::Response::new(&mut fields);
                    match res.parse(&self.buf) {
                        Ok(httparse::Status::Complete(n)) => {
                            let head = ResponseHead {
                                status: res.code.unwrap_or(502),
                                reason: res.reason.unwrap_or_default().to_owned(),
                                minor: res.version.unwrap_or(1),
                                headers: res
                                    .headers
                                    .iter()
                                    .map(|h| (h.name.to_owned(), h.value.to_vec()))
                                    .collect(),
                            };
                            self.buf.advance(n);
                            return Ok(head);
                        }
                        Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD => {}
                        Ok(httparse::Status::Partial) => {
                            return Err(H1Error::Upstream("response head too large".into()));
                        }
                        Err(e) => return Err(H1Error::Upstream(format!("bad response: {e}"))),
                    }
                }
                if self.fill().await? == 0 {
                    return Err(H1Error::Upstream("closed before responding".into()));
                }
            }
        };
        tokio::time::timeout(wait, read)
            .await
            .map_err(|_| H1Error::Upstream(format!("no response within {wait:?}")))?
    }

    /// The whole body, when `framing` is a length the buffer already holds (or no body), so
    /// that head and body can go out in one write.
    pub fn take_buffered_body(&mut self, framing: BodyFraming) -> Option<BytesMut> {
        match framing {
            BodyFraming::Empty => Some(BytesMut::new()),
            BodyFraming::Length(n) => {
                let n = usize::try_from(n).ok()?;
                (self.buf.len() >= n).then(|| self.buf.split_to(n))
            }
            BodyFraming::Chunked | BodyFraming::UntilClose => None,
        }
    }

    /// Relays a body of `framing` from this connection to `out` (re-framed the same way).
    pub async fn relay_body<W: AsyncWrite + Unpin>(
        &mut self,
        framing: BodyFraming,
        out: &mut W,
    ) -> Result<(), H1Error> {
        match framing {
            BodyFraming::Empty => Ok(()),
            BodyFraming::Length(n) => self.copy_exact(n, out).await,
            BodyFraming::Chunked => self.relay_chunked(out).await,
            BodyFraming::UntilClose => {
                if !self.buf.is_empty() {
                    out.write_all(&self.buf).await?;
                    self.buf.clear();
                }
                tokio::io::copy(&mut self.io, out).await?;
                Ok(())
            }
        }
    }

    /// Relays everything until the upstream closes, as chunks.
    pub async fn relay_until_close_as_chunks<W: AsyncWrite + Unpin>(
        &mut self,
        out: &mut W,
    ) -> Result<(), H1Error> {
        loop {
            if self.buf.is_empty() && self.fill().await? == 0 {
                break;
            }
            let chunk = self.buf.split();
            out.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            out.write_all(&chunk).await?;
            out.write_all(b"\r\n").await?;
        }
        out.write_all(b"0\r\n\r\n").await?;
        Ok(())
    }

    async fn copy_exact<W: AsyncWrite + Unpin>(
        &mut self,
        mut n: u64,
        out: &mut W,
    ) -> Result<(), H1Error> {
        while n > 0 {
            if self.buf.is_empty() && self.fill().await? == 0 {
                return Err(H1Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(self.buf.len());
            let chunk = self.buf.split_to(take);
            out.write_all(&chunk).await?;
            n -= take as u64;
        }
        Ok(())
    }

    async fn read_line(&mut self) -> Result<BytesMut, H1Error> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let mut line = self.buf.split_to(i + 2);
                line.truncate(i);
                return Ok(line);
            }
            if self.buf.len() > MAX_CHUNK_LINE {
                return Err(Refusal {
                    status: 400,
                    reason: "chunk line too long".into(),
                }
                .into());
            }
            if self.fill().await? == 0 {
                return Err(H1Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    async fn relay_chunked<W: AsyncWrite + Unpin>(&mut self, out: &mut W) -> Result<(), H1Error> {
        let bad = |m: &str| {
            H1Error::Refused(Refusal {
                status: 400,
                reason: m.to_owned(),
            })
        };
        loop {
            let line = self.read_line().await?;
            let size_part = line[..].split(|&b| b == b';').next().unwrap_or_default();
            let size_str = std::str::from_utf8(size_part)
                .ok()
                .map(str::trim_ascii)
                .filter(|s| {
                    !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_hexdigit())
                })
                .ok_or_else(|| bad("malformed chunk size"))?;
            let size =
                u64::from_str_radix(size_str, 16).map_err(|_| bad("malformed chunk size"))?;
            out.write_all(format!("{size:x}\r\n").as_bytes()).await?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let t = self.read_line().await?;
                    out.write_all(&t).await?;
                    out.write_all(b"\r\n").await?;
                    if t.is_empty() {
                        return Ok(());
                    }
                }
            }
            self.copy_exact(size, out).await?;
            let end = self.read_line().await?;
            if !end.is_empty() {
                return Err(bad("chunk data longer than its size"));
            }
            out.write_all(b"\r\n").await?;
        }
    }
}

/// How a body on the wire is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// None.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

impl From<Framing> for BodyFraming {
    fn from(f: Framing) -> Self {
        match f {
            Framing::Empty => Self::Empty,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked,
        }
    }
}

/// The framing of a response to a `method` request.
pub fn response_framing(head: &ResponseHead, head_request: bool) -> Result<BodyFraming, H1Error> {
    if head_request || head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok(BodyFraming::Empty);
    }
    let f = ringfence_policy::request_framing(
        head.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
    );
    match f {
        Ok(Framing::Empty)
            if head
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-length")) =>
        {
            Ok(BodyFraming::Length(0))
        }
        Ok(Framing::Empty) => Ok(BodyFraming::UntilClose),
        Ok(f) => Ok(f.into()),
        Err(r) => Err(H1Error::Upstream(format!("response framing: {}", r.reason))),
    }
}

/// Writes a request head: `target` instead of the one received, the end-to-end fields of
/// `head` except those in `drop`, then `extra`, then the framing.
pub fn encode_request(
    head: &RequestHead,
    target: &str,
    drop: &[&str],
    extra: &[(&str, &[u8])],
    framing: BodyFraming,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let connection: Vec<&[u8]> = head.all("connection").collect();
    for (n, v) in &head.headers {
        if hop_by_hop(n, &connection)
            || n.eq_ignore_ascii_case("expect")
            || drop.iter().any(|d| n.eq_ignore_ascii_case(d))
        {
            continue;
        }
        push_field(&mut out, n, v);
    }
    for (n, v) in extra {
        push_field(&mut out, n, v);
    }
    push_framing(&mut out, framing);
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes a response head with its end-to-end fields and the framing it will be sent with.
pub fn encode_response(head: &ResponseHead, framing: BodyFraming, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", head.status, head.reason).as_bytes());
    let connection: Vec<&[u8]> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .map(|(_, v)| v.as_slice())
        .collect();
    let keep_length = head.status == 304 || framing == BodyFraming::Empty;
    for (n, v) in &head.headers {
        if keep_length && n.eq_ignore_ascii_case("content-length") {
            // A HEAD or 304 response keeps the length of the body it describes.
            push_field(&mut out, n, v);
            continue;
        }
        if hop_by_hop(n, &connection) {
            continue;
        }
        push_field(&mut out, n, v);
    }
    if !keep_length {
        push_framing(&mut out, framing);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_framing(out: &mut Vec<u8>, framing: BodyFraming) {
    match framing {
        BodyFraming::Empty | BodyFraming::UntilClose => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes())
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
}

/// The answer the proxy itself gives: `status`, a plain-text `message`, and the connection
/// closed.
pub fn refusal_response(status: u16, message: &str) -> Vec<u8> {
    let body = format!("ringfence: {message}\n");
    format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        reason_phrase(status),
        body.len()
    )
    .into_bytes()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests;
