//! Which advertised addresses can reach a peer from here.
//!
//! Identify tells us every address a peer listens on. A container listening on 0.0.0.0 advertises
//! 127.0.0.1 as well as its bridge address; handing 127.0.0.1 to Kademlia would make this node (and
//! everyone it gossips the address to) dial itself. So loopback addresses are kept only when we
//! reach the peer over loopback too — which is how a test network on 127.0.0.1 still forms — and
//! unspecified addresses (0.0.0.0, ::) are never kept: nobody can dial them.

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// The addresses of `advertised` worth giving Kademlia, for a peer we reach at `remote`.
pub fn dialable_from(remote: &Multiaddr, advertised: &[Multiaddr]) -> Vec<Multiaddr> {
    let remote_is_loopback = matches!(ip_kind(remote), Some(IpKind::Loopback));
    let mut out: Vec<Multiaddr> = Vec::with_capacity(advertised.len());
    for addr in advertised {
        let keep = match ip_kind(addr) {
            Some(IpKind::Unspecified) => false,
            Some(IpKind::Loopback) => remote_is_loopback,
            Some(IpKind::Other) | None => true,
        };
        if keep && !out.contains(addr) {
            out.push(addr.clone());
        }
    }
    out
}

enum IpKind {
    Unspecified,
    Loopback,
    Other,
}

fn ip_kind(addr: &Multiaddr) -> Option<IpKind> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) if ip.is_unspecified() => Some(IpKind::Unspecified),
        Protocol::Ip6(ip) if ip.is_unspecified() => Some(IpKind::Unspecified),
        Protocol::Ip4(ip) if ip.is_loopback() => Some(IpKind::Loopback),
        Protocol::Ip6(ip) if ip.is_loopback() => Some(IpKind::Loopback),
        Protocol::Ip4(_) | Protocol::Ip6(_) => Some(IpKind::Other),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<Multiaddr> {
        list.iter()
            .map(|a| a.parse().expect("valid multiaddr"))
            .collect()
    }

    #[test]
    fn a_container_peer_loses_its_loopback_address() {
        let remote = "/ip4/172.18.0.3/tcp/4001".parse().expect("valid");
        let kept = dialable_from(
            &remote,
            &addrs(&["/ip4/127.0.0.1/tcp/4001", "/ip4/172.18.0.3/tcp/4001"]),
        );
        assert_eq!(kept, addrs(&["/ip4/172.18.0.3/tcp/4001"]));
    }

    #[test]
    fn a_loopback_network_keeps_loopback_addresses() {
        let remote = "/ip4/127.0.0.1/tcp/50123".parse().expect("valid");
        let kept = dialable_from(
            &remote,
            &addrs(&["/ip4/127.0.0.1/tcp/40001", "/ip6/::1/tcp/40001"]),
        );
        assert_eq!(
            kept,
            addrs(&["/ip4/127.0.0.1/tcp/40001", "/ip6/::1/tcp/40001"])
        );
    }

    #[test]
    fn unspecified_addresses_are_never_kept() {
        let remote = "/ip4/127.0.0.1/tcp/50123".parse().expect("valid");
        assert!(
            dialable_from(
                &remote,
                &addrs(&["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"])
            )
            .is_empty()
        );
    }

    #[test]
    fn dns_addresses_and_duplicates() {
        let remote = "/ip4/10.0.0.9/tcp/4001".parse().expect("valid");
        let kept = dialable_from(
            &remote,
            &addrs(&[
                "/dns4/peer/tcp/4001",
                "/dns4/peer/tcp/4001",
                "/ip4/10.0.0.9/tcp/4001",
            ]),
        );
        assert_eq!(
            kept,
            addrs(&["/dns4/peer/tcp/4001", "/ip4/10.0.0.9/tcp/4001"])
        );
    }
}
