//! HTTP/1.1 request parsing with nginx's rules, without I/O.
//!
//! Scanners and probes mostly speak HTTP/1.1, so this layer answers the
//! way nginx 1.22 does: which inputs are a 400, 414 or 505, which headers are
//! too large, when keep-alive ends, how request bodies are framed and
//! discarded. The connection loop in `h1_server` feeds bytes in and writes
//! what the site answers.
//!
//! ```text
//! request  = *( CRLF ) request-line *( header-line ) CRLF
//! limits   : request line <= 8 KiB (else 414), each header line <= 8 KiB and
//!            the whole head <= 32 KiB (else 400 "Request Header Or Cookie
//!            Too Large"), as nginx's large_client_header_buffers 4 8k
//! ```

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// nginx's `large_client_header_buffers` size: one line must fit.
pub(crate) const MAX_LINE: usize = 8 * 1024;
/// Four such buffers for the whole head.
pub(crate) const MAX_HEAD: usize = 4 * MAX_LINE;

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: Method,
    /// Origin-form target (`/path?query`), also for absolute-form requests.
    pub target: String,
    pub headers: HeaderMap,
    /// From an absolute-form target, else from `Host`.
    pub host: Option<String>,
    pub body: BodyKind,
    /// Whether the client allows the connection to stay open.
    pub keep_alive: bool,
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// A request nginx would refuse before any handler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    Bad,
    UriTooLong,
    HeaderTooLarge,
    VersionNotSupported,
    NotImplemented,
}

impl Reject {
    pub fn status(self) -> StatusCode {
        match self {
            Reject::Bad | Reject::HeaderTooLarge => StatusCode::BAD_REQUEST,
            Reject::UriTooLong => StatusCode::URI_TOO_LONG,
            Reject::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            Reject::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

/// Result of looking at the bytes received so far.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A head, and how many bytes of the buffer it used.
    Head(Box<Head>, usize),
    Reject(Reject),
}

/// Finds the end of one line starting at `from`: (end of content, start of next).
fn line_at(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let nl = buf[from..].iter().position(|b| *b == b'\n')? + from;
    let end = if nl > from && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    Some((end, nl + 1))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a request head from the start of `buf`.
pub(crate) fn parse(buf: &[u8]) -> Parsed {
    // nginx skips empty lines before a request line.
    let mut pos = 0;
    while pos < buf.len() && (buf[pos] == b'\r' || buf[pos] == b'\n') {
        pos += 1;
    }
    let Some((line_end, mut next)) = line_at(buf, pos) else {
        return if buf.len() - pos > MAX_LINE {
            Parsed::Reject(Reject::UriTooLong)
        } else {
            Parsed::Incomplete
        };
    };
    if line_end - pos > MAX_LINE {
        return Parsed::Reject(Reject::UriTooLong);
    }
    let (method, target, minor) = match request_line(&buf[pos..line_end]) {
        Ok(v) => v,
        Err(r) => return Parsed::Reject(r),
    };

    let mut headers = HeaderMap::new();
    loop {
        let Some((end, after)) = line_at(buf, next) else {
            return if buf.len() - next > MAX_LINE || buf.len() > MAX_HEAD {
                Parsed::Reject(Reject::HeaderTooLarge)
            } else {
                Parsed::Incomplete
            };
        };
        if end - next > MAX_LINE || after > MAX_HEAD {
            return Parsed::Reject(Reject::HeaderTooLarge);
        }
        let line = &buf[next..end];
        next = after;
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Parsed::Reject(Reject::Bad);
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
            return Parsed::Reject(Reject::Bad);
        }
        match (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => return Parsed::Reject(Reject::Bad),
        }
    }
    match finish(method, target, minor, headers) {
        Ok(head) => Parsed::Head(Box::new(head), next),
        Err(r) => Parsed::Reject(r),
    }
}

fn request_line(line: &[u8]) -> Result<(Method, Vec<u8>, u8), Reject> {
    let mut parts = line.split(|b| *b == b' ').filter(|p| !p.is_empty());
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::Bad);
    };
    // nginx: methods are upper-case letters, '_' and '-'.
    if !method
        .iter()
        .all(|b| b.is_ascii_uppercase() || *b == b'_' || *b == b'-')
    {
        return Err(Reject::Bad);
    }
    let method = Method::from_bytes(method).map_err(|_| Reject::Bad)?;
    let version = version.strip_prefix(b"HTTP/").ok_or(Reject::Bad)?;
    let (major, minor) = {
        let dot = version.iter().position(|b| *b == b'.').ok_or(Reject::Bad)?;
        let num = |s: &[u8]| -> Result<u16, Reject> {
            if s.is_empty() || s.len() > 3 || !s.iter().all(u8::is_ascii_digit) {
                return Err(Reject::Bad);
            }
            std::str::from_utf8(s)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Reject::Bad)
        };
        (num(&version[..dot])?, num(&version[dot + 1..])?)
    };
    if major > 1 {
        return Err(Reject::VersionNotSupported);
    }
    if major != 1 {
        return Err(Reject::Bad);
    }
    Ok((method, target.to_vec(), u8::from(minor >= 1)))
}

