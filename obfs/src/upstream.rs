//! The site as a reverse proxy to an origin, answering as nginx's
//! `proxy_pass http://ORIGIN;` does with its defaults.
//!
//! What the origin sees, per request (one connection each, as nginx without
//! `keepalive` in its upstream block):
//!
//! ```text
//! METHOD /path?query HTTP/1.0
//! Host: ORIGIN-HOST[:PORT]          the origin's own name (proxy_set_header Host $proxy_host)
//! Connection: close
//! Content-Length: N                 when the request had a body (bodies are read first, <= 1 MiB)
//! <the client's other headers, in order; hop-by-hop ones dropped>
//! ```
//!
//! What the client sees: the origin's status and reason phrase, then
//! `Server: nginx`, a fresh `Date`, `Content-Type`, `Content-Length` (or
//! chunked transfer on HTTP/1.1 when the origin gave no length), the
//! connection header, the origin's other headers in order (its `Server`,
//! `Date`, `X-Pad`, `X-Accel-*` and hop-by-hop headers hidden), a `Location`
//! that named the origin rewritten to this site, and `Alt-Svc` on the
//! statuses `add_header` applies to. An origin that cannot be reached gets
//! nginx's 502 page, one that does not answer in time its 504.
//!
//! A response body up to [`BUFFERED_RESPONSE`] is read whole before the
//! answer goes out; a longer one (of any size) is passed on as it arrives,
//! as fast as the client takes it, as nginx passes on what fills its proxy
//! buffers. An origin that breaks off mid-body cuts the client's response
//! short, as nginx does.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::client::Sockets;
use crate::error::ConfigError;
use crate::h1::{wire_name, BodyKind, BodyReader};
use crate::site::Body;

/// Largest response head accepted from the origin (nginx's
/// `proxy_buffer_size`, one page); bigger is a 502.
pub const MAX_RESPONSE_HEAD: usize = 4 * 1024;
/// Response bodies up to this are read whole before the answer is sent;
/// longer ones are passed on as they arrive.
pub const BUFFERED_RESPONSE: usize = 64 * 1024;
/// nginx's `proxy_connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `proxy_read_timeout` and `proxy_send_timeout`: between two reads
/// or writes, not for the whole response.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Request headers that belong to one hop and are not forwarded.
const HOP_BY_HOP_REQUEST: [&str; 8] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "transfer-encoding",
    "content-length",
];

/// Origin response headers the client never sees (nginx's
/// `proxy_hide_header` defaults plus hop-by-hop headers); `Content-Type`
/// and `Content-Length` are put back in nginx's own position.
fn hidden_response_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "date"
            | "server"
            | "x-pad"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "content-type"
            | "content-length"
            | "trailer"
            | "upgrade"
            | "proxy-connection"
    ) || name.as_str().starts_with("x-accel-")
}

/// Where the site's answers come from: `http://ADDRESS[:PORT][/]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// What connections are dialled at: an IP address, or a name the
    /// caller's [`Sockets`] resolve (over encrypted DNS).
    dial_host: String,
    port: u16,
    /// The `Host` the origin gets, as written in the URL.
    host: String,
    /// `http://HOST[:PORT]`, to recognise redirects that name the origin.
    prefix: String,
}

