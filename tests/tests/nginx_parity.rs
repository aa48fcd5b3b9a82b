//! Side by side with a real nginx: the same files, the same certificate,
//! the same requests through curl over HTTP/1.1 and HTTP/2. Answers must
//! match in status, header names, values and order (except `Date` and the
//! port numbers), and body.
//!
//! Known differences that remain are listed in the README under
//! "Limitations" and are not requested here (multi-range requests,
//! malformed HTTP/1.1, the case of HTTP/1.1 header names).

use std::path::Path;
use std::process::Command;

use burrow_obfs::Identity;
use burrow_tests::{have_tool, run, Nginx, RelayProc};

fn copy_site(to: &Path) {
    let from = burrow_tests::builtin_site_dir();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

struct Target<'a> {
    port: u16,
    cert: &'a Path,
}

fn curl(t: &Target<'_>, proto: &str, args: &[&str], path: &str) -> String {
    let (ok, out, err) = run(Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", proto, "--cacert"])
        .arg(t.cert)
        .args(["--resolve", &format!("example.org:{}:127.0.0.1", t.port)])
        .args(args)
        .arg(format!("https://example.org:{}{path}", t.port)));
    assert!(ok, "curl {args:?} {path}: {err}");
    normalize(&String::from_utf8_lossy(&out), t.port)
}

/// Drops `Date`, replaces the port, and lower-cases HTTP/1.1 header names.
fn normalize(raw: &str, port: u16) -> String {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut out: Vec<String> = Vec::new();
    for (i, line) in head.split("\r\n").enumerate() {
        if i == 0 {
            out.push(line.trim_end().to_string());
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.to_ascii_lowercase();
        if name == "date" {
            continue;
        }
        out.push(format!(
            "{name}:{}",
            value.replace(&port.to_string(), "PORT")
        ));
    }
    format!("{}\n\n{body}", out.join("\n"))
}

#[test]
fn the_front_answers_like_nginx() {
    if !have_tool("nginx") || !have_tool("curl") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let site = work.path().join("site");
    std::fs::create_dir(&site).expect("mkdir");
    copy_site(&site);
    std::fs::create_dir(site.join("empty")).expect("mkdir");
    let (_, cert_pem, key_pem) = Identity::self_signed("example.org").expect("cert");
    let cert = work.path().join("cert.pem");
    let key = work.path().join("key.pem");
    std::fs::write(&cert, cert_pem).expect("write");
    std::fs::write(&key, key_pem).expect("write");

    let nginx = Nginx::start(&site, &cert, &key);
    let relay = RelayProc::start(&[
        "--cert",
        cert.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
        "--domain",
        "example.org",
        "--site",
        site.to_str().expect("utf-8"),
    ]);
    let ours = Target {
        port: relay.port(),
        cert: &cert,
    };
    let theirs = Target {
        port: nginx.port,
        cert: &cert,
    };

    // The ETag and Last-Modified nginx gives, for conditional requests.
    let probe = curl(&theirs, "--http2", &["-I"], "/");
    let etag = probe
        .lines()
        .find_map(|l| l.strip_prefix("etag:"))
        .expect("nginx sends an ETag")
        .trim()
        .to_string();
    let last_modified = probe
        .lines()
        .find_map(|l| l.strip_prefix("last-modified:"))
        .expect("nginx sends Last-Modified")
        .trim()
        .to_string();
    let inm = format!("If-None-Match: {etag}");
    let ims = format!("If-Modified-Since: {last_modified}");

    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("/", vec![]),
        ("/about.html", vec![]),
        ("/style.css?v=3", vec![]),
        ("/favicon.ico", vec![]),
        ("/robots.txt", vec![]),
        ("/missing", vec![]),
        ("/wp-login.php", vec![]),
        ("/", vec!["-I"]),
        ("/missing", vec!["-I"]),
        ("/posts", vec![]),
        ("/posts?page=2", vec![]),
        ("/posts/", vec![]),
        ("/empty/", vec![]),
        ("/", vec!["-X", "POST", "-d", "x=1"]),
        ("/missing", vec!["-X", "POST", "-d", "x=1"]),
        ("/", vec!["-X", "PUT", "-d", "x"]),
        ("/", vec!["-X", "DELETE"]),
        ("/", vec!["-X", "OPTIONS"]),
        ("/", vec!["-H", &inm]),
        ("/", vec!["-H", &ims]),
        (
            "/",
            vec!["-H", "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT"],
        ),
        ("/", vec!["-H", "Range: bytes=0-9"]),
        ("/", vec!["-H", "Range: bytes=-20"]),
        ("/", vec!["-H", "Range: bytes=100000-"]),
        ("/%61bout.html", vec![]),
        ("/a/../about.html", vec!["--path-as-is"]),
        ("/../../etc/passwd", vec!["--path-as-is"]),
    ];
    let mut differences = Vec::new();
    for proto in ["--http1.1", "--http2"] {
        for (path, args) in &cases {
            let a = curl(&ours, proto, args, path);
            let b = curl(&theirs, proto, args, path);
            if a != b {
                differences.push(format!(
                    "{proto} {args:?} {path}\n--- burrow\n{a}\n--- nginx\n{b}\n"
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} answers differ from nginx:\n{}\nnginx log:\n{}",
        differences.len(),
        differences.join("\n"),
        nginx.error_log()
    );
}
