//! The one place a request is read before any decision: the method, the request target, the
//! `Host` and the message framing. Whatever is ambiguous is refused rather than guessed at, so
//! that the proxy, the policy and the application behind it cannot disagree about what was
//! asked (request smuggling, path confusion).
//!
//! The path is normalized here and only here: escapes of unreserved characters are decoded,
//! other escapes get upper-case hex; the result is what the policy decides on and what the
//! application receives. Paths that would normalize to something else under a different
//! reader — empty segments, dot segments, escaped `/` or `\`, `;` parameters, fragments,
//! NUL and other control bytes — are refused.

use std::fmt;

/// Largest request target accepted.
pub const MAX_TARGET_LEN: usize = 8 * 1024;

/// A refused request: the status to answer and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct Refusal {
    /// HTTP status code.
    pub status: u16,
    /// Why, in full: what the audit log keeps; [`Refusal::caller_message`] is what the
    /// client sees.
    pub reason: String,
}

/// How a policy denial's reason starts.
const DENIED: &str = "denied: ";

/// What a caller the service-access policy refused is told.
pub const DENIED_FOR_CALLER: &str = "denied by the service's access policy";

impl Refusal {
    fn bad(reason: impl Into<String>) -> Self {
        Self {
            status: 400,
            reason: reason.into(),
        }
    }

    /// A denial by the service-access policy (403); `detail` says which policy decided or
    /// that none permits the call.
    pub fn denied(detail: &str) -> Self {
        Self {
            status: 403,
            reason: format!("{DENIED}{detail}"),
        }
    }

    /// What the refused client is told: the reason, except for a policy denial, where which
    /// policy decided (and so how the service's policy is built) is the service's business
    /// and stays in the audit log.
    pub fn caller_message(&self) -> &str {
        if self.status == 403 && self.reason.starts_with(DENIED) {
            DENIED_FOR_CALLER
        } else {
            &self.reason
        }
    }
}

/// The methods a service can be called with. Methods are case-sensitive (RFC 9110 §9.1), so
/// `get` is not `GET`; `CONNECT` and `TRACE` are not proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// PATCH
    Patch,
    /// OPTIONS
    Options,
}

impl Method {
    /// Every method, in the order above.
    pub const ALL: [Method; 7] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Patch,
        Method::Options,
    ];

    /// The method named exactly `s`.
    pub fn parse(s: &str) -> Result<Self, Refusal> {
        Ok(match s {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "PATCH" => Self::Patch,
            "OPTIONS" => Self::Options,
            other => {
                let upper = other.to_ascii_uppercase();
                let reason = if upper != other && Self::parse(&upper).is_ok() {
                    format!(
                        "method {other:?} is not allowed: methods are case-sensitive, send {upper:?}"
                    )
                } else {
                    format!(
                        "method {:?} is not allowed: use GET, HEAD, POST, PUT, DELETE, PATCH or OPTIONS",
                        other.chars().take(32).collect::<String>()
                    )
                };
                return Err(Refusal {
                    status: 405,
                    reason,
                });
            }
        })
    }

    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Patch => "PATCH",
            Self::Options => "OPTIONS",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A path in normal form. Only [`normalize_target`] makes one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NormalPath(String);

