//! Operator metrics: a Prometheus text endpoint on an address of the
//! operator's choosing (off unless asked for; meant for loopback).
//!
//! Counts only. No label carries a user id, a peer id or an address: the
//! only label is a gate refusal's reason, from a fixed set.
//!
//! [`render`] is a pure function of the figures; [`serve`] is a minimal
//! HTTP/1.1 server for `GET /metrics` with its own bounds (concurrent
//! scrapes, request size, time).

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

use crate::RelayStats;

/// Scrapes served at once; more wait.
pub const MAX_CONCURRENT_SCRAPES: usize = 8;
/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a scraper has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the web front (or the backend behind a web server) counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontFigures {
    /// Carrier connections open now (TCP and QUIC, or from the web server).
    pub connections: u64,
    /// Tunnels opened since the start.
    pub tunnels_opened: u64,
    /// Tunnel requests refused by the gate since the start, by reason.
    pub refusals: Vec<(&'static str, u64)>,
    /// Bytes through tunnels since the start, from users and to users.
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

/// The operator's bounds, so that a dashboard shows the headroom and an
/// alert can fire before users are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitFigures {
    pub max_connections: u64,
    pub max_reservations: u64,
    pub max_circuits: u64,
    pub mailbox_max_bytes: u64,
}

/// Everything one scrape reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    pub relay: RelayStats,
    pub front: FrontFigures,
    pub limits: LimitFigures,
    /// The process's resident memory, if the platform tells.
    pub resident_bytes: Option<u64>,
}

/// The Prometheus text exposition format (version 0.0.4).
pub fn render(f: &Figures) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    let r = &f.relay;
    metric(
        "burrow_relay_peers_connected",
        "gauge",
        "Users (and other relays) with a connection to this relay.",
        r.connected as u64,
    );
    metric(
        "burrow_relay_connections",
        "gauge",
        "Connections of the relay's node (a peer may hold more than one).",
        r.connections as u64,
    );
    metric(
        "burrow_relay_reservations",
        "gauge",
        "Users reachable through this relay (circuit relay reservations).",
        r.reservations as u64,
    );
    metric(
        "burrow_relay_circuits",
        "gauge",
        "Open relayed circuits between two users.",
        r.circuits as u64,
    );
    metric(
        "burrow_relay_circuits_opened_total",
        "counter",
        "Relayed circuits opened between two users.",
        r.circuits_opened,
    );
    metric(
        "burrow_relay_mailbox_messages",
        "gauge",
        "Sealed messages waiting in the RAM mailbox.",
        r.mailbox_messages as u64,
    );
    metric(
        "burrow_relay_mailbox_bytes",
        "gauge",
        "Bytes of sealed messages waiting in the RAM mailbox.",
        r.mailbox_bytes as u64,
    );
    metric(
        "burrow_relay_tracker_records",
        "gauge",
        "Users whose location record the tracker holds.",
        r.tracker_records as u64,
    );
    metric(
        "burrow_relay_reservations_refused_total",
        "counter",
        "Reservation requests refused (relay full, rate limit, or not a listed user).",
        r.reservations_refused,
    );
    metric(
        "burrow_relay_circuits_refused_total",
        "counter",
        "Circuit requests refused (a limit or a rate).",
        r.circuits_refused,
    );
    let l = &f.limits;
    metric(
        "burrow_limit_connections",
        "gauge",
        "limits.max_connections: carrier connections taken at once.",
        l.max_connections,
    );
    metric(
        "burrow_limit_reservations",
        "gauge",
        "limits.max_reservations: users reachable through the relay at once.",
        l.max_reservations,
    );
    metric(
        "burrow_limit_circuits",
        "gauge",
        "limits.max_circuits: circuits open at once.",
        l.max_circuits,
    );
    metric(
        "burrow_limit_mailbox_bytes",
        "gauge",
        "limits.mailbox_total_mib in bytes: what all mailboxes may hold together.",
        l.mailbox_max_bytes,
    );
    let fr = &f.front;
    metric(
        "burrow_front_connections",
        "gauge",
        "Open carrier connections (browsers and probes included).",
        fr.connections,
    );
    metric(
        "burrow_front_tunnels_opened_total",
        "counter",
        "Tunnels opened (gate passed).",
        fr.tunnels_opened,
    );
    metric(
        "burrow_tunnel_received_bytes_total",
        "counter",
        "Bytes received from users through tunnels.",
        fr.bytes_received,
    );
    metric(
        "burrow_tunnel_sent_bytes_total",
        "counter",
        "Bytes sent to users through tunnels.",
        fr.bytes_sent,
    );
    let _ = write!(
        out,
        "# HELP burrow_front_gate_refusals_total Tunnel requests answered as the site because the gate refused them.\n\
         # TYPE burrow_front_gate_refusals_total counter\n"
    );
    for (reason, n) in &fr.refusals {
        let _ = writeln!(
            out,
            "burrow_front_gate_refusals_total{{reason=\"{reason}\"}} {n}"
        );
    }
    if let Some(rss) = f.resident_bytes {
        let _ = write!(
            out,
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
             # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}\n"
        );
    }
    out
}

