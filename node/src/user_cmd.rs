//! The user's commands: `init`, `id`, `set-relay`, `contact …`, `send`,
//! `inbox`, `chat`, `firewall …`. Each talks to a running `burrow up` through the
//! control socket when there is one, and otherwise opens the keystore and
//! store itself (asking for the password).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burrow_obfs::RelayLine;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::control::{ContactView, ControlClient, ControlError, MessageView, Request, Response};
use crate::identity::KdfCost;
use crate::messenger::{self, Messenger, NodePaths};

/// Where the password comes from.
#[derive(Debug, Clone, Default)]
pub struct PasswordSource {
    pub file: Option<PathBuf>,
}

impl PasswordSource {
    /// `--password-file`, else `BURROW_PASSWORD`, else a prompt on the
    /// terminal (twice when creating).
    pub fn read(&self, confirm: bool) -> Result<Vec<u8>> {
        if let Some(f) = &self.file {
            let raw = std::fs::read(f)
                .with_context(|| format!("cannot read the password file {}", f.display()))?;
            let text = String::from_utf8(raw).context("the password file is not UTF-8")?;
            return Ok(text.trim_end_matches(['\n', '\r']).as_bytes().to_vec());
        }
        if let Ok(p) = std::env::var("BURROW_PASSWORD") {
            return Ok(p.into_bytes());
        }
        if !std::io::stdin().is_terminal() {
            bail!("a password is needed: use --password-file FILE or BURROW_PASSWORD (no terminal to ask on)");
        }
        let p = rpassword::prompt_password("Password: ").context("cannot read the password")?;
        if confirm {
            let again = rpassword::prompt_password("Password again: ")
                .context("cannot read the password")?;
            if again != p {
                bail!("the two passwords differ");
            }
        }
        Ok(p.into_bytes())
    }
}

/// How the output is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// Runs one request: through the daemon if it runs, else offline.
async fn request(data_dir: &Path, password: &PasswordSource, req: Request) -> Result<Response> {
    let paths = NodePaths::new(data_dir);
    match ControlClient::connect(&paths.socket()).await {
        Ok(mut c) => Ok(c.call(&req).await?),
        Err(ControlError::NotRunning) => {
            if !paths.keystore().exists() {
                bail!(
                    "no identity in {}; create one with `burrow init --relay LINE`",
                    paths.dir.display()
                );
            }
            let mut m = Messenger::open(&paths, &password.read(false)?)?;
            m.execute(req, false)
        }
        Err(e) => Err(e.into()),
    }
}

pub fn init(
    data_dir: &Path,
    password: &PasswordSource,
    relay: &str,
    cost: KdfCost,
    firewall: &messenger::FirewallChoice,
) -> Result<()> {
    let line: RelayLine = relay
        .parse()
        .map_err(|e| anyhow::anyhow!("--relay: not a valid relay line: {e}"))?;
    let paths = NodePaths::new(data_dir);
    if paths.keystore().exists() {
        bail!(
            "an identity already exists in {} (remove the directory to start over)",
            paths.dir.display()
        );
    }
    let address = messenger::init_with(&paths, &password.read(true)?, &line, cost, firewall)?;
    println!("Created your identity. Your address (give it to your contacts):");
    println!("{address}");
    println!(
        "Fingerprint: {}",
        crate::identity::fingerprint(&address.user)
    );
    Ok(())
}

pub fn set_relay(data_dir: &Path, password: &PasswordSource, relay: &str) -> Result<()> {
    let line: RelayLine = relay
        .parse()
        .map_err(|e| anyhow::anyhow!("not a valid relay line: {e}"))?;
    let paths = NodePaths::new(data_dir);
    if std::os::unix::net::UnixStream::connect(paths.socket()).is_ok() {
        bail!("stop the running node (`burrow up`) before changing its relay");
    }
    let mut m = Messenger::open(&paths, &password.read(false)?)?;
    m.set_home(line)?;
    println!("Home relay changed. Your new address:");
    println!("{}", m.address());
    Ok(())
}

/// `burrow firewall set`: the resolver and local networks (node stopped,
/// so the running firewall never disagrees with the stored one).
pub fn firewall_set(
    data_dir: &Path,
    password: &PasswordSource,
    choice: &messenger::FirewallChoice,
) -> Result<()> {
    if choice.resolver.is_none() && choice.allow_local.is_none() && choice.log_approvals.is_none() {
        bail!(
            "nothing to set: give --resolver SPEC, --local-networks allow|deny or --log-approvals on|off"
        );
    }
    let paths = NodePaths::new(data_dir);
    if std::os::unix::net::UnixStream::connect(paths.socket()).is_ok() {
        bail!("stop the running node (`burrow up`) before changing its firewall settings");
    }
    let m = Messenger::open(&paths, &password.read(false)?)?;
    choice.apply(&m.store)?;
    let settings = m.firewall_settings()?;
    println!("Resolver: {}", settings.resolver);
    println!(
        "Local networks: {}",
        if settings.allow_local {
            "allowed"
        } else {
            "refused"
        }
    );
    println!(
        "Logged: {}",
        if settings.log_approvals {
            "every decision"
        } else {
            "refusals"
        }
    );
    Ok(())
}