impl NormalPath {
    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NormalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request target split into its normal path and its query (kept byte for byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The normalized path.
    pub path: NormalPath,
    /// The query without its `?`, if any.
    pub query: Option<String>,
}

impl Target {
    /// The target to send on: normal path and query.
    pub fn to_origin_form(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.0.clone(),
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters RFC 3986 allows literally in a path segment (pchar without `%`), minus `;`.
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Reads an origin-form request target (`/path?query`) and puts its path in normal form, or
/// says why it is refused.
pub fn normalize_target(raw: &str) -> Result<Target, Refusal> {
    if raw.len() > MAX_TARGET_LEN {
        return Err(Refusal {
            status: 414,
            reason: format!("request target longer than {MAX_TARGET_LEN} bytes"),
        });
    }
    if raw.bytes().any(|b| b == 0) {
        return Err(Refusal::bad("NUL byte in the request target"));
    }
    if !raw.starts_with('/') {
        return Err(Refusal::bad(
            "request target must be a path starting with '/' (absolute-form and '*' are not accepted)",
        ));
    }
    if raw.contains('#') {
        return Err(Refusal::bad(
            "'#' in the request target: a fragment is never sent to a server",
        ));
    }
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    if let Some(q) = query
        && let Some(b) = q
            .bytes()
            .find(|&b| !(is_path_char(b) || matches!(b, b'%' | b'/' | b'?' | b';')))
    {
        return Err(Refusal::bad(format!(
            "byte 0x{b:02x} is not allowed in the query: percent-encode it"
        )));
    }
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/').skip(1) {
        out.push('/');
        out.push_str(&normalize_segment(segment)?);
    }
    // Empty segments are allowed only as the single trailing slash ("/a/" but not "//a").
    let segments: Vec<&str> = out.split('/').skip(1).collect();
    for (i, s) in segments.iter().enumerate() {
        if s.is_empty() && i + 1 != segments.len() {
            return Err(Refusal::bad(
                "empty path segment ('//'): send each '/' once",
            ));
        }
        if *s == "." || *s == ".." {
            return Err(Refusal::bad(
                "dot segment ('.' or '..') in the path: send the path it resolves to",
            ));
        }
    }
    Ok(Target {
        path: NormalPath(out),
        query: query.map(str::to_owned),
    })
}

/// One path segment in normal form.
fn normalize_segment(segment: &str) -> Result<String, Refusal> {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(Refusal::bad("malformed percent-escape in the path"));
                };
                let v = h * 16 + l;
                match v {
                    0 => return Err(Refusal::bad("escaped NUL (%00) in the path")),
                    b'/' => {
                        return Err(Refusal::bad(
                            "escaped '/' (%2F) in the path: it would split differently behind the proxy",
                        ));
                    }
                    b'\\' => return Err(Refusal::bad("escaped '\\' (%5C) in the path")),
                    v if v < 0x20 || v == 0x7f => {
                        return Err(Refusal::bad(format!(
                            "escaped control byte %{v:02X} in the path"
                        )));
                    }
                    v if is_unreserved(v) => out.push(char::from(v)),
                    v => {
                        out.push('%');
                        out.push_str(&format!("{v:02X}"));
                    }
                }
                i += 3;
            }
            b'\\' => {
                return Err(Refusal::bad(
                    "'\\' in the path: some servers read it as '/'",
                ));
            }
            b';' => {
                return Err(Refusal::bad(
                    "';' in the path: path parameters are not accepted",
                ));
            }
            b if is_path_char(b) => {
                out.push(char::from(b));
                i += 1;
            }
            b => {
                return Err(Refusal::bad(format!(
                    "byte 0x{b:02x} is not allowed in the path: percent-encode it"
                )));
            }
        }
    }
    Ok(out)
}

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Reads the framing of an HTTP/1.1 request from its headers (names compared without case).
/// Refuses both `Content-Length` and `Transfer-Encoding`, any transfer-coding but a single
/// `chunked`, and several or malformed `Content-Length`s.
pub fn request_framing<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Framing, Refusal> {
    let mut length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(value)
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| Refusal::bad("malformed Content-Length"))?;
            if length.is_some() {
                return Err(Refusal::bad("more than one Content-Length"));
            }
            length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if te.is_some() {
                return Err(Refusal::bad("more than one Transfer-Encoding"));
            }
            te = Some(value);
        }
    }
    match (length, te) {
        (Some(_), Some(_)) => Err(Refusal::bad(
            "conflicting Content-Length and Transfer-Encoding: send one of them",
        )),
        (None, Some(v)) if v.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
        (None, Some(_)) => Err(Refusal {
            status: 501,
            reason: "only 'Transfer-Encoding: chunked' is accepted".into(),
        }),
        (Some(0), None) | (None, None) => Ok(Framing::Empty),
        (Some(n), None) => Ok(Framing::Length(n)),
    }
}

/// Checks the `Host` (or `:authority`) against the name the service is called by: exactly
/// `name` or `name:port`, nothing else (names are compared exactly, so `Orders.Shop` is not
/// `orders.shop`).
pub fn check_authority(authority: Option<&str>, name: &str) -> Result<(), Refusal> {
    let Some(host) = authority else {
        return Err(Refusal::bad("missing Host"));
    };
    let bare = match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    if bare == name {
        return Ok(());
    }
    let hint = if bare.eq_ignore_ascii_case(name) {
        " (names are compared exactly: send it in lower case)"
    } else {
        ""
    };
    Err(Refusal {
        status: 421,
        reason: format!(
            "Host {:?} is not this service's name {name:?}{hint}",
            host.chars().take(64).collect::<String>()
        ),
    })
}

/// A gRPC call's service and method, read from a normal path `/pkg.Service/Method`.
pub fn grpc_call(path: &NormalPath) -> Option<(&str, &str)> {
    let rest = path.as_str().strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

#[cfg(test)]
mod tests;