impl Origin {
    /// Parses an upstream URL. The host is an IP address, `localhost`
    /// (127.0.0.1, never looked up) or a name, which the caller's
    /// [`Sockets`] resolve: every outbound connection goes through them.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError::Invalid {
            key: "upstream".into(),
            reason: format!("{url:?}: {reason}"),
        };
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => {
                return Err(bad(
                    "https origins are not supported yet; serve the origin over http on a local address",
                ))
            }
            _ => return Err(bad("expected http://ADDRESS[:PORT]")),
        };
        let authority = match rest.split_once('/') {
            Some((a, "")) => a,
            Some(_) => return Err(bad("a path after the address is not supported")),
            None => rest,
        };
        if authority.contains('@') || authority.contains(['?', '#']) {
            return Err(bad(
                "expected http://ADDRESS[:PORT] without user, query or fragment",
            ));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("bad address or port"))?;
        let dial_host = match host.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) if host.eq_ignore_ascii_case("localhost") => Ipv4Addr::LOCALHOST.to_string(),
            Err(_)
                if host.len() <= 253
                    && host.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    }) =>
            {
                host.to_ascii_lowercase()
            }
            Err(_) => return Err(bad("the host is neither an IP address nor a valid name")),
        };
        let port = port.unwrap_or(80);
        Ok(Self {
            dial_host,
            port,
            host: authority.to_string(),
            prefix: format!("http://{authority}"),
        })
    }

    /// The host connections are dialled at (an IP address or a name).
    pub fn dial_host(&self) -> &str {
        &self.dial_host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host, port))
}

/// A reverse proxy to one origin, dialling through the caller's sockets.
#[derive(Debug, Clone)]
pub struct Upstream {
    origin: Origin,
    sockets: Arc<dyn Sockets>,
}

/// What the origin answered, before it is dressed as this site's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginResponse {
    pub status: StatusCode,
    pub reason: String,
    pub headers: HeaderMap,
    /// Whether the origin framed the body with a `Content-Length`.
    pub had_length: bool,
    pub body: Bytes,
    /// The body goes on after `body` (it is longer than
    /// [`BUFFERED_RESPONSE`]): [`ResponseReader::more`] reads the rest.
    pub partial: bool,
}

/// An origin's answer as read so far: its head, and its body whole or still
/// arriving.
#[derive(Debug)]
pub(crate) struct Proxied {
    resp: OriginResponse,
    body: Body,
}

/// The rest of a long response body, read from the origin as it is sent on.
#[derive(Debug)]
pub struct OriginBody {
    stream: TcpStream,
    reader: ResponseReader,
    /// Decoded bytes not handed out yet.
    pending: Bytes,
    done: bool,
    /// What the origin's bytes are read into (the one the head was read
    /// with).
    buf: Vec<u8>,
}

impl OriginBody {
    /// The next bytes of the body; `None` at its end. An origin that breaks
    /// off, stalls for [`IO_TIMEOUT`] or sends a malformed chunk is an error.
    pub(crate) async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        use std::io::{Error, ErrorKind};
        loop {
            if !self.pending.is_empty() {
                return Ok(Some(std::mem::take(&mut self.pending)));
            }
            if self.done {
                return Ok(None);
            }
            let n = match tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut self.buf)).await {
                Ok(read) => read?,
                Err(_) => return Err(Error::new(ErrorKind::TimedOut, "the origin stalled")),
            };
            if n == 0 {
                self.reader
                    .more_eof()
                    .map_err(|why| Error::new(ErrorKind::UnexpectedEof, why))?;
                self.done = true;
                continue;
            }
            let (bytes, done) = self
                .reader
                .more(&self.buf[..n])
                .map_err(|why| Error::new(ErrorKind::InvalidData, why))?;
            self.pending = bytes;
            self.done = done;
        }
    }
}

/// Why no answer could be taken from the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyFailure {
    /// Refused, unreachable, reset or nonsense: nginx's 502.
    BadGateway,
    /// No answer in time: nginx's 504.
    Timeout,
}

