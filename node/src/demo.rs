//! `burrow demo`: the whole story on loopback with nothing to configure —
//! a relay that is a website to everyone without its key, two users who
//! never accept a connection, a verified contact, sealed messages both ways
//! over each carrier with receipts, one message that waits in the
//! relay's RAM mailbox while its recipient is offline, a contact reached on
//! their own front, and a hole punched between the two.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burrow_obfs::{
    Carrier, Client, Front, FrontConfig, Gate, GateSecret, Identity, Limits, RelayLine, Site,
    Source,
};
use burrow_relay::{Admission, RelayLimits, RelayStats};
use http::{header, Method};
use libp2p::identity::Keypair;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::control::{ControlClient, Request, Response};
use crate::daemon::Reach;
use crate::direct::DirectArgs;
use crate::guarded::GuardedSockets;
use crate::identity::KdfCost;
use crate::messenger::{self, NodePaths};
use crate::p2p::transport::relay_node;

const NAME: &str = "slowclay.example";
const PATH: &str = "/api/v2/events/5e1f0c2a";
/// The demo users' passwords (their keystores live in a temporary
/// directory removed at the end).
const PASSWORD: &[u8] = b"correct horse battery staple";

/// Runs the demo.
pub async fn run() -> Result<()> {
    println!("Burrow demo: a relay and two users on 127.0.0.1, nothing to configure.\n");

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
    let (front, tunnels) = Front::bind("127.0.0.1:0".parse()?, config).await?;
    let addr = front.local_addr();
    let keypair = Keypair::generate_ed25519();
    let line = RelayLine {
        host: NAME.into(),
        port: addr.port(),
        path: PATH.into(),
        key: secret.public(),
        carriers: vec![Carrier::H2, Carrier::H3],
        pin,
        ip: Some(addr.ip()),
        id: Some(keypair.public().to_peer_id().to_base58()),
        proxied: false,
    };
    let node = relay_node(
        tunnels,
        &keypair,
        &line,
        &RelayLimits::default(),
        &Admission::Open,
    )?;
    let relay_stats = node.stats();
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(front.run(stop_rx.clone()));
    let relay = tokio::spawn(node.run(stop_rx));
    println!(
        "1. Relay listening on {addr}: TCP (TLS 1.3, HTTP/1.1 + HTTP/2) and UDP (QUIC, HTTP/3)."
    );
    println!("   The line a user adds to reach it (key and certificate pin included):");
    println!("   {line}");
    println!("   Behind it: a circuit relay (a meeting point) and a mailbox held in RAM only.\n");

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

    messaging(&line, &relay_stats).await?;
    println!("\nDone: the relay looked like a website to everyone without the key, and carried sealed messages both ways over each carrier.");
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = relay.await;
    Ok(())
}

fn title(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<title>")? + 7;
    let end = text[start..].find("</title>")? + start;
    Some(text[start..end].to_string())
}

/// One demo user: a data directory and, while online, a node in this process.
struct User {
    name: &'static str,
    data_dir: std::path::PathBuf,
    paths: NodePaths,
    node: Option<(oneshot::Sender<()>, JoinHandle<Result<()>>)>,
}

impl User {
    fn create(root: &Path, name: &'static str, home: &RelayLine) -> Result<(Self, String)> {
        let data_dir = root.join(name);
        let paths = NodePaths::new(&data_dir);
        let address = messenger::init(&paths, PASSWORD, home, KdfCost::default())
            .with_context(|| format!("creating {name}"))?;
        let user = Self {
            name,
            data_dir,
            paths,
            node: None,
        };
        Ok((user, address.to_string()))
    }

    /// Starts `burrow up` for this user and waits for the home reservation.
    async fn up(&mut self) -> Result<()> {
        self.up_with(Reach::Relay).await
    }

