//! Behind a web server: nginx (or Caddy) terminates TLS, serves the site
//! and passes one location — the tunnel path — to this listener, in
//! cleartext, on a loopback port or a unix socket.
//!
//! Two ways in, told apart by the first bytes of each connection:
//!
//! ```text
//! "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  HTTP/2 cleartext, prior knowledge
//!                                      (nginx `grpc_pass`): tunnels are
//!                                      streaming POSTs, as on the front
//! anything else                        HTTP/1.1 (nginx `proxy_pass` with the
//!                                      upgrade headers): tunnels are
//!                                      WebSocket upgrades
//! ```
//!
//! There is no TLS connection here to bind a gate to, so gates are
//! [`Binding::Proxied`]: the timestamp must be within the replay window and
//! each message is accepted once ([`crate::gate::ReplayGuard`]). Whatever
//! fails the gate is answered by the site, like the front does, so a
//! prober sees the proxied location answer like the rest of the site (serve
//! the same directory here as the web server does; see `contrib/`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tracing::debug;

use crate::error::{ConfigError, Error};
use crate::front::{accept_loop, Limits, Shared, Tunnels};
use crate::gate::{Binding, Gate, ReplayLimits};
use crate::site::Site;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Where the backend listens: only the proxy should reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddr {
    /// A loopback (or otherwise private) TCP address.
    Tcp(SocketAddr),
    /// A unix socket path, written `unix:/path`.
    Unix(PathBuf),
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddr::Tcp(a) => write!(f, "{a}"),
            BackendAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for BackendAddr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError::Invalid {
            key: "backend".into(),
            reason: format!("{s:?}: {reason}"),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(bad("a unix socket needs an absolute path"));
            }
            return Ok(BackendAddr::Unix(PathBuf::from(path)));
        }
        let addr: SocketAddr = s
            .parse()
            .map_err(|_| bad("expected IP:PORT or unix:/PATH"))?;
        if addr.ip().is_unspecified() {
            return Err(bad(
                "listen on a loopback or private address the web server reaches, not on every interface",
            ));
        }
        Ok(BackendAddr::Tcp(addr))
    }
}

/// Everything a backend needs.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub gate: Gate,
    /// The location the web server passes here.
    pub tunnel_path: String,
    /// Answers every request that is not a tunnel.
    pub site: Site,
    pub limits: Limits,
    pub replay: ReplayLimits,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// A bound, not yet running backend.
pub struct Backend {
    listener: Listener,
    local: BackendAddr,
    shared: Arc<Shared>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("local", &self.local)
            .finish()
    }
}

impl Backend {
    /// Binds the listener. A stale unix socket file left by a previous run
    /// is replaced; any other file in the way is an error.
    pub async fn bind(addr: &BackendAddr, config: BackendConfig) -> Result<(Self, Tunnels), Error> {
        let bind_err = |source: io::Error| Error::BindBackend {
            addr: addr.to_string(),
            source,
        };
        let (listener, local) = match addr {
            BackendAddr::Tcp(a) => {
                let l = TcpListener::bind(a).await.map_err(bind_err)?;
                let local = l.local_addr().map_err(bind_err)?;
                (Listener::Tcp(l), BackendAddr::Tcp(local))
            }
            BackendAddr::Unix(path) => {
                remove_stale_socket(path).map_err(bind_err)?;
                let l = UnixListener::bind(path).map_err(bind_err)?;
                // Connecting needs write permission on the socket, and the
                // web server runs as another user: who may connect is left
                // to the directory's permissions (see contrib/).
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
                    .map_err(bind_err)?;
                (Listener::Unix(l, path.clone()), addr.clone())
            }
        };
        let (shared, tunnels) = Shared::new(
            config.gate,
            config.tunnel_path,
            config.site,
            config.limits,
            config.replay,
            true,
        );
        Ok((
            Self {
                listener,
                local,
                shared,
            },
            tunnels,
        ))
    }

    /// Counts for the operator's metrics, live while the backend runs.
    pub fn stats(&self) -> Arc<crate::front::FrontStats> {
        self.shared.stats()
    }

    /// The address actually bound (the port chosen for port 0).
    pub fn local_addr(&self) -> &BackendAddr {
        &self.local
    }

    /// Serves until `shutdown` becomes true; then stops accepting (and
    /// removes its unix socket file).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let shared = self.shared;
        match self.listener {
            Listener::Tcp(l) => {
                tokio::select! {
                    _ = accept_loop(|| async { l.accept().await.map(|(s, _)| s) }, shared, serve) => {}
                    _ = shutdown.wait_for(|stop| *stop) => {}
                }
            }
            Listener::Unix(l, path) => {
                tokio::select! {
                    _ = accept_loop(|| async { l.accept().await.map(|(s, _)| s) }, shared, serve) => {}
                    _ = shutdown.wait_for(|stop| *stop) => {}
                }
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn remove_stale_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads enough of a connection to tell HTTP/2 from HTTP/1.1, then hands
/// it (with the bytes read) to the right server.
async fn serve<S>(mut stream: S, shared: Arc<Shared>, permit: OwnedSemaphorePermit)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = shared.limits().handshake_timeout;
    let mut first = BytesMut::with_capacity(H2_PREFACE.len());
    let read = async {
        while first.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&first) {
            if stream.read_buf(&mut first).await? == 0 {
                break;
            }
        }
        io::Result::Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) if !first.is_empty() => {}
        _ => return,
    }
    let h2 = first.starts_with(H2_PREFACE);
    let io = Rewind {
        prefix: first.freeze(),
        inner: stream,
    };
    if h2 {
        crate::h2_server::serve(io, None, Binding::Proxied, shared, permit).await;
    } else {
        crate::h1_server::serve(io, None, Binding::Proxied, shared, permit).await;
    }
    debug!("backend connection closed");
}

/// A stream whose first bytes were already read: they are read again first.
struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_wildcards_are_refused() {
        assert_eq!(
            "127.0.0.1:9000".parse::<BackendAddr>().ok(),
            Some(BackendAddr::Tcp("127.0.0.1:9000".parse().expect("addr")))
        );
        assert_eq!(
            "unix:/run/burrow/relay.sock".parse::<BackendAddr>().ok(),
            Some(BackendAddr::Unix("/run/burrow/relay.sock".into()))
        );
        for bad in [
            "0.0.0.0:9000",
            "[::]:9000",
            "unix:relative.sock",
            "localhost:9000",
            "",
        ] {
            assert!(bad.parse::<BackendAddr>().is_err(), "{bad}");
        }
    }
}
