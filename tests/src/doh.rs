//! A small DNS-over-HTTPS and DNS-over-TLS server for the tests, so that
//! no test ever asks a real resolver: zone data the test chooses (A, AAAA,
//! CNAME, TTLs), a self-signed certificate the client pins, and a count
//! of the questions it was asked (to see the cache at work).
//!
//! DoH (RFC 8484): POST or GET `?dns=` on `/dns-query` over HTTP/2.
//! DoT (RFC 7858): two-byte length-prefixed messages over TLS.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a name answers.
#[derive(Debug, Clone)]
pub enum Answer {
    Addrs(Vec<IpAddr>),
    Cname(String),
}

type Zone = HashMap<String, (Answer, u32)>;

#[derive(Debug, Default)]
struct State {
    zone: Zone,
    /// Questions asked, by "name TYPE".
    asked: HashMap<String, usize>,
}

/// The server; stops when dropped.
#[derive(Debug)]
pub struct DnsServer {
    pub doh: SocketAddr,
    pub dot: SocketAddr,
    pub pin: String,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const TLS_NAME: &str = "dns.test";

impl DnsServer {
    /// Listens for DoH and DoT on two ports of `ip`.
    pub fn start(ip: IpAddr) -> DnsServer {
        let (identity, _, _) = burrow_obfs::Identity::self_signed(TLS_NAME).expect("certificate");
        let pin = URL_SAFE_NO_PAD.encode(identity.pin().expect("pin").0);
        let mut h2_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .expect("server config");
        let mut dot_cfg = h2_cfg.clone();
        h2_cfg.alpn_protocols = vec![b"h2".to_vec()];
        dot_cfg.alpn_protocols = vec![];
        let doh_l = std::net::TcpListener::bind((ip, 0)).expect("bind doh");
        let dot_l = std::net::TcpListener::bind((ip, 0)).expect("bind dot");
        let (doh, dot) = (
            doh_l.local_addr().expect("addr"),
            dot_l.local_addr().expect("addr"),
        );
        doh_l.set_nonblocking(true).expect("nonblocking");
        dot_l.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let doh_l = tokio::net::TcpListener::from_std(doh_l).expect("doh");
                let dot_l = tokio::net::TcpListener::from_std(dot_l).expect("dot");
                let doh_tls = tokio_rustls::TlsAcceptor::from(Arc::new(h2_cfg));
                let dot_tls = tokio_rustls::TlsAcceptor::from(Arc::new(dot_cfg));
                let serve = async {
                    loop {
                        tokio::select! {
                            Ok((tcp, _)) = doh_l.accept() => {
                                tokio::spawn(serve_doh(doh_tls.clone(), tcp, st.clone()));
                            }
                            Ok((tcp, _)) = dot_l.accept() => {
                                tokio::spawn(serve_dot(dot_tls.clone(), tcp, st.clone()));
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = rx => {}
                }
            });
        });
        DnsServer {
            doh,
            dot,
            pin,
            state,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Sets what `name` answers, with a TTL in seconds.
    pub fn set(&self, name: &str, answer: Answer, ttl: u32) {
        self.lock().zone.insert(
            name.trim_end_matches('.').to_ascii_lowercase(),
            (answer, ttl),
        );
    }

    /// How many times `name` was asked for `rtype` ("A", "AAAA").
    pub fn asked(&self, name: &str, rtype: &str) -> usize {
        let key = format!("{} {rtype}", name.to_ascii_lowercase());
        self.lock().asked.get(&key).copied().unwrap_or(0)
    }

    /// Every question asked so far.
    pub fn total_asked(&self) -> usize {
        self.lock().asked.values().sum()
    }

    /// The `--resolver` spec for the DoH side.
    pub fn doh_spec(&self) -> String {
        format!(
            "https://{TLS_NAME}:{}/dns-query?ip={}&pin={}",
            self.doh.port(),
            self.doh.ip(),
            self.pin
        )
    }

    /// The `--resolver` spec for the DoT side.
    pub fn dot_spec(&self) -> String {
        format!(
            "tls://{TLS_NAME}:{}?ip={}&pin={}",
            self.dot.port(),
            self.dot.ip(),
            self.pin
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to one DNS message, following CNAMEs inside the zone.
fn answer(state: &Mutex<State>, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let q = request.queries.first()?.clone();
    let mut resp = Message::response(request.metadata.id, OpCode::Query);
    resp.metadata.recursion_desired = request.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let mut name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    *st.asked
        .entry(format!("{name} {}", q.query_type()))
        .or_default() += 1;
    let mut found = false;
    for _ in 0..8 {
        let Some((a, ttl)) = st.zone.get(&name).cloned() else {
            break;
        };
        found = true;
        let owner = Name::from_ascii(format!("{name}.")).ok()?;
        match a {
            Answer::Cname(target) => {
                let t = Name::from_ascii(format!("{target}.")).ok()?;
                resp.add_answer(Record::from_rdata(owner, ttl, RData::CNAME(CNAME(t))));
                name = target.to_ascii_lowercase();
            }
            Answer::Addrs(ips) => {
                for ip in ips {
                    match (ip, q.query_type()) {
                        (IpAddr::V4(v4), RecordType::A) => {
                            resp.add_answer(Record::from_rdata(
                                owner.clone(),
                                ttl,
                                RData::A(A(v4)),
                            ));
                        }
                        (IpAddr::V6(v6), RecordType::AAAA) => {
                            resp.add_answer(Record::from_rdata(
                                owner.clone(),
                                ttl,
                                RData::AAAA(AAAA(v6)),
                            ));
                        }
                        _ => {}
                    }
                }
                break;
            }
        }
    }
    if !found {
        resp.metadata.response_code = ResponseCode::NXDomain;
    }
    resp.to_vec().ok()
}

async fn serve_doh(
    tls: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
) {
    let Ok(stream) = tls.accept(tcp).await else {
        return;
    };
    let Ok(mut conn) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let (parts, mut body) = req.into_parts();
            let mut query = Vec::new();
            if parts.method == http::Method::GET {
                let q = parts.uri.query().unwrap_or("");
                if let Some(v) = q.split('&').find_map(|p| p.strip_prefix("dns=")) {
                    query = URL_SAFE_NO_PAD.decode(v).unwrap_or_default();
                }
            } else {
                while let Some(Ok(chunk)) = body.data().await {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    query.extend_from_slice(&chunk);
                }
            }
            let (status, out) = match (parts.uri.path(), answer(&state, &query)) {
                ("/dns-query", Some(out)) => (200, out),
                ("/dns-query", None) => (400, Vec::new()),
                _ => (404, Vec::new()),
            };
            let resp = http::Response::builder()
                .status(status)
                .header("content-type", "application/dns-message")
                .header("content-length", out.len())
                .body(())
                .expect("response");
            if let Ok(mut send) = respond.send_response(resp, false) {
                let _ = send.send_data(Bytes::from(out), true);
            }
        });
    }
}

async fn serve_dot(
    tls: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
) {
    let Ok(mut stream) = tls.accept(tcp).await else {
        return;
    };
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut query = vec![0; usize::from(len)];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(out) = answer(&state, &query) else {
            return;
        };
        let mut framed = (out.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&out);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