fn finish(method: Method, target: Vec<u8>, minor: u8, headers: HeaderMap) -> Result<Head, Reject> {
    let target = String::from_utf8(target).map_err(|_| Reject::Bad)?;
    if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(Reject::Bad);
    }
    let (target, uri_host) = if target.starts_with('/') {
        (target, None)
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.is_empty() {
            return Err(Reject::Bad);
        }
        (path.to_string(), Some(host.to_string()))
    } else {
        // CONNECT authority-form, "*" and anything else.
        return Err(Reject::Bad);
    };

    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Reject::Bad);
    }
    let host_header = match host_header {
        Some(h) => Some(h.to_str().map_err(|_| Reject::Bad)?.to_string()),
        None if minor == 1 && uri_host.is_none() => return Err(Reject::Bad),
        None => None,
    };

    let te = headers.get(http::header::TRANSFER_ENCODING);
    let cl = headers.get(http::header::CONTENT_LENGTH);
    let body = match (te, cl) {
        (Some(_), Some(_)) => return Err(Reject::Bad),
        (Some(te), None) => {
            if te.as_bytes().eq_ignore_ascii_case(b"chunked") {
                BodyKind::Chunked
            } else {
                return Err(Reject::NotImplemented);
            }
        }
        (None, Some(cl)) => {
            let s = cl.to_str().map_err(|_| Reject::Bad)?;
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Reject::Bad);
            }
            match s.parse::<u64>().map_err(|_| Reject::Bad)? {
                0 => BodyKind::None,
                n => BodyKind::Length(n),
            }
        }
        (None, None) => BodyKind::None,
    };

    let connection = headers
        .get(http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase());
    let keep_alive = match (minor, connection.as_deref()) {
        (_, Some(c)) if c.contains("close") => false,
        (1, _) => true,
        (_, Some(c)) => c.contains("keep-alive"),
        (_, None) => false,
    };
    Ok(Head {
        method,
        target,
        host: uri_host.or(host_header),
        headers,
        body,
        keep_alive,
    })
}

/// Reads a message body as its bytes arrive (Content-Length or chunked),
/// either discarding it or handing the payload out without the framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyReader {
    Length(u64),
    /// Chunked: reading a size line (size so far, whether a digit was seen).
    ChunkSize(u64, bool),
    /// Chunked: skipping a chunk extension up to the end of the size line.
    ChunkExt(u64),
    ChunkData(u64),
    ChunkDataEnd(bool),
    Trailers {
        line_empty: bool,
    },
    Done,
}

impl BodyReader {
    pub fn new(kind: BodyKind) -> Self {
        match kind {
            BodyKind::None | BodyKind::Length(0) => BodyReader::Done,
            BodyKind::Length(n) => BodyReader::Length(n),
            BodyKind::Chunked => BodyReader::ChunkSize(0, false),
        }
    }

    pub fn done(&self) -> bool {
        *self == BodyReader::Done
    }

    /// Consumes body bytes from `buf`; returns how many were used, or
    /// `Err` for a malformed chunked body.
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, ()> {
        self.feed_into(buf, None)
    }

    /// As [`BodyReader::feed`], appending the payload (without chunk
    /// framing) to `out` when given.
    pub fn feed_into(&mut self, buf: &[u8], mut out: Option<&mut Vec<u8>>) -> Result<usize, ()> {
        let mut i = 0;
        while i < buf.len() && !self.done() {
            match *self {
                BodyReader::Length(n) => {
                    let take = (buf.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(&buf[i..i + take]);
                    }
                    i += take;
                    let left = n - take as u64;
                    *self = if left == 0 {
                        BodyReader::Done
                    } else {
                        BodyReader::Length(left)
                    };
                }
                BodyReader::ChunkSize(size, seen) => {
                    let b = buf[i];
                    i += 1;
                    match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                            let size = size
                                .checked_mul(16)
                                .and_then(|s| s.checked_add(digit))
                                .ok_or(())?;
                            *self = BodyReader::ChunkSize(size, true);
                        }
                        b';' if seen => *self = BodyReader::ChunkExt(size),
                        b'\r' | b' ' | b'\t' if seen => {}
                        b'\n' if seen => {
                            *self = if size == 0 {
                                BodyReader::Trailers { line_empty: true }
                            } else {
                                BodyReader::ChunkData(size)
                            };
                        }
                        _ => return Err(()),
                    }
                }
                BodyReader::ChunkExt(size) => {
                    if buf[i] == b'\n' {
                        *self = if size == 0 {
                            BodyReader::Trailers { line_empty: true }
                        } else {
                            BodyReader::ChunkData(size)
                        };
                    }
                    i += 1;
                }
                BodyReader::ChunkData(n) => {
                    let take = (buf.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(&buf[i..i + take]);
                    }
                    i += take;
                    let left = n - take as u64;
                    *self = if left == 0 {
                        BodyReader::ChunkDataEnd(false)
                    } else {
                        BodyReader::ChunkData(left)
                    };
                }
                BodyReader::ChunkDataEnd(cr) => {
                    let b = buf[i];
                    i += 1;
                    *self = match (b, cr) {
                        (b'\r', false) => BodyReader::ChunkDataEnd(true),
                        (b'\n', _) => BodyReader::ChunkSize(0, false),
                        _ => return Err(()),
                    };
                }
                BodyReader::Trailers { line_empty } => {
                    let b = buf[i];
                    i += 1;
                    *self = match b {
                        b'\n' if line_empty => BodyReader::Done,
                        b'\n' => BodyReader::Trailers { line_empty: true },
                        b'\r' => BodyReader::Trailers { line_empty },
                        _ => BodyReader::Trailers { line_empty: false },
                    };
                }
                BodyReader::Done => {}
            }
        }
        Ok(i)
    }
}