impl ProxyFailure {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyFailure::BadGateway => StatusCode::BAD_GATEWAY,
            ProxyFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// A reason phrase taken from the origin, used on HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReasonPhrase(pub String);

impl Upstream {
    pub fn new(origin: Origin, sockets: Arc<dyn Sockets>) -> Self {
        Self { origin, sockets }
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Forwards one request and reads the answer's head and the start of
    /// its body (all of it when it is short).
    pub(crate) async fn forward(
        &self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Proxied, ProxyFailure> {
        let connect = self.sockets.tcp(&self.origin.dial_host, self.origin.port);
        let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!("origin connection failed: {e}");
                return Err(ProxyFailure::BadGateway);
            }
            Err(_) => return Err(ProxyFailure::Timeout),
        };
        let request = request_bytes(&self.origin, method, target, headers, body);
        match tokio::time::timeout(IO_TIMEOUT, stream.write_all(&request)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!("writing to the origin failed: {e}");
                return Err(ProxyFailure::BadGateway);
            }
            Err(_) => return Err(ProxyFailure::Timeout),
        }
        let mut reader = ResponseReader::new(method == Method::HEAD);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    debug!("reading from the origin failed: {e}");
                    return Err(ProxyFailure::BadGateway);
                }
                Err(_) => return Err(ProxyFailure::Timeout),
            };
            let done = if n == 0 {
                reader.eof()
            } else {
                reader.feed(&buf[..n])
            };
            match done {
                Ok(Some(mut resp)) => {
                    let first = std::mem::take(&mut resp.body);
                    let body = if resp.partial {
                        Body::Origin(Box::new(OriginBody {
                            stream,
                            reader,
                            pending: first,
                            done: false,
                            buf,
                        }))
                    } else {
                        Body::Full(first)
                    };
                    return Ok(Proxied { resp, body });
                }
                Ok(None) if n == 0 => return Err(ProxyFailure::BadGateway),
                Ok(None) => {}
                Err(why) => {
                    debug!("the origin's answer was refused: {why}");
                    return Err(ProxyFailure::BadGateway);
                }
            }
        }
    }

    /// The origin's answer as this site's: nginx's headers around the
    /// origin's, `Location` rewritten and moved to nginx's position, and
    /// `Alt-Svc` where nginx adds it. `absolute` turns a site path into the
    /// absolute URL nginx sends (`absolute_redirect on`).
    pub(crate) fn dress(
        &self,
        proxied: Proxied,
        alt_svc: Option<&HeaderValue>,
        absolute: impl Fn(&str) -> String,
    ) -> http::Response<Body> {
        let Proxied { resp, body } = proxied;
        let mut h = HeaderMap::with_capacity(resp.headers.len() + 6);
        h.insert(header::SERVER, HeaderValue::from_static("nginx"));
        h.insert(header::DATE, crate::site::http_date_now());
        if let Some(ct) = resp.headers.get(header::CONTENT_TYPE) {
            h.insert(header::CONTENT_TYPE, ct.clone());
        }
        let bodiless = resp.status.is_informational()
            || resp.status == StatusCode::NO_CONTENT
            || resp.status == StatusCode::NOT_MODIFIED;
        if resp.had_length {
            if let Some(len) = resp.headers.get(header::CONTENT_LENGTH) {
                h.insert(header::CONTENT_LENGTH, len.clone());
            }
        } else if !bodiless {
            // The HTTP/1.1 writer frames the body in chunks; HTTP/2 and
            // HTTP/3 drop this header, as nginx does there.
            h.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        // A Location that is (or becomes) a site path is made absolute and
        // printed before Connection, as nginx's header filter does; any
        // other stays where the origin put it.
        let location = resp
            .headers
            .get(header::LOCATION)
            .map(|l| self.rewrite_location(l));
        let relative = location
            .as_ref()
            .and_then(|l| l.to_str().ok())
            .filter(|l| l.starts_with('/'))
            .and_then(|l| HeaderValue::from_str(&absolute(l)).ok());
        let moved = relative.is_some();
        if let Some(v) = relative {
            h.insert(header::LOCATION, v);
        }
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        for (name, value) in &resp.headers {
            if hidden_response_header(name) || (moved && name == header::LOCATION) {
                continue;
            }
            match (&location, name == header::LOCATION) {
                (Some(l), true) => h.append(name, l.clone()),
                _ => h.append(name, value.clone()),
            };
        }
        if let Some(v) = alt_svc.filter(|_| add_header_applies(resp.status)) {
            h.append(HeaderName::from_static("alt-svc"), v.clone());
        }
        let mut out = http::Response::new(body);
        *out.status_mut() = resp.status;
        *out.headers_mut() = h;
        out.extensions_mut().insert(ReasonPhrase(resp.reason));
        out
    }

    /// nginx's default `proxy_redirect`: a `Location` that starts with the
    /// origin's URL is made relative to this site.
    fn rewrite_location(&self, value: &HeaderValue) -> HeaderValue {
        let Ok(s) = value.to_str() else {
            return value.clone();
        };
        match s.strip_prefix(&self.origin.prefix) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                let path = if rest.is_empty() { "/" } else { rest };
                HeaderValue::from_str(path).unwrap_or_else(|_| value.clone())
            }
            _ => value.clone(),
        }
    }
}

