//! HTTP/1.1 on TLS: the site only. Tunnels never run over HTTP/1.1, so a
//! POST to the tunnel path here gets the site's answer like any other.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use crate::front::SharedRef;
use crate::site;

/// nginx's `client_header_timeout`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) async fn serve(tls: TlsStream<TcpStream>, peer: SocketAddr, shared: SharedRef) {
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move {
            let mut resp = shared.site_response(&req).await;
            let status = resp.status();
            let phrase = site::reason(status);
            if Some(phrase) != status.canonical_reason() {
                // nginx's own phrases, e.g. "405 Not Allowed".
                resp.extensions_mut()
                    .insert(hyper::ext::ReasonPhrase::from_static(phrase.as_bytes()));
            }
            Ok::<_, Infallible>(resp.map(Full::new))
        }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .title_case_headers(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = result {
        debug!(peer = %crate::redact::Addr(peer), "http/1.1 connection ended: {e}");
    }
}
