//! Which addresses a TCP port is listening on, as the kernel reports it in
//! `/proc/net/tcp` and `/proc/net/tcp6` (this network namespace): for tests that check a
//! server binds nothing wider than configured.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `st` of a listening socket in `/proc/net/tcp*` (`TCP_LISTEN`).
const TCP_LISTEN: &str = "0A";

/// Every local address in LISTEN state on `port`, IPv4 and IPv6.
pub fn listening_on(port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let mut found = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            // No IPv6 in this kernel: nothing listens there.
            Err(e) if v6 && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        found.extend(
            text.lines()
                .skip(1)
                .filter_map(|line| parse_line(line, v6))
                .filter(|(addr, state)| addr.port() == port && state == TCP_LISTEN)
                .map(|(addr, _)| addr),
        );
    }
    Ok(found)
}

/// `sl local_address rem_address st …`: the local address and the state.
fn parse_line(line: &str, v6: bool) -> Option<(SocketAddr, String)> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let (ip, port) = fields.next()?.split_once(':')?;
    let _remote = fields.next()?;
    let state = fields.next()?.to_string();
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = parse_ip(ip, v6)?;
    Some((SocketAddr::new(ip, port), state))
}

/// The kernel prints the address as 32-bit words in host byte order, in hex.
fn parse_ip(hex: &str, v6: bool) -> Option<IpAddr> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let mut bytes = Vec::with_capacity(16);
    for w in &words {
        bytes.extend_from_slice(&w.to_ne_bytes());
    }
    match (v6, bytes.len()) {
        (false, 4) => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        (true, 16) => {
            let octets: [u8; 16] = bytes.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_loopback_listener_and_its_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(
            listening_on(port).unwrap(),
            vec![SocketAddr::from(([127, 0, 0, 1], port))]
        );
        drop(l);
        assert!(listening_on(port).unwrap().is_empty());
    }

    #[test]
    fn finds_ipv6_listeners() {
        // Loopback only: a wildcard bind would open a port to the network.
        let Ok(l) = std::net::TcpListener::bind("[::1]:0") else {
            return; // no IPv6 here
        };
        let port = l.local_addr().unwrap().port();
        assert_eq!(
            listening_on(port).unwrap(),
            vec![SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)]
        );
    }
}