/// The statuses nginx's `add_header` (without `always`) applies to.
fn add_header_applies(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
    )
}

/// The request as the origin gets it.
fn request_bytes(
    origin: &Origin,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.0\r\nHost: ");
    out.extend_from_slice(origin.host.as_bytes());
    out.extend_from_slice(b"\r\nConnection: close\r\n");
    if !body.is_empty() || headers.contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    for (name, value) in headers {
        if HOP_BY_HOP_REQUEST.contains(&name.as_str()) {
            continue;
        }
        out.extend_from_slice(wire_name(name).as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Reads an origin's HTTP/1.x response from bytes as they arrive, without
/// I/O: [`ResponseReader::feed`] each read, [`ResponseReader::eof`] when
/// the origin closes. The head is bounded by [`MAX_RESPONSE_HEAD`]; a body
/// longer than [`BUFFERED_RESPONSE`] is handed out in parts
/// ([`OriginResponse::partial`], then [`ResponseReader::more`]).
#[derive(Debug)]
pub struct ResponseReader {
    head_request: bool,
    buf: Vec<u8>,
    head: Option<(StatusCode, String, HeaderMap)>,
    body: BodyReader,
    /// Body framed by the end of the connection.
    until_close: bool,
    payload: Vec<u8>,
}

impl ResponseReader {
    pub fn new(head_request: bool) -> Self {
        Self {
            head_request,
            buf: Vec::new(),
            head: None,
            body: BodyReader::Done,
            until_close: false,
            payload: Vec::new(),
        }
    }

    /// Takes more bytes; `Some` once the response is complete. After an
    /// error or a complete response, the reader must not be fed again.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<OriginResponse>, &'static str> {
        if self.head.is_none() {
            self.buf.extend_from_slice(data);
            loop {
                let Some(end) = find_head_end(&self.buf) else {
                    if self.buf.len() > MAX_RESPONSE_HEAD {
                        return Err("response head too large");
                    }
                    return Ok(None);
                };
                if end > MAX_RESPONSE_HEAD {
                    return Err("response head too large");
                }
                let (status, reason, headers) = parse_head(&self.buf[..end])?;
                let rest = self.buf.split_off(end);
                self.buf = rest;
                if status.is_informational() {
                    // 100 Continue and friends: the real answer follows.
                    continue;
                }
                let kind = body_kind(status, &headers, self.head_request)?;
                self.until_close = kind.is_none();
                self.body = BodyReader::new(kind.unwrap_or(BodyKind::None));
                self.head = Some((status, reason, headers));
                let rest = std::mem::take(&mut self.buf);
                return self.take_body(&rest);
            }
        }
        self.take_body(data)
    }

    /// The origin closed the connection.
    pub fn eof(&mut self) -> Result<Option<OriginResponse>, &'static str> {
        if self.head.is_some() && self.until_close {
            return Ok(Some(self.finish(false)));
        }
        Err("the origin closed the connection before the response was complete")
    }

    fn take_body(&mut self, data: &[u8]) -> Result<Option<OriginResponse>, &'static str> {
        if self.decode(data)? {
            return Ok(Some(self.finish(false)));
        }
        if self.payload.len() > BUFFERED_RESPONSE {
            return Ok(Some(self.finish(true)));
        }
        Ok(None)
    }

    /// Decodes body bytes into the payload; true once the body is complete.
    fn decode(&mut self, data: &[u8]) -> Result<bool, &'static str> {
        if self.until_close {
            self.payload.extend_from_slice(data);
            return Ok(false);
        }
        self.body
            .feed_into(data, Some(&mut self.payload))
            .map_err(|()| "malformed chunked body")?;
        Ok(self.body.done())
    }

    /// After a partial response: more of the body, and whether it is
    /// complete now.
    pub fn more(&mut self, data: &[u8]) -> Result<(Bytes, bool), &'static str> {
        let done = self.decode(data)?;
        Ok((Bytes::from(std::mem::take(&mut self.payload)), done))
    }

    /// After a partial response: the origin closed. The end of a body
    /// framed by the connection; an error for any other body.
    pub fn more_eof(&self) -> Result<(), &'static str> {
        if self.until_close {
            Ok(())
        } else {
            Err("the origin closed the connection before the response was complete")
        }
    }

    fn finish(&mut self, partial: bool) -> OriginResponse {
        let (status, reason, headers) = self.head.take().unwrap_or_default();
        let had_length = !self.until_close
            && headers.contains_key(header::CONTENT_LENGTH)
            && !headers.contains_key(header::TRANSFER_ENCODING);
        OriginResponse {
            status,
            reason,
            headers,
            had_length,
            body: Bytes::from(std::mem::take(&mut self.payload)),
            partial,
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn parse_head(head: &[u8]) -> Result<(StatusCode, String, HeaderMap), &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not text")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let rest = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .ok_or("bad status line")?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    if code.len() != 3 {
        return Err("bad status code");
    }
    let status = StatusCode::from_bytes(code.as_bytes()).map_err(|_| "bad status code")?;
    if reason.chars().any(|c| c.is_control() && c != '\t') {
        return Err("control character in the reason phrase");
    }
    let mut headers = HeaderMap::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err("folded header line");
        }
        let (name, value) = line.split_once(':').ok_or("header line without a colon")?;
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| "bad header name")?;
        let value = HeaderValue::from_str(value.trim_matches([' ', '\t']))
            .map_err(|_| "bad header value")?;
        headers.append(name, value);
    }
    Ok((status, reason.to_string(), headers))
}

