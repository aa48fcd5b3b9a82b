//! HTTP/1.1, on TLS (the front) or in cleartext from a proxy (the backend):
//! the site, and tunnels opened by a WebSocket upgrade (`GET` on the tunnel
//! path with `Upgrade: websocket` and a gate that passes, answered `101`;
//! the connection is then the tunnel). Any other request, including a POST
//! to the tunnel path or an upgrade whose gate fails, gets the site's answer.
//!
//! A thin loop around the sans-IO parser in `h1`: read a head, discard the
//! body as nginx does, write the site's answer with nginx's spelling, keep
//! the connection open as long as nginx would ([`Limits`](crate::Limits)'
//! keepalive timeout and requests; client_header_timeout 60 s).

use std::time::Duration;

use bytes::BytesMut;
use http::{header, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use std::net::SocketAddr;

use tokio::sync::OwnedSemaphorePermit;

use crate::front::SharedRef;
use crate::gate::Binding;
use crate::h1::{self, BodyReader, Parsed, Reject};
use crate::relay_line::Carrier;
use crate::site::{self, Body, SiteRequest, SiteResponse, MAX_REQUEST_BODY};
use crate::tunnel::Tunnel;
use crate::upstream::ReasonPhrase;

/// nginx's `client_header_timeout`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `client_body_timeout`, for bodies being discarded.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) async fn serve<S>(
    mut io: S,
    peer: Option<SocketAddr>,
    binding: Binding,
    shared: SharedRef,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (keepalive_timeout, keepalive_requests, send_timeout) = {
        let limits = shared.limits();
        (
            limits.keepalive_timeout,
            limits.keepalive_requests,
            limits.send_timeout,
        )
    };
    let mut buf = BytesMut::with_capacity(4096);
    let mut served = 0u32;
    loop {
        let head = loop {
            match h1::parse(&buf) {
                Parsed::Head(head, used) => {
                    let _ = buf.split_to(used);
                    break head;
                }
                Parsed::Reject(r) => {
                    let _ = write_reject(&mut io, r).await;
                    return;
                }
                Parsed::Incomplete => {}
            }
            let wait = if buf.is_empty() && served > 0 {
                keepalive_timeout
            } else {
                HEADER_TIMEOUT
            };
            match tokio::time::timeout(wait, io.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                // EOF, an error or a timeout: nginx closes without answering.
                _ => {
                    let _ = io.shutdown().await;
                    return;
                }
            }
        };
        served += 1;
        let path = head.target.split('?').next().unwrap_or("/");
        if head.body == h1::BodyKind::None
            && shared
                .classify_upgrade(&binding, &head.method, path, &head.headers)
                .is_ok()
        {
            let Some(accept) = head
                .headers
                .get("sec-websocket-key")
                .map(|k| websocket_accept(k.as_bytes()))
            else {
                return;
            };
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nServer: nginx\r\nDate: {}\r\n\
                 Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n",
                site::http_date_now().to_str().unwrap_or_default()
            );
            if io.write_all(answer.as_bytes()).await.is_err() || io.flush().await.is_err() {
                return;
            }
            let client = shared.client_addr(peer, &head.headers);
            // The connection goes on inside the tunnel, and so does its
            // place under the connection limit.
            let tunnel = Tunnel::raw(
                Carrier::Ws,
                Box::new(io),
                buf.freeze(),
                Some(Box::new(permit)),
            )
            .with_peer(client);
            shared.hand_over(tunnel).await;
            return;
        }
        let mut keep_alive = head.keep_alive && served < keepalive_requests;
        let mut discard = BodyReader::new(head.body);
        let resp = if shared.site().reads_bodies() {
            match read_body(&mut io, &mut buf, &mut discard, head.body).await {
                Ok(body) => shared.site().respond(site_request(&head, &body)).await,
                Err(BodyEnd::Status(status)) => site::error_response(status),
                Err(BodyEnd::Gone) => {
                    let _ = io.shutdown().await;
                    return;
                }
            }
        } else {
            match discard.feed(&buf) {
                Ok(used) => {
                    let _ = buf.split_to(used);
                }
                Err(()) => {
                    keep_alive = false;
                    buf.clear();
                }
            }
            shared.site().respond(site_request(&head, &[])).await
        };
        if resp.headers().get(header::CONNECTION).map(|v| v.as_bytes()) == Some(b"close") {
            keep_alive = false;
        }
        if write_response(
            &mut io,
            resp,
            head.method == Method::HEAD,
            keep_alive,
            send_timeout,
        )
        .await
        .is_err()
            || !keep_alive
        {
            let _ = io.shutdown().await;
            return;
        }
        // The rest of the body, if any, is read and thrown away.
        while !discard.done() {
            if buf.is_empty() {
                match tokio::time::timeout(BODY_TIMEOUT, io.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => {
                        let _ = io.shutdown().await;
                        return;
                    }
                }
            }
            match discard.feed(&buf) {
                Ok(used) => {
                    let _ = buf.split_to(used);
                }
                Err(()) => {
                    let _ = io.shutdown().await;
                    return;
                }
            }
        }
    }
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub(crate) fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut h = sha1::Sha1::new();
    h.update(key.trim_ascii());
    h.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

fn site_request<'a>(head: &'a h1::Head, body: &'a [u8]) -> SiteRequest<'a> {
    SiteRequest {
        method: &head.method,
        target: &head.target,
        headers: &head.headers,
        host: head.host.as_deref(),
        body,
    }
}

/// Why a request body was not read whole.
enum BodyEnd {
    /// Answer with nginx's page for this status and close.
    Status(StatusCode),
    /// The client went away or stalled.
    Gone,
}

