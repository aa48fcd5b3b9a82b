//! The guarded dialer: the only code in the workspace that opens outbound
//! sockets. It asks the policy about the exact address, logs the answer,
//! and dials only an [`Approved`] address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::audit::{Audit, Record, Verdict};
use crate::error::Error;
use crate::policy::{Approved, Denied, Entry, Policy};
use crate::resolver::{ResolveError, Resolver, ResolverLimits, ResolverSpec};
use crate::target::{Host, Proto, Target};

/// The policy and the audit log: what every socket of the process, the
/// resolver's included, is checked against. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gate {
    policy: Arc<RwLock<Policy>>,
    audit: Arc<Mutex<Audit>>,
}

impl Gate {
    /// Decides on `addr` for `target` and logs the decision.
    pub(crate) fn check(
        &self,
        component: &str,
        target: &Target,
        addr: SocketAddr,
    ) -> Result<Approved, Denied> {
        let decision = self
            .policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .decide(target, addr);
        self.log(component, target, &decision.as_ref().map(Approved::entry));
        decision
    }

    /// [`Policy::explain`] under the read lock (no copy of the policy: it
    /// runs before every name is resolved).
    fn explain(&self, target: &Target) -> Result<Entry, Denied> {
        self.policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .explain(target)
    }

    fn log(&self, component: &str, target: &Target, decision: &Result<&Entry, &Denied>) {
        let verdict = match decision {
            Ok(entry) => {
                debug!(component, %target, "approved: {}", entry.reason);
                Verdict::Approved {
                    reason: entry.reason.clone(),
                }
            }
            Err(denied) => {
                info!(component, "{denied}");
                Verdict::Refused {
                    reason: denied.reason.to_string(),
                }
            }
        };
        self.audit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(Record {
                seq: 0,
                time: SystemTime::now(),
                component: component.to_string(),
                target: target.clone(),
                verdict,
            });
    }
}

/// Shared by every component of one process; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Dialer {
    gate: Gate,
    resolver: Arc<RwLock<Option<Resolver>>>,
}

impl Dialer {
    pub fn new(policy: Policy, audit: Audit) -> Self {
        Self {
            gate: Gate {
                policy: Arc::new(RwLock::new(policy)),
                audit: Arc::new(Mutex::new(audit)),
            },
            resolver: Arc::default(),
        }
    }

    /// Replaces the policy (contacts or config changed). Dials already
    /// approved are not revoked; every later one is decided anew.
    pub fn set_policy(&self, policy: Policy) {
        *self
            .gate
            .policy
            .write()
            .unwrap_or_else(PoisonError::into_inner) = policy;
    }

