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

fn loopback_only(host: &str, port: u16) -> io::Result<SocketAddr> {
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(SocketAddr::new(ip, port)),
        _ => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("test sockets reach only loopback addresses, not {host}"),
        )),
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

impl Sockets for LoopbackSockets {
    fn tcp(&self, host: &str, port: u16) -> Boxed<'_, TcpStream> {
        let addr = loopback_only(host, port);
        Box::pin(async move { TcpStream::connect(addr?).await })
    }

    fn udp(&self, host: &str, port: u16) -> Boxed<'_, (std::net::UdpSocket, SocketAddr)> {
        let addr = loopback_only(host, port);
        Box::pin(async move {
            let addr = addr?;
            let local: IpAddr = if addr.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            };
            Ok((std::net::UdpSocket::bind((local, 0))?, addr))
        })
    }
}