/// Reads a whole request body for an origin, up to [`MAX_REQUEST_BODY`],
/// leaving any pipelined bytes after it in `buf`.
async fn read_body<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    reader: &mut BodyReader,
    kind: h1::BodyKind,
) -> Result<Vec<u8>, BodyEnd> {
    if matches!(kind, h1::BodyKind::Length(n) if n > MAX_REQUEST_BODY as u64) {
        return Err(BodyEnd::Status(StatusCode::PAYLOAD_TOO_LARGE));
    }
    let mut body = Vec::new();
    loop {
        let used = reader
            .feed_into(buf, Some(&mut body))
            .map_err(|()| BodyEnd::Status(StatusCode::BAD_REQUEST))?;
        let _ = buf.split_to(used);
        if body.len() > MAX_REQUEST_BODY {
            return Err(BodyEnd::Status(StatusCode::PAYLOAD_TOO_LARGE));
        }
        if reader.done() {
            return Ok(body);
        }
        match tokio::time::timeout(BODY_TIMEOUT, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(BodyEnd::Gone),
        }
    }
}

/// A connection to the TLS port that does not start with a TLS record: nginx
/// reads one HTTP request and answers "The plain HTTP request was sent to
/// HTTPS port" (or its usual 400 for something that is not HTTP either).
pub(crate) async fn serve_plain<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match h1::parse(&buf) {
            Parsed::Head(head, _) => {
                let resp = site::plain_http_response();
                let _ = write_response(
                    &mut io,
                    resp,
                    head.method == Method::HEAD,
                    false,
                    SEND_TIMEOUT,
                )
                .await;
                let _ = io.shutdown().await;
                return;
            }
            Parsed::Reject(r) => {
                let _ = write_reject(&mut io, r).await;
                return;
            }
            Parsed::Incomplete => {}
        }
        match tokio::time::timeout(HEADER_TIMEOUT, io.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

async fn write_reject<S: AsyncWrite + Unpin>(io: &mut S, r: Reject) -> std::io::Result<()> {
    let resp = match r {
        Reject::HeaderTooLarge => site::header_too_large_response(),
        other => site::error_response(other.status()),
    };
    write_response(io, resp, false, false, SEND_TIMEOUT).await?;
    io.shutdown().await
}

/// Writes a response the way nginx spells it: `HTTP/1.1` whatever the
/// request's version, its reason phrases and header-name case, and the
/// `Connection` header in the site's position.
async fn write_response<S: AsyncWrite + Unpin>(
    io: &mut S,
    resp: SiteResponse,
    head_only: bool,
    keep_alive: bool,
    send_timeout: Duration,
) -> std::io::Result<()> {
    let mut io = Timed {
        io,
        timeout: send_timeout,
    };
    let status = resp.status();
    let reason = match resp.extensions().get::<ReasonPhrase>() {
        Some(ReasonPhrase(r)) => r.as_str(),
        None => site::reason(status),
    };
    let chunked = resp.headers().contains_key(header::TRANSFER_ENCODING);
    let in_memory = match resp.body() {
        Body::Full(b) if !head_only => b.len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(256 + in_memory);
    out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", status.as_u16()).as_bytes());
    for (name, value) in resp.headers() {
        out.extend_from_slice(h1::wire_name(name).as_bytes());
        out.extend_from_slice(b": ");
        if name == header::CONNECTION {
            out.extend_from_slice(if keep_alive { b"keep-alive" } else { b"close" });
        } else {
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if head_only {
        io.write_all(&out).await?;
        return io.flush().await;
    }
    match resp.into_body() {
        // In memory: head and body in one write (a chunked body, from an
        // origin that gave no length, is already whole: one chunk and the
        // last-chunk).
        Body::Full(body) => {
            if chunked {
                if !body.is_empty() {
                    out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                    out.extend_from_slice(&body);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            } else {
                out.extend_from_slice(&body);
            }
            io.write_all(&out).await?;
        }
        // A large file or an origin's long answer: the head with the first
        // piece, then piece by piece as the client takes them (each a chunk
        // when the origin gave no length), the next piece read while one
        // is written.
        mut body @ (Body::File(_) | Body::Origin(_)) => {
            let mut next = body.next_chunk().await?;
            while let Some(chunk) = next {
                if chunked {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(&chunk);
                    out.extend_from_slice(b"\r\n");
                } else if !out.is_empty() {
                    out.extend_from_slice(&chunk);
                }
                let write = if out.is_empty() { &chunk[..] } else { &out[..] };
                let (written, read) = tokio::join!(io.write_all(write), body.next_chunk());
                written?;
                next = read?;
                out.clear();
            }
            if chunked {
                out.extend_from_slice(b"0\r\n\r\n");
                io.write_all(&out).await?;
            }
        }
    }
    io.flush().await
}

/// nginx's `send_timeout`, for answers given before a site is known
/// (plain HTTP to the TLS port, requests refused while parsing).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes that fail with `TimedOut` when the client takes nothing for
/// `timeout` (between two writes, as nginx's `send_timeout`).
struct Timed<'a, S> {
    io: &'a mut S,
    timeout: Duration,
}

impl<S: AsyncWrite + Unpin> Timed<'_, S> {
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        within(self.timeout, self.io.write_all(data)).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        within(self.timeout, self.io.flush()).await
    }
}

async fn within(
    timeout: Duration,
    op: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    tokio::time::timeout(timeout, op)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the client took nothing within the send timeout",
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn websocket_accept_matches_rfc6455() {
        // RFC 6455 §1.3's example.
        assert_eq!(
            super::websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
