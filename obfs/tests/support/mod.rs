//! Sockets for this crate's own tests and benchmarks: loopback only.
//!
//! Test code, never shipped: the library opens no outbound socket, and the
//! `burrow` binary dials through the firewall's guarded dialer. These talk
//! to relays the tests start themselves on 127.0.0.1 and refuse anything else.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;

use burrow_obfs::Sockets;
use tokio::net::TcpStream;

#[derive(Debug, Default, Clone, Copy)]
pub struct LoopbackSockets;

fn loopback_only(addr: SocketAddr) -> io::Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("test sockets reach only loopback addresses, not {addr}"),
        ))
    }
}

impl Sockets for LoopbackSockets {
    fn tcp(
        &self,
        addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + '_>> {
        Box::pin(async move {
            loopback_only(addr)?;
            TcpStream::connect(addr).await
        })
    }

    fn udp(&self, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        loopback_only(addr)?;
        let local: IpAddr = if addr.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        };
        std::net::UdpSocket::bind((local, 0))
    }
}
