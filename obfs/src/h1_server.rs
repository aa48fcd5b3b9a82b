//! HTTP/1.1 on TLS: the site only. Tunnels never run over HTTP/1.1, so a
//! POST to the tunnel path here gets the site's answer like any other.
//!
//! A thin loop around the sans-IO parser in `h1`: read a head, discard the
//! body as nginx does, write the site's answer with nginx's spelling, keep
//! the connection open as long as nginx would (keepalive_timeout 75 s,
//! client_header_timeout 60 s, keepalive_requests 1000).

use std::time::Duration;

use bytes::BytesMut;
use http::{header, Method};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::front::SharedRef;
use crate::h1::{self, Discard, Parsed, Reject};
use crate::site::{self, SiteRequest, SiteResponse};

/// nginx's `client_header_timeout`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `keepalive_timeout`.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// nginx's `client_body_timeout`, for bodies being discarded.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `keepalive_requests`.
const KEEPALIVE_REQUESTS: u32 = 1000;

pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, shared: SharedRef) {
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
                KEEPALIVE_TIMEOUT
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
        let mut keep_alive = head.keep_alive && served < KEEPALIVE_REQUESTS;
        let mut discard = Discard::new(head.body);
        match discard.feed(&buf) {
            Ok(used) => {
                let _ = buf.split_to(used);
            }
            Err(()) => {
                keep_alive = false;
                buf.clear();
            }
        }
        let resp = shared
            .site()
            .respond(SiteRequest {
                method: &head.method,
                target: &head.target,
                headers: &head.headers,
                host: head.host.as_deref(),
            })
            .await;
        if resp.headers().get(header::CONNECTION).map(|v| v.as_bytes()) == Some(b"close") {
            keep_alive = false;
        }
        if write_response(&mut io, &resp, head.method == Method::HEAD, keep_alive)
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

/// A connection to the TLS port that does not start with a TLS record: nginx
/// reads one HTTP request and answers "The plain HTTP request was sent to
/// HTTPS port" (or its usual 400 for something that is not HTTP either).
pub(crate) async fn serve_plain<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match h1::parse(&buf) {
            Parsed::Head(head, _) => {
                let resp = site::plain_http_response();
                let _ = write_response(&mut io, &resp, head.method == Method::HEAD, false).await;
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
    write_response(io, &resp, false, false).await?;
    io.shutdown().await
}

/// Writes a response the way nginx spells it: `HTTP/1.1` whatever the
/// request's version, its reason phrases and header-name case, and the
/// `Connection` header in the site's position.
async fn write_response<S: AsyncWrite + Unpin>(
    io: &mut S,
    resp: &SiteResponse,
    head_only: bool,
    keep_alive: bool,
) -> std::io::Result<()> {
    let status = resp.status();
    let mut out = Vec::with_capacity(256 + resp.body().len());
    out.extend_from_slice(
        format!("HTTP/1.1 {} {}\r\n", status.as_u16(), site::reason(status)).as_bytes(),
    );
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
    if !head_only {
        out.extend_from_slice(resp.body());
    }
    io.write_all(&out).await?;
    io.flush().await
}
