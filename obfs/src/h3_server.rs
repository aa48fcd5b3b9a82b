//! HTTP/3 on QUIC: the site and the tunnels.

use std::time::Duration;

use bytes::{Buf, Bytes};
use http::Request;
use tracing::debug;

use crate::front::{declared_length, multiplexed, tunnel_response, BodyEnd, SharedRef};
use crate::gate::{Binding, EXPORTER_LABEL, EXPORTER_LEN};
use crate::site::MAX_REQUEST_BODY;
use crate::tunnel::{open, Tunnel};

/// nginx's `client_body_timeout`.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest request header section accepted (nginx's default buffers are 4 x 8 KiB).
const MAX_FIELD_SECTION: u64 = 32 * 1024;

type Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

pub(crate) async fn serve(conn: quinn::Connection, shared: SharedRef) {
    let mut exporter = [0u8; EXPORTER_LEN];
    if conn
        .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .is_err()
    {
        return;
    }
    let binding = Binding::Exporter(exporter);
    let peer = conn.remote_address();
    // Boxed: the set-up's state (about 4 KB) is freed once it is done,
    // instead of sizing this future, which then waits for requests on an
    // idle user's connection for hours.
    let mut builder = h3::server::builder();
    builder.max_field_section_size(MAX_FIELD_SECTION);
    let set_up = Box::pin(builder.build::<_, Bytes>(h3_quinn::Connection::new(conn)));
    let mut h3 = match set_up.await {
        Ok(c) => c,
        Err(e) => {
            debug!("h3 set-up failed: {e}");
            return;
        }
    };
    loop {
        match h3.accept().await {
            Ok(Some(resolver)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    match resolver.resolve_request().await {
                        Ok((req, stream)) => handle(req, stream, binding, peer, shared).await,
                        Err(e) => debug!("h3 request failed: {e}"),
                    }
                });
            }
            Ok(None) => break,
            Err(e) => {
                debug!("h3 connection ended: {e}");
                break;
            }
        }
    }
}

async fn handle(
    req: Request<()>,
    mut stream: Stream,
    binding: Binding,
    peer: std::net::SocketAddr,
    shared: SharedRef,
) {
    if shared
        .classify(&binding, req.method(), req.uri().path(), req.headers())
        .is_ok()
    {
        if let Err(e) = stream.send_response(tunnel_response()).await {
            debug!("tunnel response failed: {e}");
            return;
        }
        let (send, recv) = stream.split();
        shared
            .hand_over(Tunnel::h3(Box::new(send), open(Box::new(recv)), None).with_peer(Some(peer)))
            .await;
        return;
    }
    let declared = declared_length(req.headers());
    let Some(resp) = shared.answer(&req, read_body(&mut stream, declared)).await else {
        return;
    };
    let result = async {
        let (head, payload) = multiplexed(req.method(), resp);
        stream.send_response(head).await?;
        if let Some(mut payload) = payload {
            // A large body goes piece by piece, each sent once QUIC takes
            // it, the next read meanwhile.
            let send_timeout = shared.limits().send_timeout;
            let mut next = payload.next_chunk().await;
            loop {
                match next {
                    Ok(Some(chunk)) => {
                        let send = tokio::time::timeout(send_timeout, stream.send_data(chunk));
                        let (sent, read) = tokio::join!(send, payload.next_chunk());
                        match sent {
                            Ok(sent) => sent?,
                            Err(_) => {
                                debug!(
                                    "h3 response: the client took nothing within the send timeout"
                                );
                                stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                                return Ok(());
                            }
                        }
                        next = read;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        debug!("h3 response body failed: {e}");
                        stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                        return Ok(());
                    }
                }
            }
        }
        stream.finish().await
    }
    .await;
    if let Err(e) = result {
        debug!("h3 response failed: {e}");
    }
    // The response is complete. If the client is still sending (a GET's FIN
    // not yet read, or a body nobody wanted), ask it to stop with
    // H3_NO_ERROR as RFC 9114 §4.1 says, instead of quinn's implicit code 0
    // when the stream is dropped unread, which clients take for an abort.
    stream.stop_sending(h3::error::Code::H3_NO_ERROR);
}

/// Reads a whole request body for an origin, up to [`MAX_REQUEST_BODY`].
async fn read_body(stream: &mut Stream, declared: Option<u64>) -> Result<Vec<u8>, BodyEnd> {
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        return Err(BodyEnd::TooLarge);
    }
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    let mut data = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.recv_data()).await {
            Ok(Ok(Some(mut chunk))) => {
                if data.len() + chunk.remaining() > MAX_REQUEST_BODY {
                    return Err(BodyEnd::TooLarge);
                }
                while chunk.has_remaining() {
                    let part = chunk.chunk();
                    data.extend_from_slice(part);
                    let n = part.len();
                    chunk.advance(n);
                }
            }
            Ok(Ok(None)) => return Ok(data),
            Ok(Err(_)) | Err(_) => return Err(BodyEnd::Aborted),
        }
    }
}
