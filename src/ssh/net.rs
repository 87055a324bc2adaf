//! TCP connections from this machine: addresses (IPv6 with a zone too) and host names resolved
//! here.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use super::{SshError, Target, with_timeout};

/// Opens the TCP connection, trying each address of the host in turn.
pub(crate) async fn tcp_connect(
    target: &Target,
    limit: Option<Duration>,
) -> Result<TcpStream, SshError> {
    let dest = target.to_string();
    let addrs: Vec<SocketAddr> = match parse_ip(&target.host) {
        Some(addr) => vec![addr(target.port)],
        None => resolve(&target.host, target.port)
            .await
            .map_err(|source| SshError::Connect {
                dest: dest.clone(),
                source,
            })?,
    };
    let mut last = None;
    for addr in addrs {
        match with_timeout(limit, &dest, "connecting to", TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Small requests and replies go out at once; bulk data fills packets anyway.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(source)) => {
                last = Some(SshError::Connect {
                    dest: dest.clone(),
                    source,
                })
            }
            Err(timeout) => last = Some(timeout),
        }
    }
    Err(last.unwrap_or_else(|| SshError::Connect {
        dest,
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "the host has no address"),
    }))
}

/// An IP address, IPv6 with an optional zone (`fe80::1%eth0`, or the interface's index), as
/// a function of the port; `None` for a host name.
fn parse_ip(host: &str) -> Option<impl Fn(u16) -> SocketAddr> {
    let (ip, scope) = match host.split_once('%') {
        None => (host.parse::<IpAddr>().ok()?, 0),
        Some((ip, zone)) => {
            let ip = ip.parse::<std::net::Ipv6Addr>().ok()?;
            let scope = zone.parse::<u32>().ok().or_else(|| {
                let index = std::fs::read_to_string(format!("/sys/class/net/{zone}/ifindex"));
                index.ok()?.trim().parse().ok()
            });
            // An unknown interface: no address, and the name lookup says so.
            (IpAddr::V6(ip), scope?)
        }
    };
    Some(move |port| match ip {
        IpAddr::V6(v6) => SocketAddr::V6(std::net::SocketAddrV6::new(v6, port, 0, scope)),
        v4 => SocketAddr::new(v4, port),
    })
}

/// Resolves a host name on the operator's machine. The binary is static, and a static glibc
/// can only use the name services of the glibc it was built with; when that fails, the
/// system's own `getent` (dynamically linked, with its NSS modules) answers instead.
async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let first = match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if !addrs.is_empty() {
                return Ok(addrs);
            }
            "no address".to_owned()
        }
        Err(e) => e.to_string(),
    };
    let getent = crate::exec::Cmd::new("getent").args(["ahosts", host]);
    let answer = tokio::task::spawn_blocking(move || getent.output())
        .await
        .map_err(std::io::Error::other)?;
    let mut addrs = Vec::new();
    if let Ok(stdout) = answer {
        for line in String::from_utf8_lossy(&stdout).lines() {
            if let Some(Ok(ip)) = line.split_whitespace().next().map(str::parse::<IpAddr>) {
                let addr = SocketAddr::new(ip, port);
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
    }
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("could not resolve {host}: {first}"),
        ));
    }
    Ok(addrs)
}
