//! A small origin web server for the reverse-proxy tests: one request per
//! connection, answers chosen by path, `/echo` returns the request as it
//! arrived (header names lower-cased) so the forwarded request is checked
//! too.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The origin; stops when dropped or [`Origin::stop`]ped.
#[derive(Debug)]
pub struct Origin {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Origin {
    pub fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        std::thread::spawn(move || serve(conn, port));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Origin {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the listening socket: later connections are refused.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The length of `/large` (more than any proxy's buffers hold) ...
pub const LARGE: usize = 40 * 1024 * 1024 + 3;
/// ... and of `/large-chunked` and `/large-close` (what `/truncated`
/// promises, sending a third of it).
pub const LARGE_FRAMED: usize = 3 * 1024 * 1024 + 1;

/// The bytes of the long answers: the first `len` of a fixed pattern.
pub fn large_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn serve(mut conn: TcpStream, port: u16) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("");
    let target = first.next().unwrap_or("/").to_string();
    let path = target.split('?').next().unwrap_or("/");
    let head_only = method == "HEAD";
    let answer = |status: &str, headers: &[&str], body: &str| {
        let mut out = format!("HTTP/1.1 {status}\r\n");
        for h in headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        if !head_only {
            out.push_str(body);
        }
        out.into_bytes()
    };
    let common = [
        "Server: origin/1.0",
        "Date: Mon, 02 Mar 2026 10:00:00 GMT",
        "Content-Type: text/html; charset=utf-8",
    ];
    let reply: Vec<u8> = match path {
        "/close" => {
            b"HTTP/1.0 200 Fine\r\nContent-Type: text/plain\r\nX-Custom: a\r\n\r\nclose-delimited\n"
                .to_vec()
        }
        "/chunked" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n6;x=1\r\nworld\n\r\n0\r\n\r\n".to_vec(),
        "/redirect" => answer(
            "302 Found",
            &[&format!("Location: http://127.0.0.1:{port}/next")],
            "moved\n",
        ),
        "/external-redirect" => answer(
            "301 Moved Permanently",
            &["Location: https://elsewhere.example/"],
            "",
        ),
        "/missing" => answer("404 Not Found", &common, "no such page\n"),
        "/nocontent" => b"HTTP/1.1 204 No Content\r\nServer: origin/1.0\r\nX-A: 1\r\n\r\n".to_vec(),
        "/not-modified" => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n".to_vec(),
        "/big-header" => answer("200 OK", &[&format!("X-Big: {}", "b".repeat(5000))], "x"),
        "/garbage" => b"this is not HTTP\r\n\r\n".to_vec(),
        // Long answers, in each framing, and one that breaks off.
        "/large" => {
            let body = large_body(LARGE);
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(&body);
            out
        }
        "/large-chunked" => {
            let mut out =
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_vec();
            for piece in large_body(LARGE_FRAMED).chunks(40_000) {
                out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            out
        }
        "/large-close" => {
            let mut out = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
            out.extend_from_slice(&large_body(LARGE_FRAMED));
            out
        }
        "/truncated" => {
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {LARGE_FRAMED}\r\n\r\n"
            )
            .into_bytes();
            out.extend_from_slice(&large_body(LARGE_FRAMED / 3));
            out
        }
        "/echo" => {
            let mut seen: Vec<String> = head
                .lines()
                .take_while(|l| !l.is_empty())
                .map(|l| match l.split_once(':') {
                    Some((n, v)) => format!("{}:{v}", n.to_ascii_lowercase()),
                    None => l.to_string(),
                })
                .collect();
            seen.push(format!("body: {} bytes", length));
            answer("201 Created", &["Content-Type: text/plain"], &(seen.join("\n") + "\n"))
        }
        _ => answer(
            "200 OK",
            &[
                common[0],
                common[1],
                common[2],
                "ETag: \"v1\"",
                "Last-Modified: Mon, 02 Mar 2026 10:00:00 GMT",
                "Set-Cookie: theme=light; Path=/",
                "X-Pad: avoid browser bug",
                "X-Accel-Expires: 10",
                "Keep-Alive: timeout=5",
                "Connection: keep-alive",
                "Vary: Accept-Encoding",
            ],
            &format!("hello from origin {target}\n"),
        ),
    };
    let _ = conn.write_all(&reply);
}