/// How nginx spells a response header name on HTTP/1.1.
pub(crate) fn wire_name(name: &HeaderName) -> String {
    if name == http::header::ETAG {
        return "ETag".into();
    }
    let mut out = String::with_capacity(name.as_str().len());
    let mut upper = true;
    for c in name.as_str().chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c == '-';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Head {
        match parse(bytes) {
            Parsed::Head(h, n) => {
                assert_eq!(n, bytes.len());
                *h
            }
            other => panic!("expected a head, got {other:?}"),
        }
    }

    fn reject(bytes: &[u8]) -> Reject {
        match parse(bytes) {
            Parsed::Reject(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn ordinary_requests() {
        let h = head(b"GET /a?b=1 HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n");
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.target, "/a?b=1");
        assert_eq!(h.host.as_deref(), Some("example.org"));
        assert!(h.keep_alive);
        let h = head(b"\r\nGET / HTTP/1.0\n\n");
        assert!(!h.keep_alive);
        let h = head(b"GET http://x.example/p HTTP/1.1\r\nHost: y\r\n\r\n");
        assert_eq!(
            (h.target.as_str(), h.host.as_deref()),
            ("/p", Some("x.example"))
        );
        let h = head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.body, BodyKind::Length(5));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Incomplete
        ));
    }

    #[test]
    fn what_nginx_refuses() {
        assert_eq!(reject(b"GARBAGE\r\n\r\n"), Reject::Bad);
        assert_eq!(reject(b"GET / HTTP/1.1\r\n\r\n"), Reject::Bad);
        assert_eq!(reject(b"get / HTTP/1.1\r\nHost: x\r\n\r\n"), Reject::Bad);
        assert_eq!(
            reject(b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"),
            Reject::VersionNotSupported
        );
        assert_eq!(
            reject(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"),
            Reject::Bad
        );
        assert_eq!(
            reject(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
            Reject::Bad
        );
        assert_eq!(
            reject(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Reject::Bad
        );
        assert_eq!(
            reject(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Reject::NotImplemented
        );
        let long_uri = [b"GET /".as_slice(), &[b'a'; MAX_LINE], b" HTTP/1.1\r\n"].concat();
        assert_eq!(reject(&long_uri), Reject::UriTooLong);
        let big = [
            b"GET / HTTP/1.1\r\nHost: x\r\nX: ".as_slice(),
            &[b'b'; MAX_LINE],
            b"\r\n\r\n",
        ]
        .concat();
        assert_eq!(reject(&big), Reject::HeaderTooLarge);
    }

    #[test]
    fn chunked_bodies_are_discarded_across_reads() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut d = BodyReader::new(BodyKind::Chunked);
            let a = d.feed(&body[..split]).expect("valid");
            let b = d.feed(&body[a..]).expect("valid");
            assert!(d.done(), "split {split}");
            assert_eq!(&body[a + b..], b"NEXT", "split {split}");
        }
        let mut d = BodyReader::new(BodyKind::Chunked);
        assert!(d.feed(b"zz\r\n").is_err());
        let mut d = BodyReader::new(BodyKind::Length(3));
        assert_eq!(d.feed(b"abcdef"), Ok(3));
        assert!(d.done());
    }

    #[test]
    fn header_names_are_spelled_as_nginx_does() {
        assert_eq!(wire_name(&http::header::ETAG), "ETag");
        assert_eq!(wire_name(&http::header::CONTENT_TYPE), "Content-Type");
        assert_eq!(wire_name(&HeaderName::from_static("alt-svc")), "Alt-Svc");
    }
}