    /// Like [`User::up`], as `burrow up --listen` or `--punch`.
    async fn up_with(&mut self, reach: Reach) -> Result<()> {
        let (stop, stopped) = oneshot::channel::<()>();
        let dir = self.data_dir.clone();
        let task = tokio::spawn(async move {
            crate::daemon::run_until(&dir, PASSWORD, reach, |_| async move {
                let _ = stopped.await;
            })
            .await
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if task.is_finished() {
                return match task.await? {
                    Ok(()) => Err(anyhow::anyhow!("{}'s node stopped", self.name)),
                    Err(e) => Err(e.context(format!("{}'s node", self.name))),
                };
            }
            // Online, and (punching) the public address known.
            if let Ok(Response::Id {
                online: true,
                punch_ready: None | Some(true),
                ..
            }) = self.call(Request::Id).await
            {
                self.node = Some((stop, task));
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not reach the relay within 30 s", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn down(&mut self) -> Result<()> {
        if let Some((stop, task)) = self.node.take() {
            let _ = stop.send(());
            task.await??;
        }
        Ok(())
    }

    async fn call(&self, request: Request) -> Result<Response> {
        let mut client = ControlClient::connect(&self.paths.socket()).await?;
        Ok(client.call(&request).await?)
    }

    async fn add_contact(&self, name: &str, address: &str) -> Result<()> {
        self.call(Request::AddContact {
            name: name.into(),
            address: address.into(),
        })
        .await?;
        Ok(())
    }

    async fn verify(&self, name: &str, confirm: bool) -> Result<String> {
        match self
            .call(Request::Verify {
                name: name.into(),
                confirm,
            })
            .await?
        {
            Response::Verify { code, .. } => Ok(code),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// Sends and returns what happened on the first attempt.
    async fn send(&self, to: &str, text: &str) -> Result<(String, String)> {
        self.send_by(to, text).await.map(|(o, s, _)| (o, s))
    }

    /// Like [`User::send`], with the route a delivered message took.
    async fn send_by(&self, to: &str, text: &str) -> Result<(String, String, Option<String>)> {
        match self
            .call(Request::Send {
                name: to.into(),
                text: text.into(),
            })
            .await?
        {
            Response::Sent {
                outcome,
                state,
                route,
                ..
            } => Ok((outcome, state, route)),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// Waits until the conversation with `with` holds a message with this
    /// text, direction and state.
    async fn wait_for(&self, with: &str, text: &str, direction: &str, state: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Response::Messages { messages } = self
                .call(Request::Inbox {
                    name: Some(with.into()),
                })
                .await?
            {
                if messages
                    .iter()
                    .any(|m| m.text == text && m.direction == direction && m.state == state)
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("{}: \"{text}\" not {state} after 60 s", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn with_carrier(line: &RelayLine, carrier: Carrier) -> RelayLine {
    with_carriers(line, &[carrier])
}

/// The line with these carriers, tried in this order.
fn with_carriers(line: &RelayLine, carriers: &[Carrier]) -> RelayLine {
    let mut line = line.clone();
    line.carriers = carriers.to_vec();
    line
}

fn short(address: &str) -> String {
    let cut: String = address.chars().take(48).collect();
    format!("{cut}…")
}

async fn messaging(line: &RelayLine, relay: &Arc<Mutex<RelayStats>>) -> Result<()> {
    let root = tempfile::Builder::new().prefix("burrow-demo-").tempdir()?;
    println!("3. Two users who never accept a connection (as behind NAT or a censor's firewall).");
    println!("   Alice reaches the relay over HTTP/2 (TCP), Bob over HTTP/3 (QUIC), so every");
    println!("   message below crosses both carriers.");
    let (mut alice, alice_addr) = User::create(
        root.path(),
        "alice",
        &with_carriers(line, &[Carrier::H2, Carrier::H3]),
    )?;
    let (mut bob, bob_addr) = User::create(root.path(), "bob", &with_carrier(line, Carrier::H3))?;
    println!(
        "   Each has an Ed25519 key in a password-protected keystore and an encrypted database."
    );
    println!("   alice's address: {}", short(&alice_addr));
    println!("   bob's address:   {}\n", short(&bob_addr));

    alice.up().await?;
    bob.up().await?;
    alice.add_contact("bob", &bob_addr).await?;
    bob.add_contact("alice", &alice_addr).await?;
    let code_a = alice.verify("bob", false).await?;
    let code_b = bob.verify("alice", false).await?;
    if code_a != code_b {
        bail!("the verification codes differ: {code_a} / {code_b}");
    }
    alice.verify("bob", true).await?;
    bob.verify("alice", true).await?;
    println!("4. They swap addresses; each screen shows the code {code_a}: they read it aloud, it");
    println!("   matches, both mark the other verified.\n");

    println!("5. Messages, end-to-end encrypted, each confirmed by a receipt from the other side:");
    for (from, to, to_name, text) in [
        (
            &alice,
            &bob,
            "bob",
            "Hi Bob, it's Alice. Can you read this?",
        ),
        (
            &bob,
            &alice,
            "alice",
            "Loud and clear. The relay can't, though.",
        ),
    ] {
        let start = Instant::now();
        let (outcome, _) = from.send(to_name, text).await?;
        to.wait_for(from.name, text, "in", "received").await?;
        println!(
            "   {} -> {}: \"{text}\" — {outcome} in {} ms",
            from.name,
            to.name,
            start.elapsed().as_millis()
        );
    }
    let mut times = Vec::new();
    for i in 0..20 {
        let start = Instant::now();
        let (outcome, _) = alice.send("bob", &format!("ping {i}")).await?;
        if outcome != "delivered" {
            bail!("ping {i}: {outcome}");
        }
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "   20 more, one after another: send -> receipt p50 {:.1} ms\n",
        times[10].as_secs_f64() * 1e3
    );

    println!("6. Bob goes offline. Alice writes anyway:");
    bob.down().await?;
    let text = "Saw your note; see you at 6.";
    let (outcome, state) = alice.send("bob", text).await?;
    if state != "deposited" {
        bail!("the message for offline Bob was not left in his mailbox: {outcome}");
    }
    let held = relay.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!("   alice -> bob: \"{text}\" — {outcome}");
    println!(
        "   The relay now holds {} sealed message{} for Bob ({} bytes, in RAM); only Bob's key opens it.",
        held.mailbox_messages,
        if held.mailbox_messages == 1 { "" } else { "s" },
        held.mailbox_bytes
    );
    let start = Instant::now();
    bob.up().await?;
    bob.wait_for("alice", text, "in", "received").await?;
    alice.wait_for("bob", text, "out", "delivered").await?;
    let left = relay.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if left.mailbox_messages != 0 {
        bail!(
            "Bob acknowledged his mail but the relay still holds {} message(s)",
            left.mailbox_messages
        );
    }
    println!(
        "   Bob comes back: he fetches and opens it, Alice has his receipt {} ms later, and the",
        start.elapsed().as_millis()
    );
    println!("   relay's mailbox is empty again.\n");

    println!("7. Later Bob is on a network where he can accept connections: he restarts with");
    println!(
        "   `burrow up --listen 127.0.0.1:0`. His node runs its own front (a website to anyone"
    );
    println!("   else) and puts its line in his signed, encrypted tracker record.");
    bob.down().await?;
    alice.down().await?;
    bob.up_with(Reach::Listen(DirectArgs {
        listen: "127.0.0.1:0".parse()?,
        public: None,
    }))
    .await?;
    alice.up().await?;
    let circuits =
        |r: &Arc<Mutex<RelayStats>>| r.lock().unwrap_or_else(|p| p.into_inner()).circuits_opened;
    let before = circuits(relay);
    let text = "Direct now? Nice.";
    let start = Instant::now();
    let (outcome, _) = alice.send("bob", text).await?;
    bob.wait_for("alice", text, "in", "received").await?;
    if outcome != "delivered" {
        bail!("the message to Bob's own front was not delivered: {outcome}");
    }
    if circuits(relay) != before {
        bail!("the message to Bob's own front went through the relay");
    }
    println!(
        "   alice -> bob: \"{text}\" — {outcome} in {} ms (tracker look-up included), straight to",
        start.elapsed().as_millis()
    );
    println!(
        "   Bob's front: Alice verified Bob, so her node trusts the endpoint he announced, and the"
    );
    println!("   relay opened no circuit for it.\n");
    alice.down().await?;
    bob.down().await?;

    println!("8. Back behind their NATs (loopback stands in for them here), both restart with");
    println!("   `burrow up --punch`: each reaches the relay over QUIC from the one UDP socket it");
    println!("   keeps, and the relay tells it the public address it sees.");
    bob.up_with(Reach::Punch).await?;
    alice.up_with(Reach::Punch).await?;
    let before = circuits(relay);
    let text = "Through the hole?";
    let start = Instant::now();
    let (outcome, _, route) = alice.send_by("bob", text).await?;
    bob.wait_for("alice", text, "in", "received").await?;
    if outcome != "delivered" || route.as_deref() != Some("hole") {
        bail!("the message was not delivered through a punched hole: {outcome} ({route:?})");
    }
    println!(
        "   alice -> bob: \"{text}\" — {outcome} in {} ms: Alice asked Bob through the relay to",
        start.elapsed().as_millis()
    );
    println!(
        "   punch; he answered with his own QUIC front's line at his public address and sent a"
    );
    println!(
        "   few datagrams toward hers (opening his NAT); her handshake followed, straight to him."
    );
    let asked = circuits(relay);
    let text = "Yes. And no relay in between.";
    let start = Instant::now();
    let (outcome, _, route) = bob.send_by("alice", text).await?;
    alice.wait_for("bob", text, "in", "received").await?;
    if outcome != "delivered" || route.as_deref() != Some("direct") || circuits(relay) != asked {
        bail!("the reply did not take the punched connection: {outcome}");
    }
    println!(
        "   bob -> alice: \"{text}\" — {outcome} in {} ms over the same direct connection;",
        start.elapsed().as_millis()
    );
    println!(
        "   the relay opened {} circuit for the punch request and none after it.",
        asked - before
    );
    alice.down().await?;
    bob.down().await?;
    Ok(())
}