fn print_json(r: &Response) -> Result<()> {
    println!("{}", serde_json::to_string(r)?);
    Ok(())
}

pub async fn id(data_dir: &Path, password: &PasswordSource, out: Output) -> Result<()> {
    let r = request(data_dir, password, Request::Id).await?;
    if out == Output::Json {
        return print_json(&r);
    }
    if let Response::Id {
        address,
        fingerprint,
        punch_ready,
        ..
    } = r
    {
        println!("{address}");
        println!("fingerprint: {fingerprint}");
        match punch_ready {
            Some(true) => println!("hole punching: ready"),
            Some(false) => {
                println!("hole punching: waiting for the home relay to see this node over QUIC")
            }
            None => {}
        }
    }
    Ok(())
}

fn print_contact(c: &ContactView) {
    println!(
        "{:<16} {}  {}  relay {}{}",
        c.name,
        c.fingerprint,
        if c.verified {
            "verified  "
        } else {
            "unverified"
        },
        c.relay,
        c.direct
            .as_ref()
            .map(|d| format!("  direct {d}"))
            .unwrap_or_default()
    );
}

pub async fn contact_add(
    data_dir: &Path,
    password: &PasswordSource,
    name: &str,
    address: &str,
    out: Output,
) -> Result<()> {
    let r = request(
        data_dir,
        password,
        Request::AddContact {
            name: name.into(),
            address: address.into(),
        },
    )
    .await?;
    if out == Output::Json {
        return print_json(&r);
    }
    if let Response::Contact { contact } = r {
        print_contact(&contact);
        println!(
            "Compare codes with {} (`burrow contact verify {}`) to make sure no one is in between.",
            contact.name, contact.name
        );
    }
    Ok(())
}

pub async fn contact_list(data_dir: &Path, password: &PasswordSource, out: Output) -> Result<()> {
    let r = request(data_dir, password, Request::Contacts).await?;
    if out == Output::Json {
        return print_json(&r);
    }
    if let Response::Contacts { contacts } = r {
        if contacts.is_empty() {
            println!("No contacts yet; add one with `burrow contact add NAME ADDRESS`.");
        }
        for c in &contacts {
            print_contact(c);
        }
    }
    Ok(())
}

pub async fn contact_verify(
    data_dir: &Path,
    password: &PasswordSource,
    name: &str,
    confirm: bool,
    out: Output,
) -> Result<()> {
    let r = request(
        data_dir,
        password,
        Request::Verify {
            name: name.into(),
            confirm,
        },
    )
    .await?;
    if out == Output::Json {
        return print_json(&r);
    }
    if let Response::Verify {
        name,
        code,
        verified,
    } = r
    {
        println!("Verification code with {name}: {code}");
        if confirm {
            println!("{name} is now marked verified.");
        } else if verified {
            println!("{name} is verified.");
        } else {
            println!("Read it to {name} (in person or by voice). If {name} sees the same code, run `burrow contact verify {name} --confirm`.");
        }
    }
    Ok(())
}

pub async fn send(
    data_dir: &Path,
    password: &PasswordSource,
    name: &str,
    text: &str,
    out: Output,
) -> Result<()> {
    let r = request(
        data_dir,
        password,
        Request::Send {
            name: name.into(),
            text: text.into(),
        },
    )
    .await?;
    if out == Output::Json {
        return print_json(&r);
    }
    if let Response::Sent { outcome, .. } = r {
        println!("{outcome}");
    }
    Ok(())
}

