//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::{daemon, datadir, demo, relay_cmd, runtime, user_cmd};

#[derive(Debug, Parser)]
#[command(
    name = "burrow",
    version,
    about = "Censorship-resistant transport node"
)]
struct Cli {
    /// Log verbosity (error, warn, info, debug, trace), or a tracing filter
    /// [default: info; warn for the demo].
    #[arg(long, global = true, env = "BURROW_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a relay: a website to the world, a tunnel endpoint to Burrow users.
    Relay(Box<RelayCommand>),
    /// The whole story on loopback: a relay, two users, messages both ways
    /// over each carrier and through the mailbox.
    Demo,
    /// Create your identity (a key, stored encrypted with a password).
    Init {
        /// Your home relay: the line `burrow relay address` prints.
        #[arg(long, value_name = "LINE")]
        relay: String,
        /// Encrypted DNS resolvers for relays given by name, asked in order
        /// (default: Quad9, then Cloudflare, over HTTPS). See `burrow
        /// firewall set --help`.
        #[arg(long, value_name = "SPEC[,SPEC…]")]
        resolver: Option<String>,
        /// Let the node reach loopback, private and link-local addresses.
        #[arg(long)]
        allow_local_networks: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Print your address (to give to contacts) and fingerprint.
    Id {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Change your home relay (your address changes with it).
    SetRelay {
        #[arg(value_name = "LINE")]
        relay: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Add, list and verify contacts.
    Contact {
        #[command(subcommand)]
        sub: ContactSub,
    },
    /// Run the node: stay reachable through the home relay, receive, deliver.
    Up {
        /// Also accept direct connections from contacts here (TCP and UDP,
        /// same port), on a front that shows anyone else a small website.
        /// Only contacts learn it (from your signed, encrypted tracker
        /// record); a verified contact tries it before your relay.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// How contacts reach --listen: HOST or HOST:PORT (needed when
        /// --listen is 0.0.0.0 or behind a port forward).
        #[arg(long, value_name = "HOST[:PORT]", requires = "listen")]
        public: Option<String>,
        /// Reach verified contacts who punch too without the relay, through
        /// a hole punched in both NATs (QUIC). Your public address goes to
        /// those contacts only; the home relay is reached over QUIC first.
        #[arg(long, conflicts_with = "listen")]
        punch: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Send a message (delivered now, or kept until it can be).
    Send {
        name: String,
        text: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Show messages, oldest first (all, or with one contact).
    Inbox {
        name: Option<String>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Talk with a contact interactively (needs `burrow up` running).
    Chat {
        name: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// What the node may reach, what it refused, and why.
    Firewall {
        #[command(subcommand)]
        sub: FirewallSub,
    },
}

#[derive(Debug, Subcommand)]
enum FirewallSub {
    /// Every endpoint the node may reach, with where it comes from and why.
    List {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Refused connection attempts, oldest first (kept across restarts).
    Log {
        /// Show at most this many (the newest).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Keep printing new ones as they happen (needs `burrow up`).
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Change the firewall's settings (with the node stopped).
    Set {
        /// The resolvers names are looked up with, by IP address, encrypted:
        /// https://IP[:PORT][/PATH], https://NAME[/PATH]?ip=IP (certificate
        /// checked for NAME), tls://IP[:PORT]; add &pin=SHA256 to pin a
        /// certificate. Several, separated by commas, are asked in order:
        /// one that cannot be reached hands over to the next (and is asked
        /// last for 5 minutes, doubling while it keeps failing, at most an
        /// hour). "system" (alone) uses /etc/resolv.conf in
        /// plaintext.
        #[arg(long, value_name = "SPEC[,SPEC…]")]
        resolver: Option<String>,
        /// Whether loopback, private and link-local addresses may be reached.
        #[arg(long, value_name = "allow|deny")]
        local_networks: Option<LocalNetworks>,
        /// Log approved connections too, not only refusals (endpoints and
        /// reasons, never content).
        #[arg(long, value_name = "on|off")]
        log_approvals: Option<OnOff>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Explain the decision for a host, address or URL (port 443 unless given).
    Check {
        target: String,
        /// Decide for UDP (QUIC) instead of TCP.
        #[arg(long)]
        udp: bool,
        /// Also attempt the connection through the firewall (needs `burrow
        /// up`; a refusal is logged like any other).
        #[arg(long = "try")]
        try_dial: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LocalNetworks {
    Allow,
    Deny,
}

#[derive(Debug, Subcommand)]
enum ContactSub {
    /// Add a contact from the address they gave you.
    Add {
        name: String,
        address: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// List contacts.
    List {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Show the code to compare with a contact; --confirm marks them verified.
    Verify {
        name: String,
        #[arg(long)]
        confirm: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// Options every user command takes.
#[derive(Debug, Args, Clone)]
struct NodeArgs {
    /// Where your keystore and messages live.
    #[arg(long, value_name = "DIR", env = "BURROW_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Read the password from this file (else BURROW_PASSWORD, else a prompt).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

impl NodeArgs {
    fn dir(&self) -> anyhow::Result<PathBuf> {
        datadir::resolve(self.data_dir.clone())
    }
    fn password(&self) -> user_cmd::PasswordSource {
        user_cmd::PasswordSource {
            file: self.password_file.clone(),
        }
    }
    fn output(&self) -> user_cmd::Output {
        if self.json {
            user_cmd::Output::Json
        } else {
            user_cmd::Output::Text
        }
    }
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct RelayCommand {
    #[command(subcommand)]
    sub: Option<RelaySub>,
    #[command(flatten)]
    run: RelayArgs,
}

#[derive(Debug, Subcommand)]
enum RelaySub {
    /// Print the relay line users need to reach this relay.
    Address(AddressArgs),
    /// Check a configuration file without starting the relay: syntax,
    /// unknown keys, conflicting settings, certificate and site files.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Options of `burrow relay`.
#[derive(Debug, Args, Clone)]
pub struct RelayArgs {
    /// Read settings from this TOML file (see contrib/relay.toml); the
    /// flags below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for TCP (TLS) and UDP (QUIC), same port for both [default: 0.0.0.0:443].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Serve this directory as the website (default: a small built-in site).
    #[arg(long, value_name = "DIR", conflicts_with = "upstream")]
    pub site: Option<PathBuf>,
    /// Reverse-proxy the website to this origin: http://HOST[:PORT] (an IP
    /// address, localhost, or a name resolved over --resolver).
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Certificate chain (PEM).
    #[arg(
        long,
        value_name = "FILE",
        requires = "key",
        conflicts_with = "self_signed"
    )]
    pub cert: Option<PathBuf>,
    /// Private key for --cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Generate (once, then reuse) a self-signed certificate for NAME.
    #[arg(long, value_name = "NAME")]
    pub self_signed: Option<String>,
    /// The relay's domain name as users reach it (needed with --cert).
    #[arg(long, value_name = "NAME")]
    pub domain: Option<String>,
    /// Site path that carries tunnels (default: chosen at random on first run).
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    /// Where the relay keeps its key, certificate and settings.
    #[arg(long, value_name = "DIR", env = "BURROW_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Serve only these users (their ids; repeat the flag). Default: anyone
    /// who has the relay line may reserve and use the mailbox.
    #[arg(long, value_name = "USER_ID")]
    pub allow_user: Vec<libp2p::PeerId>,
    /// Messages the mailbox keeps for one offline user [default: 1000].
    #[arg(long, value_name = "N")]
    pub mailbox_per_user: Option<usize>,
    /// Encrypted DNS resolvers for the relay's own outbound names (an
    /// --upstream given by name): https://IP/dns-query, tls://IP, or
    /// https://NAME/PATH?ip=IP, several separated by commas and asked in
    /// order; "system" for plaintext /etc/resolv.conf [default: Quad9, then
    /// Cloudflare, over HTTPS].
    #[arg(long, value_name = "SPEC[,SPEC…]")]
    pub resolver: Option<String>,
    /// Let the relay's own outbound connections reach loopback, private and
    /// link-local addresses even when a name resolves there.
    #[arg(long)]
    pub allow_local_networks: bool,
    /// Run behind a web server (nginx, Caddy) that terminates TLS and
    /// passes the tunnel path here: IP:PORT on loopback, or unix:/PATH.
    /// Needs --domain (the web server's name); see contrib/nginx-relay.conf.
    #[arg(long, value_name = "BACKEND", conflicts_with_all = ["listen", "cert", "self_signed"])]
    pub behind_proxy: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (counts only, no
    /// user ids or addresses); off by default. Use a loopback address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// After SIGTERM, refuse new connections and let open circuits go on
    /// for up to this many seconds before stopping [default: 20].
    #[arg(long, value_name = "SECONDS")]
    pub drain_timeout: Option<u64>,
    /// The web server's public HTTPS port, for the relay line [default: 443].
    #[arg(long, value_name = "PORT")]
    pub public_port: Option<u16>,
    /// What the web server carries: h2 (grpc_pass), ws (proxy_pass with
    /// the upgrade headers), or h2,ws [default: h2,ws].
    #[arg(long, value_name = "LIST")]
    pub proxy_carriers: Option<String>,
    /// The web server's certificate, pinned in the relay line (for a
    /// self-signed one; a CA-issued certificate needs no pin).
    #[arg(long, value_name = "FILE")]
    pub pin_cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct AddressArgs {
    /// The relay's data directory.
    #[arg(long, value_name = "DIR", env = "BURROW_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// IP address users should dial (added to the line as ip=).
    #[arg(long, value_name = "IP")]
    ip: Option<std::net::IpAddr>,
    /// Also draw the line as a QR code (for a terminal with a dark
    /// background), to be read with a phone's camera.
    #[arg(long)]
    qr: bool,
}

/// Entry point: returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        // kad's automatic bootstrap warns once, before the relay is in its
        // table; the demo's reader has no use for that line.
        Command::Demo => "warn,libp2p_kad=error",
        _ => "info",
    };
    init_logging(cli.log.as_deref().unwrap_or(default_log));
    let runtime = match &cli.command {
        Command::Relay(r) if r.sub.is_none() => runtime::relay(),
        Command::Demo => runtime::relay(),
        _ => runtime::node(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("burrow: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Relay(relay) => match *relay {
                RelayCommand {
                    sub: Some(RelaySub::Address(a)),
                    ..
                } => {
                    let dir = datadir::resolve(a.data_dir)?;
                    relay_cmd::print_address(&dir, a.ip, a.qr)
                }
                RelayCommand {
                    sub: Some(RelaySub::CheckConfig { file }),
                    ..
                } => relay_cmd::check_config(&file),
                RelayCommand { sub: None, run } => relay_cmd::run(run).await,
            },
            Command::Demo => demo::run().await,
            Command::Init {
                relay,
                resolver,
                allow_local_networks,
                node,
            } => user_cmd::init(
                &node.dir()?,
                &node.password(),
                &relay,
                crate::identity::KdfCost::default(),
                &crate::messenger::FirewallChoice {
                    resolver,
                    allow_local: allow_local_networks.then_some(true),
                    log_approvals: None,
                },
            ),
            Command::Id { node } => {
                user_cmd::id(&node.dir()?, &node.password(), node.output()).await
            }
            Command::SetRelay { relay, node } => {
                user_cmd::set_relay(&node.dir()?, &node.password(), &relay)
            }
            Command::Contact { sub } => match sub {
                ContactSub::Add {
                    name,
                    address,
                    node,
                } => {
                    user_cmd::contact_add(
                        &node.dir()?,
                        &node.password(),
                        &name,
                        &address,
                        node.output(),
                    )
                    .await
                }
                ContactSub::List { node } => {
                    user_cmd::contact_list(&node.dir()?, &node.password(), node.output()).await
                }
                ContactSub::Verify {
                    name,
                    confirm,
                    node,
                } => {
                    user_cmd::contact_verify(
                        &node.dir()?,
                        &node.password(),
                        &name,
                        confirm,
                        node.output(),
                    )
                    .await
                }
            },
            Command::Up {
                listen,
                public,
                punch,
                node,
            } => {
                let password = node.password().read(false)?;
                let reach = match listen {
                    Some(listen) => {
                        daemon::Reach::Listen(crate::direct::DirectArgs { listen, public })
                    }
                    None if punch => daemon::Reach::Punch,
                    None => daemon::Reach::Relay,
                };
                daemon::run(&node.dir()?, &password, reach).await
            }
            Command::Send { name, text, node } => {
                user_cmd::send(&node.dir()?, &node.password(), &name, &text, node.output()).await
            }
            Command::Inbox { name, node } => {
                user_cmd::inbox(&node.dir()?, &node.password(), name, node.output()).await
            }
            Command::Chat { name, node } => user_cmd::chat(&node.dir()?, &name).await,
            Command::Firewall { sub } => match sub {
                FirewallSub::Set {
                    resolver,
                    local_networks,
                    log_approvals,
                    node,
                } => user_cmd::firewall_set(
                    &node.dir()?,
                    &node.password(),
                    &crate::messenger::FirewallChoice {
                        resolver,
                        allow_local: local_networks.map(|l| matches!(l, LocalNetworks::Allow)),
                        log_approvals: log_approvals.map(|o| matches!(o, OnOff::On)),
                    },
                ),
                FirewallSub::List { node } => {
                    user_cmd::firewall_list(&node.dir()?, &node.password(), node.output()).await
                }
                FirewallSub::Log {
                    limit,
                    follow,
                    node,
                } => {
                    user_cmd::firewall_log(
                        &node.dir()?,
                        &node.password(),
                        limit,
                        follow,
                        node.output(),
                    )
                    .await
                }
                FirewallSub::Check {
                    target,
                    udp,
                    try_dial,
                    node,
                } => {
                    user_cmd::firewall_check(
                        &node.dir()?,
                        &node.password(),
                        &target,
                        udp,
                        try_dial,
                        node.output(),
                    )
                    .await
                }
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("burrow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