/// This process's resident memory (Linux: `/proc/self/status`).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Serves `GET /metrics` (and `HEAD`) on `listener` until `shutdown`;
/// `figures` is asked once per scrape.
pub async fn serve<F, Fut>(listener: TcpListener, figures: F, mut shutdown: watch::Receiver<bool>)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Figures> + Send,
{
    let figures = Arc::new(figures);
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_SCRAPES));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (mut stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let figures = figures.clone();
        tokio::spawn(async move {
            let request = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await;
            let response = match request {
                Ok(Some(head)) => answer(&head, &*figures).await,
                _ => plain(400, "Bad Request", "bad request\n", true),
            };
            if let Err(e) = stream.write_all(response.as_bytes()).await {
                debug!("metrics: write failed: {e}");
            }
            let _ = stream.shutdown().await;
            drop(slot);
        });
    }
}

async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

async fn answer<F, Fut>(head: &str, figures: &F) -> String
where
    F: Fn() -> Fut,
    Fut: Future<Output = Figures>,
{
    let mut parts = head.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = render(&figures().await);
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if method == "GET" {
                r.push_str(&body);
            }
            r
        }
        ("GET" | "HEAD", _) => plain(404, "Not Found", "see /metrics\n", method == "GET"),
        _ => plain(405, "Method Not Allowed", "GET /metrics\n", true),
    }
}

fn plain(status: u16, reason: &str, body: &str, with_body: bool) -> String {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{}",
        body.len(),
        if with_body { body } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_is_prometheus_and_names_no_one() {
        let f = Figures {
            relay: RelayStats {
                connected: 3,
                connections: 4,
                reservations: 2,
                circuits: 1,
                mailbox_messages: 5,
                mailbox_bytes: 900,
                tracker_records: 2,
                reservations_refused: 3,
                circuits_refused: 0,
                circuits_opened: 8,
            },
            front: FrontFigures {
                connections: 6,
                tunnels_opened: 7,
                refusals: vec![("undecryptable", 2), ("replayed", 0)],
                bytes_received: 1000,
                bytes_sent: 2000,
            },
            limits: LimitFigures {
                max_connections: 4096,
                max_reservations: 4000,
                max_circuits: 100,
                mailbox_max_bytes: 1 << 20,
            },
            resident_bytes: Some(4096),
        };
        let text = render(&f);
        for line in [
            "burrow_relay_peers_connected 3",
            "burrow_relay_reservations 2",
            "burrow_relay_circuits 1",
            "burrow_relay_circuits_opened_total 8",
            "burrow_relay_mailbox_messages 5",
            "burrow_relay_mailbox_bytes 900",
            "burrow_front_tunnels_opened_total 7",
            "burrow_front_gate_refusals_total{reason=\"undecryptable\"} 2",
            "burrow_front_gate_refusals_total{reason=\"replayed\"} 0",
            "burrow_tunnel_received_bytes_total 1000",
            "burrow_relay_reservations_refused_total 3",
            "burrow_limit_reservations 4000",
            "burrow_limit_mailbox_bytes 1048576",
            "process_resident_memory_bytes 4096",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // Every sample belongs to a declared metric, and the only label is
        // a refusal reason.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split([' ', '{']).next().unwrap_or_default();
            assert!(text.contains(&format!("# TYPE {name} ")), "{l}");
            if let Some(labels) = l.split_once('{').map(|(_, r)| r) {
                assert!(labels.starts_with("reason=\""), "{l}");
            }
        }
    }

    #[test]
    fn resident_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(resident_bytes().is_some_and(|b| b > 0));
        }
    }
}