fn format_time(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn print_message(m: &MessageView) {
    let who = if m.direction == "in" {
        format!("{} ->", m.contact)
    } else {
        format!("-> {}", m.contact)
    };
    let mark = match m.state.as_str() {
        "delivered" => " ✓✓",
        "deposited" => " ✓ (mailbox)",
        "pending" => " …",
        _ => "",
    };
    println!("{} {who}: {}{mark}", format_time(m.sent_at_ms), m.text);
}

pub async fn inbox(
    data_dir: &Path,
    password: &PasswordSource,
    name: Option<String>,
    out: Output,
) -> Result<()> {
    let r = request(data_dir, password, Request::Inbox { name }).await?;
    if out == Output::Json {
        return print_json(&r);
    }
    if let Response::Messages { messages } = r {
        if messages.is_empty() {
            println!("No messages.");
        }
        for m in &messages {
            print_message(m);
        }
    }
    Ok(())
}

/// `burrow chat NAME`: type lines to send them; replies and receipts are
/// printed as they arrive. Needs a running node.
pub async fn chat(data_dir: &Path, name: &str) -> Result<()> {
    let paths = NodePaths::new(data_dir);
    let mut watcher = ControlClient::connect(&paths.socket()).await?;
    let mut sender = ControlClient::connect(&paths.socket()).await?;
    if let Response::Messages { messages } = sender
        .call(&Request::Inbox {
            name: Some(name.into()),
        })
        .await?
    {
        for m in messages.iter().rev().take(20).rev() {
            print_message(m);
        }
    }
    watcher
        .send(&Request::Watch {
            name: Some(name.into()),
        })
        .await?;
    eprintln!("Chatting with {name}. Type a line and press Enter to send; Ctrl-D to leave.");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = stdin.next_line() => match line? {
                Some(text) if text.trim().is_empty() => {}
                Some(text) => match sender.call(&Request::Send { name: name.into(), text }).await {
                    Ok(Response::Sent { outcome, .. }) if outcome != "delivered" => eprintln!("  ({outcome})"),
                    Ok(_) => {}
                    Err(ControlError::Refused(e)) => eprintln!("  not sent: {e}"),
                    Err(e) => return Err(e.into()),
                },
                None => return Ok(()),
            },
            event = watcher.next() => match event? {
                Response::Event { message } if message.direction == "in" => print_message(&message),
                Response::Event { message } if message.state == "delivered" => {
                    eprintln!("  ✓✓ delivered: {}", message.text)
                }
                _ => {}
            },
        }
    }
}

// ------------------------------------------------------------ firewall

pub async fn firewall_list(data_dir: &Path, password: &PasswordSource, out: Output) -> Result<()> {
    let r = request(data_dir, password, Request::FirewallList).await?;
    if out == Output::Json {
        return print_json(&r);
    }
    if let Response::Firewall {
        allow_local,
        entries,
    } = r
    {
        println!("The node may reach these endpoints and nothing else:");
        let width = entries.iter().map(|e| e.endpoint.len()).max().unwrap_or(0);
        for e in &entries {
            println!("  {:<width$}  {} ({})", e.endpoint, e.reason, e.source);
        }
        if allow_local {
            println!("Local networks are allowed.");
        } else {
            println!("Loopback, private and link-local addresses are refused.");
        }
        if entries.iter().any(|e| e.reason.contains("plaintext DNS")) {
            println!("Names are resolved with the system's plaintext DNS (turned on explicitly).");
        } else {
            let resolvers = entries
                .iter()
                .filter(|e| e.source == "DNS resolver")
                .count();
            if resolvers > 1 {
                println!(
                    "Names are resolved only over encrypted DNS (the resolvers above, asked in \
                     that order)."
                );
            } else {
                println!("Names are resolved only over encrypted DNS (the resolver above).");
            }
        }
    }
    Ok(())
}

pub async fn firewall_check(
    data_dir: &Path,
    password: &PasswordSource,
    target: &str,
    udp: bool,
    try_dial: bool,
    out: Output,
) -> Result<()> {
    let r = request(
        data_dir,
        password,
        Request::FirewallCheck {
            target: target.into(),
            udp,
            try_dial,
        },
    )
    .await?;
    if out == Output::Json {
        return print_json(&r);
    }
    if let Response::FirewallDecision {
        target,
        allowed,
        reason,
        source,
        attempt,
    } = r
    {
        if allowed {
            println!(
                "{target}: allowed — {reason} ({})",
                source.unwrap_or_default()
            );
        } else {
            println!("{target}: refused — {reason}");
        }
        if let Some(a) = attempt {
            println!("attempt: {a}");
        }
    }
    Ok(())
}

fn print_log_entry(e: &crate::control::FirewallLogView) {
    println!(
        "{}  {:<8} {:<14} {}  {}",
        format_time(e.time_ms),
        e.verdict,
        e.component,
        e.target,
        e.reason
    );
}

pub async fn firewall_log(
    data_dir: &Path,
    password: &PasswordSource,
    limit: usize,
    follow: bool,
    out: Output,
) -> Result<()> {
    let req = Request::FirewallLog { limit, follow };
    if !follow {
        let r = request(data_dir, password, req).await?;
        if out == Output::Json {
            return print_json(&r);
        }
        if let Response::FirewallLog { entries } = r {
            if entries.is_empty() {
                println!("Nothing logged: no connection was refused.");
            }
            for e in &entries {
                print_log_entry(e);
            }
        }
        return Ok(());
    }
    let paths = NodePaths::new(data_dir);
    let mut c = ControlClient::connect(&paths.socket())
        .await
        .map_err(|e| match e {
            ControlError::NotRunning => {
                anyhow::anyhow!("--follow needs a running node (start one with `burrow up`)")
            }
            e => e.into(),
        })?;
    c.send(&req).await?;
    loop {
        let r = c.next().await?;
        if out == Output::Json {
            print_json(&r)?;
            continue;
        }
        match r {
            Response::FirewallLog { entries } => entries.iter().for_each(print_log_entry),
            Response::FirewallEvent { entry } => print_log_entry(&entry),
            _ => {}
        }
    }
}