/// How the body is framed: `None` means "until the connection closes".
fn body_kind(
    status: StatusCode,
    headers: &HeaderMap,
    head_request: bool,
) -> Result<Option<BodyKind>, &'static str> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Some(BodyKind::None));
    }
    if let Some(te) = headers.get(header::TRANSFER_ENCODING) {
        return if te.as_bytes().eq_ignore_ascii_case(b"chunked") {
            Ok(Some(BodyKind::Chunked))
        } else {
            Err("unsupported transfer encoding")
        };
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => {
            let n = std::str::from_utf8(v.as_bytes())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("bad content length")?;
            Ok(Some(BodyKind::Length(n)))
        }
        (Some(_), Some(_)) => Err("duplicate content length"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's property on seeded random inputs: any bytes, in
    /// any split, end in a bounded response or an error, never a panic.
    #[test]
    fn random_origin_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let seeds: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.0 404 X\r\n\r\nrest",
        ];
        for _ in 0..20_000 {
            let mut data = seeds[rng.gen_range(0..seeds.len())].to_vec();
            for _ in 0..rng.gen_range(0..4) {
                let i = rng.gen_range(0..data.len());
                match rng.gen_range(0..3) {
                    0 => data[i] = rng.gen(),
                    1 => data.insert(i, rng.gen()),
                    _ => {
                        data.remove(i);
                    }
                }
            }
            let split = rng.gen_range(0..=data.len());
            let (a, b) = data.split_at(split);
            if let Ok(r) = read_all(rng.gen(), &[a, b]) {
                assert!(r.body.len() <= data.len());
            }
        }
    }

    fn read_all(head_request: bool, chunks: &[&[u8]]) -> Result<OriginResponse, &'static str> {
        let mut r = ResponseReader::new(head_request);
        for c in chunks {
            if let Some(done) = r.feed(c)? {
                return Ok(done);
            }
        }
        r.eof()?.ok_or("incomplete")
    }

    #[test]
    fn origin_urls() {
        let o = Origin::parse("http://127.0.0.1:8080").expect("ip and port");
        assert_eq!((o.dial_host(), o.port()), ("127.0.0.1", 8080));
        assert_eq!(o.host, "127.0.0.1:8080");
        let o = Origin::parse("http://[::1]/").expect("v6");
        assert_eq!((o.dial_host(), o.port()), ("::1", 80));
        let o = Origin::parse("http://LocalHost:81").expect("localhost");
        assert_eq!((o.dial_host(), o.port()), ("127.0.0.1", 81));
        // A name is kept for the caller's sockets to resolve (over DoH).
        let o = Origin::parse("http://Blog.Example.org:8080").expect("name");
        assert_eq!((o.dial_host(), o.port()), ("blog.example.org", 8080));
        assert_eq!(o.host, "Blog.Example.org:8080", "Host as written");
        for bad in [
            "127.0.0.1:8080",
            "ftp://127.0.0.1",
            "https://127.0.0.1",
            "http://exa_mple.org",
            "http://a..b",
            "http://127.0.0.1:0",
            "http://127.0.0.1:99999",
            "http://127.0.0.1/app",
            "http://user@127.0.0.1",
            "http://",
            "http://[::1",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn request_keeps_order_and_drops_hop_by_hop() {
        let o = Origin::parse("http://127.0.0.1:8080").expect("origin");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example.org"));
        h.insert(header::USER_AGENT, HeaderValue::from_static("ua"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        let bytes = request_bytes(&o, &Method::POST, "/p?q=1", &h, b"abc");
        assert_eq!(
            String::from_utf8(bytes).expect("text"),
            "POST /p?q=1 HTTP/1.0\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\nContent-Length: 3\r\nUser-Agent: ua\r\nCookie: a=b\r\n\r\nabc"
        );
    }

    #[test]
    fn responses_by_length_chunks_and_close() {
        let r = read_all(
            false,
            &[
                b"HTTP/1.1 200 Fine\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhel",
                b"lo",
            ],
        )
        .expect("length");
        assert_eq!((r.status.as_u16(), r.reason.as_str()), (200, "Fine"));
        assert_eq!(&r.body[..], b"hello");
        assert!(r.had_length);

        let r = read_all(
            false,
            &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"],
        )
        .expect("chunked");
        assert_eq!(&r.body[..], b"abcde");
        assert!(!r.had_length);

        let r = read_all(false, &[b"HTTP/1.0 404 Not Found\r\n\r\nno", b"pe"]).expect("close");
        assert_eq!(&r.body[..], b"nope");
        assert!(!r.had_length);

        let r = read_all(
            false,
            &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"],
        )
        .expect("interim");
        assert_eq!(r.status, StatusCode::NO_CONTENT);

        let r = read_all(true, &[b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"]).expect("head");
        assert!(r.body.is_empty());
        assert!(r.had_length);
    }

    #[test]
    fn broken_responses_are_refused() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc"[..],
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\nX-Injected: 1\r\n\r\n",
        ] {
            assert!(
                read_all(false, &[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_RESPONSE_HEAD));
        assert!(read_all(false, &[&huge]).is_err());
    }

    /// Sockets for tests that must not dial at all.
    #[derive(Debug)]
    struct NoSockets;

    impl Sockets for NoSockets {
        fn tcp(
            &self,
            _: &str,
            _: u16,
        ) -> crate::client::BoxFuture<'_, std::io::Result<tokio::net::TcpStream>> {
            Box::pin(async { Err(std::io::ErrorKind::PermissionDenied.into()) })
        }
        fn udp(
            &self,
            _: &str,
            _: u16,
        ) -> crate::client::BoxFuture<
            '_,
            std::io::Result<(std::net::UdpSocket, std::net::SocketAddr)>,
        > {
            Box::pin(async { Err(std::io::ErrorKind::PermissionDenied.into()) })
        }
    }

    fn proxied(mut resp: OriginResponse) -> Proxied {
        let body = Body::Full(std::mem::take(&mut resp.body));
        Proxied { resp, body }
    }

    /// A long body comes out in parts: what was buffered with the head,
    /// then the rest as it arrives, for every framing.
    #[test]
    fn a_long_body_is_handed_out_as_it_arrives() {
        let long = vec![b'z'; BUFFERED_RESPONSE + 10_000];
        let chunk_of = |data: &[u8]| {
            let mut c = format!("{:x}\r\n", data.len()).into_bytes();
            c.extend_from_slice(data);
            c.extend_from_slice(b"\r\n");
            c
        };
        let framings: [(Vec<u8>, Vec<Vec<u8>>, bool); 3] = [
            (
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    2 * long.len()
                )
                .into_bytes(),
                vec![long.clone(), long.clone()],
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                vec![
                    chunk_of(&long),
                    [chunk_of(&long), b"0\r\n\r\n".to_vec()].concat(),
                ],
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\n\r\n".to_vec(),
                vec![long.clone(), long.clone()],
                false,
            ),
        ];
        for (head, parts, had_length) in framings {
            let mut r = ResponseReader::new(false);
            let first = [head.as_slice(), parts[0].as_slice()].concat();
            let resp = r.feed(&first).expect("head").expect("partial answer");
            assert!(resp.partial, "{head:?}");
            assert_eq!(resp.had_length, had_length);
            let mut body = resp.body.to_vec();
            let (more, done) = r.more(&parts[1]).expect("more");
            body.extend_from_slice(&more);
            let until_close = head.starts_with(b"HTTP/1.0");
            assert_eq!(done, !until_close, "{head:?}");
            assert_eq!(r.more_eof().is_ok(), until_close, "{head:?}");
            assert_eq!(body.len(), 2 * long.len(), "{head:?}");
            assert!(body.iter().all(|&b| b == b'z'));
        }
        // A short body is still whole.
        let r =
            read_all(false, &[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"]).expect("whole");
        assert!(!r.partial);
        // A broken chunk after the head has gone out is an error.
        let mut r = ResponseReader::new(false);
        let first = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
            &chunk_of(&long),
        ]
        .concat();
        assert!(r.feed(&first).expect("head").expect("partial").partial);
        assert!(r.more(b"zz\r\nnot hex").is_err());
    }

    #[test]
    fn dressed_like_nginx() {
        let up = Upstream::new(
            Origin::parse("http://127.0.0.1:8080").expect("origin"),
            Arc::new(NoSockets),
        );
        let r = read_all(
            false,
            &[b"HTTP/1.1 302 Found\r\nServer: origin\r\nDate: x\r\nLocation: http://127.0.0.1:8080/next\r\nContent-Type: text/plain\r\nX-Pad: p\r\nX-Accel-Buffering: no\r\nKeep-Alive: 5\r\nSet-Cookie: a=b\r\nContent-Length: 2\r\n\r\nhi"],
        )
        .expect("response");
        let alt = HeaderValue::from_static("h3=\":443\"; ma=86400");
        let d = up.dress(proxied(r), Some(&alt), |p| {
            format!("https://example.org{p}")
        });
        let names: Vec<&str> = d.headers().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "server",
                "date",
                "content-type",
                "content-length",
                "location",
                "connection",
                "set-cookie",
                "alt-svc"
            ]
        );
        assert_eq!(d.headers()[header::SERVER], "nginx");
        assert_eq!(d.headers()[header::LOCATION], "https://example.org/next");

        let r = read_all(false, &[b"HTTP/1.0 404 Nope\r\n\r\nx"]).expect("response");
        let d = up.dress(proxied(r), Some(&alt), str::to_string);
        assert_eq!(d.headers()[header::TRANSFER_ENCODING], "chunked");
        assert!(!d.headers().contains_key("alt-svc"));
        assert_eq!(
            d.extensions().get::<ReasonPhrase>(),
            Some(&ReasonPhrase("Nope".into()))
        );
    }
}