    pub fn policy(&self) -> Policy {
        self.gate
            .policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sets the resolvers names are resolved with, asked in this order.
    /// Their own endpoints must be on the policy ([`ResolverList::entries`])
    /// or their queries are refused. Each comes with the client config for
    /// its DoH/DoT (web roots or the spec's pin).
    ///
    /// [`ResolverList::entries`]: crate::ResolverList::entries
    pub fn set_resolver(
        &self,
        resolvers: Vec<(ResolverSpec, Option<rustls::ClientConfig>)>,
        limits: ResolverLimits,
    ) -> Result<(), ResolveError> {
        let resolver = Resolver::new(resolvers, limits, self.gate.clone())?;
        *self
            .resolver
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(resolver);
        Ok(())
    }

    /// The resolver in use, if any.
    pub fn resolver(&self) -> Option<Resolver> {
        self.resolver
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A copy of the audit log.
    pub fn audit(&self) -> Audit {
        self.gate
            .audit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Audit records after `seq` (see [`Audit::since`]).
    pub fn audit_since(&self, seq: u64) -> Vec<Record> {
        self.gate
            .audit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .since(seq)
    }

    /// Decides on `addr` for `target` and logs the decision.
    pub fn check(
        &self,
        component: &str,
        target: &Target,
        addr: SocketAddr,
    ) -> Result<Approved, Denied> {
        self.gate.check(component, target, addr)
    }

    /// Decides on a target without dialling or resolving it, and logs the
    /// decision: for an address learned from the network (identify, the
    /// tracker, a relay) that the caller will not dial anyway, so that the
    /// attempt still shows in the audit log with its reason.
    pub fn screen(&self, component: &str, target: &Target) -> Result<Entry, Denied> {
        let decision = self.gate.explain(target);
        self.gate.log(component, target, &decision.as_ref());
        decision
    }

    /// Everything `target` may be dialled at, best first. An address is
    /// decided as it is. A name is first checked against the list before
    /// any query is sent (a refused name never reaches the resolver), then
    /// resolved over the configured encrypted resolver, and each address it
    /// resolved to is decided again (no rebinding into a local network).
    /// Refusals are logged; when every address is refused, the first
    /// refusal is the error.
    pub async fn approve(&self, component: &str, target: &Target) -> Result<Vec<Approved>, Error> {
        let name = match &target.host {
            Host::Ip(ip) => {
                let addr = SocketAddr::new(*ip, target.port);
                return Ok(vec![self.check(component, target, addr)?]);
            }
            Host::Name(name) => name.clone(),
        };
        let explained = self.gate.explain(target);
        if let Err(denied) = &explained {
            self.gate.log(component, target, &Err(denied));
            return Err(denied.clone().into());
        }
        let resolver = self.resolver().ok_or(ResolveError::NoResolver)?;
        let ips = resolver.lookup(&name).await?;
        let mut approved = Vec::new();
        let mut first_refusal = None;
        for ip in ips {
            match self.check(component, target, SocketAddr::new(ip, target.port)) {
                Ok(a) => approved.push(a),
                Err(d) => {
                    first_refusal.get_or_insert(d);
                }
            }
        }
        match (approved.is_empty(), first_refusal) {
            (true, Some(d)) => Err(d.into()),
            _ => Ok(approved),
        }
    }

    /// Connects over TCP to `target` (a name or an address): the first
    /// approved address that answers.
    pub async fn connect_tcp(&self, component: &str, target: &Target) -> Result<TcpStream, Error> {
        let mut last = None;
        for approved in self.approve(component, target).await? {
            match self.tcp(&approved).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Io {
            target: target.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        }))
    }

    /// A UDP socket for `target` (a name or an address), and the approved
    /// address it may send to.
    pub async fn udp_for(
        &self,
        component: &str,
        target: &Target,
    ) -> Result<(std::net::UdpSocket, SocketAddr), Error> {
        let approved = self.approve(component, target).await?;
        let first = approved.first().ok_or_else(|| Error::Io {
            target: target.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        })?;
        Ok((self.udp(first)?, first.addr()))
    }

    /// Checks and connects to an address given as such.
    pub async fn tcp_to(&self, component: &str, addr: SocketAddr) -> Result<TcpStream, Error> {
        let approved = self.check(component, &Target::addr(addr, Proto::Tcp), addr)?;
        self.tcp(&approved).await
    }

    /// Connects to exactly the approved address.
    pub async fn tcp(&self, approved: &Approved) -> Result<TcpStream, Error> {
        if approved.proto() != Proto::Tcp {
            return Err(Error::Io {
                target: approved.addr().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "approved for UDP, not TCP",
                ),
            });
        }
        TcpStream::connect(approved.addr())
            .await
            .map_err(|source| Error::Io {
                target: approved.addr().to_string(),
                source,
            })
    }

    /// A UDP socket for exactly the approved peer: bound to the unspecified
    /// address of its family (loopback for a loopback peer).
    pub fn udp(&self, approved: &Approved) -> Result<std::net::UdpSocket, Error> {
        let peer = approved.addr();
        let local: IpAddr = match (peer.ip().is_loopback(), peer.is_ipv4()) {
            (true, true) => Ipv4Addr::LOCALHOST.into(),
            (true, false) => Ipv6Addr::LOCALHOST.into(),
            (false, true) => Ipv4Addr::UNSPECIFIED.into(),
            (false, false) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let io = |source| Error::Io {
            target: peer.to_string(),
            source,
        };
        if approved.proto() != Proto::Udp {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "approved for TCP, not UDP",
            )));
        }
        std::net::UdpSocket::bind(SocketAddr::new(local, 0)).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{DenyReason, EntrySource};

    #[tokio::test]
    async fn dials_only_what_it_approved_and_logs_refusals() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let allowed = listener.local_addr().expect("addr");
        let other = SocketAddr::new(allowed.ip(), allowed.port().wrapping_add(1).max(1));
        let policy = Policy::new(
            vec![Entry::new(
                Target::addr(allowed, Proto::Tcp),
                EntrySource::RelayUpstream,
                "origin",
            )],
            true,
        );
        let dialer = Dialer::new(policy, Audit::default());
        dialer.tcp_to("test", allowed).await.expect("allowed dial");
        let err = dialer
            .tcp_to("test", other)
            .await
            .expect_err("refused dial");
        assert!(
            matches!(&err, Error::Denied(d) if d.reason == DenyReason::WrongPort(vec![allowed.port()])),
            "{err}"
        );
        let log: Vec<_> = dialer.audit().records().cloned().collect();
        assert_eq!(log.len(), 1, "only the refusal is logged by default");
        assert_eq!(log[0].target, Target::addr(other, Proto::Tcp));
        assert_eq!(log[0].component, "test");

        // A live policy change takes effect on the next dial.
        dialer.set_policy(Policy::new(Vec::new(), true));
        assert!(dialer.tcp_to("test", allowed).await.is_err());

        let udp_ok = dialer.check("test", &Target::addr(allowed, Proto::Udp), allowed);
        assert!(udp_ok.is_err());
    }
}
