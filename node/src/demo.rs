//! `burrow demo`: a relay on loopback, what a browser sees, and a tunnel
//! over each carrier with data both ways — nothing to configure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burrow_obfs::{
    Carrier, Client, Front, FrontConfig, Gate, GateSecret, Identity, Limits, RelayLine, Site,
    Source, Tunnel,
};
use http::{header, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::guarded::GuardedSockets;
use crate::relay_cmd::echo;

const NAME: &str = "slowclay.example";
const PATH: &str = "/api/v2/events/5e1f0c2a";

/// Runs the demo; `bytes` is how much goes each way through each tunnel.
pub async fn run(bytes: usize) -> Result<()> {
    println!("Burrow demo: a relay and a client on 127.0.0.1, nothing to configure.\n");

    let (identity, _, _) = Identity::self_signed(NAME)?;
    let secret = GateSecret::generate(&mut rand::rngs::OsRng);
    let pin = identity.pin();
    let config = FrontConfig {
        identity,
        gate: Gate::new(secret.clone()),
        tunnel_path: PATH.into(),
        site: Site::new(Source::Builtin, 0, true),
        limits: Limits::default(),
    };
    let (front, mut tunnels) = Front::bind("127.0.0.1:0".parse()?, config).await?;
    let addr = front.local_addr();
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(front.run(stop_rx));
    tokio::spawn(async move {
        while let Some(t) = tunnels.accept().await {
            tokio::spawn(echo(t));
        }
    });
    let line = RelayLine {
        host: NAME.into(),
        port: addr.port(),
        path: PATH.into(),
        key: secret.public(),
        carriers: vec![Carrier::H2, Carrier::H3],
        pin,
        ip: Some(addr.ip()),
        id: None,
    };
    println!(
        "1. Relay listening on {addr}: TCP (TLS 1.3, HTTP/1.1 + HTTP/2) and UDP (QUIC, HTTP/3)."
    );
    println!("   The line a user adds to reach it (key and certificate pin included):");
    println!("   {line}\n");

    println!(
        "2. What a browser, a scanner or a censor's probe sees: a small pottery studio's website."
    );
    // Every dial goes through the firewall, allowed to reach this relay only.
    let sockets = Arc::new(GuardedSockets::for_relay(&line, "demo")?);
    let client = Client::new(line.clone(), sockets.clone())?;
    let mut no_key = line.clone();
    no_key.key = GateSecret::generate(&mut rand::rngs::OsRng).public();
    let prober = Client::new(no_key, sockets)?;
    for (carrier, method, path) in [
        (Carrier::H2, Method::GET, "/"),
        (Carrier::H3, Method::GET, "/"),
        (Carrier::H2, Method::GET, "/wp-login.php"),
        (Carrier::H2, Method::POST, PATH),
    ] {
        let r = client.fetch(carrier, method.clone(), path).await?;
        let ctype = r
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let server = r
            .headers()
            .get(header::SERVER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        println!(
            "   {carrier} {:<4} {:<28} -> {} {}, {} bytes, server: {server}{}",
            method.as_str(),
            path,
            r.status().as_u16(),
            ctype,
            r.body().len(),
            title(r.body())
                .map(|t| format!(", \"{t}\""))
                .unwrap_or_default()
        );
    }
    let mut probe = prober.connect_via(Carrier::H2).await?;
    match probe.established().await {
        Ok(()) => bail!("a client with the wrong key got a tunnel"),
        Err(e) => {
            println!("   h2 tunnel request with a wrong key: refused, answered as the site ({e})\n")
        }
    }

    println!("3. A Burrow client that knows the relay's key opens a tunnel inside ordinary HTTPS:");
    for carrier in [Carrier::H2, Carrier::H3] {
        let mut t = client.connect_via(carrier).await?;
        t.established()
            .await
            .with_context(|| format!("{carrier} tunnel"))?;
        let rtt = round_trips(&mut t, 200).await?;
        let (elapsed, ok) = bulk(t, bytes).await?;
        if !ok {
            bail!("{carrier} tunnel: the bytes that came back differ from those sent");
        }
        let rate = (2 * bytes) as f64 / elapsed.as_secs_f64() / 1e6;
        println!(
            "   {carrier}: {} MiB each way, byte-exact, {:.0} MB/s combined; 64-byte echo round trip p50 {} µs",
            bytes / (1024 * 1024),
            rate,
            rtt.as_micros()
        );
    }
    println!("\nDone: the relay looked like a website to everyone without the key, and carried data both ways over each carrier.");
    let _ = stop_tx.send(true);
    let _ = server.await;
    Ok(())
}

fn title(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<title>")? + 7;
    let end = text[start..].find("</title>")? + start;
    Some(text[start..end].to_string())
}

/// Median time for `n` 64-byte echoes.
async fn round_trips(t: &mut Tunnel, n: usize) -> Result<Duration> {
    let msg = [0x42u8; 64];
    let mut back = [0u8; 64];
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        t.write_all(&msg).await?;
        t.flush().await?;
        t.read_exact(&mut back).await?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[n / 2])
}

/// Sends `bytes` and reads them back concurrently; returns time and equality.
async fn bulk(mut t: Tunnel, bytes: usize) -> Result<(Duration, bool)> {
    let data: Vec<u8> = (0..bytes).map(|i| (i as u8) ^ (i >> 9) as u8).collect();
    let start = Instant::now();
    let (mut r, mut w) = tokio::io::split(&mut t);
    let send = async {
        for chunk in data.chunks(256 * 1024) {
            w.write_all(chunk).await?;
        }
        w.shutdown().await?;
        Ok::<_, std::io::Error>(())
    };
    let recv = async {
        let mut got = Vec::with_capacity(bytes);
        r.read_to_end(&mut got).await?;
        Ok::<_, std::io::Error>(got)
    };
    let (sent, got) = tokio::join!(send, recv);
    sent?;
    let got = got?;
    Ok((start.elapsed(), got == data))
}
