//! The egress allow-list: which addresses a sandboxed task may open TCP connections to.
//!
//! With an allow-list, the task cannot connect a TCP socket itself at all (landlock refuses
//! every TCP connect it makes), its `connect` calls go to the supervisor, and the supervisor
//! connects the task's socket *itself*, to the address it copied out of the task and checked.
//! The kernel never re-reads the address after the check, so a second thread rewriting it in
//! between changes nothing. Datagram and other non-TCP IP sockets are refused at `socket()`
//! (their `sendto` carries an address the filter cannot see), as is TCP Fast Open (a `sendto`
//! that connects), as are the socket options that would send a checked connection elsewhere
//! (`seccomp::EGRESS_REFUSED_SOCKOPTS`). Loopback (and the unspecified address, which means
//! this host) is the task's own network namespace and always allowed. Unix and netlink
//! connects continue unchanged; every other family is refused.
//!
//! Rules are parsed here, once, and matched against the decoded address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// One allowed destination: an address or network, and a port or any port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The network's address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length (32 or 128 for one address).
    pub prefix: u8,
    /// The port, or `None` for any.
    pub port: Option<u16>,
}

/// Why a rule is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--allow-connect {spec:?}: {why}")]
pub struct RuleError {
    spec: String,
    why: String,
}

impl Rule {
    /// Parses `ADDR[/PREFIX]:PORT`, with `*` for any port and IPv6 in brackets:
    /// `10.0.0.5:5432`, `10.0.0.0/24:443`, `[fd00::1]:443`, `[fd00::/64]:*`.
    pub fn parse(spec: &str) -> Result<Rule, RuleError> {
        let err = |why: &str| RuleError {
            spec: spec.to_owned(),
            why: why.to_owned(),
        };
        let (host, port) = if let Some(rest) = spec.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| err("an IPv6 address is written in brackets: [fd00::1]:443"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| err("expected :PORT or :* after the address"))?;
            (host, port)
        } else {
            let (host, port) = spec
                .rsplit_once(':')
                .ok_or_else(|| err("expected ADDR[/PREFIX]:PORT, with * for any port"))?;
            if host.contains(':') {
                // `fd00::1:443` could be an address and a port or an address alone.
                return Err(err("an IPv6 address is written in brackets: [fd00::1]:443"));
            }
            (host, port)
        };
        let port = match port {
            "*" => None,
            p => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| err("the port is a number from 1 to 65535, or *"))?,
            ),
        };
        let (addr, prefix) = match host.split_once('/') {
            Some((a, p)) => (
                a,
                Some(
                    p.parse::<u8>()
                        .map_err(|_| err("the prefix length is a number"))?,
                ),
            ),
            None => (host, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| err("not an IP address (names are not resolved here)"))?;
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(err(&format!("the prefix length is at most {max}")));
        }
        if mask(addr, prefix) != addr {
            return Err(err("the address has bits set beyond its prefix length"));
        }
        Ok(Rule { addr, prefix, port })
    }

    /// Whether `to` matches.
    pub fn permits(&self, to: SocketAddr) -> bool {
        let ip = canonical(to.ip());
        ip.is_ipv4() == self.addr.is_ipv4()
            && mask(ip, self.prefix) == self.addr
            && self.port.is_none_or(|p| p == to.port())
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        let net = if self.prefix == full {
            self.addr.to_string()
        } else {
            format!("{}/{}", self.addr, self.prefix)
        };
        let port = self.port.map_or("*".to_owned(), |p| p.to_string());
        if self.addr.is_ipv4() {
            write!(f, "{net}:{port}")
        } else {
            write!(f, "[{net}]:{port}")
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 address it maps: one address, one answer.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// The allow-list of one sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    /// Allowed destinations, besides loopback.
    pub rules: Vec<Rule>,
}

/// What a `connect` names, decoded from the bytes copied out of the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// An IPv4 or IPv6 destination.
    Inet(SocketAddr),
    /// `AF_UNSPEC`: dissolve the socket's association (no destination).
    Unspec,
}

impl Egress {
    /// Parses the command line's rules; `none` alone is an allow-list with nothing on it
    /// (loopback only).
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Egress, RuleError> {
        if specs.iter().any(|s| s.as_ref() == "none") {
            if specs.len() > 1 {
                return Err(RuleError {
                    spec: "none".into(),
                    why: "none means no egress at all; give it alone".into(),
                });
            }
            return Ok(Egress::default());
        }
        Ok(Egress {
            rules: specs
                .iter()
                .map(|s| Rule::parse(s.as_ref()))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether a connection to `to` may be made; the reason when not.
    pub fn check(&self, to: SocketAddr) -> Result<(), String> {
        // The unspecified address connects to this host, like loopback.
        let ip = canonical(to.ip());
        if ip.is_loopback() || ip.is_unspecified() {
            return Ok(());
        }
        if self.rules.iter().any(|r| r.permits(to)) {
            return Ok(());
        }
        Err(if self.rules.is_empty() {
            "the sandbox allows no egress (only loopback)".to_owned()
        } else {
            "not in the sandbox's egress allow-list".to_owned()
        })
    }
}

/// Decodes a `sockaddr` as the kernel would for an IPv4/IPv6 socket of `family`; the error is
/// the errno the kernel would answer with.
pub fn decode(family: i32, bytes: &[u8]) -> Result<Target, i32> {
    let at = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let sa_family = i32::from(u16::from_ne_bytes([at(0), at(1)]));
    if bytes.len() >= 2 && sa_family == libc::AF_UNSPEC {
        return Ok(Target::Unspec);
    }
    let port = u16::from_be_bytes([at(2), at(3)]);
    if family == libc::AF_INET {
        if bytes.len() < 16 {
            return Err(libc::EINVAL);
        }
        if sa_family != libc::AF_INET {
            return Err(libc::EAFNOSUPPORT);
        }
        let ip = Ipv4Addr::new(at(4), at(5), at(6), at(7));
        return Ok(Target::Inet(SocketAddr::new(IpAddr::V4(ip), port)));
    }
    if family == libc::AF_INET6 {
        // The kernel accepts the RFC 2133 size (without the scope id).
        if bytes.len() < 24 {
            return Err(libc::EINVAL);
        }
        // TCP over IPv6 refuses an IPv4 sockaddr (only UDP takes one).
        if sa_family != libc::AF_INET6 {
            return Err(libc::EAFNOSUPPORT);
        }
        let mut octets = [0u8; 16];
        for (i, o) in octets.iter_mut().enumerate() {
            *o = at(8 + i);
        }
        let ip = Ipv6Addr::from(octets);
        return Ok(Target::Inet(SocketAddr::new(IpAddr::V6(ip), port)));
    }
    Err(libc::EAFNOSUPPORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rules_parse_and_print_back() {
        for (spec, shown) in [
            ("10.0.0.5:5432", "10.0.0.5:5432"),
            ("10.0.0.0/24:443", "10.0.0.0/24:443"),
            ("0.0.0.0/0:*", "0.0.0.0/0:*"),
            ("[fd00::1]:443", "[fd00::1]:443"),
            ("[fd00::/64]:*", "[fd00::/64]:*"),
            ("[::ffff:10.0.0.5]:80", "10.0.0.5:80"),
        ] {
            assert_eq!(Rule::parse(spec).unwrap().to_string(), shown, "{spec}");
        }
    }

    #[test]
    fn malformed_rules_are_refused_with_the_reason() {
        for (spec, why) in [
            ("10.0.0.5", "expected ADDR[/PREFIX]:PORT"),
            ("10.0.0.5:0", "the port is a number from 1 to 65535"),
            ("10.0.0.5:65536", "the port is a number from 1 to 65535"),
            ("10.0.0.5:http", "the port is a number"),
            ("db.internal:5432", "not an IP address"),
            ("10.0.0.1/24:443", "bits set beyond its prefix length"),
            ("10.0.0.0/33:443", "at most 32"),
            ("[fd00::/129]:443", "at most 128"),
            ("fd00::1:443", "in brackets"),
            ("[fd00::1]443", "expected :PORT"),
            ("[fd00::1:443", "in brackets"),
            ("10.0.0.0/x:1", "prefix length is a number"),
        ] {
            let e = Rule::parse(spec).unwrap_err().to_string();
            assert!(e.contains(why), "{spec}: {e}");
            assert!(e.starts_with("--allow-connect "), "{e}");
        }
    }

    #[test]
    fn matching_is_by_network_and_port() {
        let e = Egress::parse(&["10.0.0.0/24:443", "192.0.2.7:*", "[fd00::/64]:5432"]).unwrap();
        assert_eq!(e.check(sa("10.0.0.200:443")), Ok(()));
        assert!(e.check(sa("10.0.1.1:443")).is_err());
        assert!(e.check(sa("10.0.0.1:444")).is_err());
        assert_eq!(e.check(sa("192.0.2.7:1")), Ok(()));
        assert_eq!(e.check(sa("[fd00::9]:5432")), Ok(()));
        assert!(e.check(sa("[fd01::9]:5432")).is_err());
        // The IPv4-mapped spelling of an address is that address: no way around a rule by it,
        // and no refusal of an allowed address written that way.
        assert_eq!(e.check(sa("[::ffff:10.0.0.3]:443")), Ok(()));
        assert!(e.check(sa("[::ffff:10.0.1.3]:443")).is_err());
        // An IPv4 rule never matches an IPv6 address with the same leading bits.
        let all4 = Egress::parse(&["0.0.0.0/0:*"]).unwrap();
        assert!(all4.check(sa("[fd00::1]:1")).is_err());
        // Loopback is the task's own namespace.
        let none = Egress::parse(&["none"]).unwrap();
        assert_eq!(none, Egress::default());
        assert!(
            Egress::parse(&["none", "10.0.0.1:1"])
                .unwrap_err()
                .to_string()
                .contains("give it alone")
        );
        assert_eq!(none.check(sa("127.0.0.1:9")), Ok(()));
        assert_eq!(none.check(sa("[::1]:9")), Ok(()));
        assert_eq!(none.check(sa("[::ffff:127.0.0.1]:9")), Ok(()));
        assert_eq!(none.check(sa("0.0.0.0:9")), Ok(()));
        assert_eq!(none.check(sa("[::]:9")), Ok(()));
        assert_eq!(
            none.check(sa("10.0.0.1:9")).unwrap_err(),
            "the sandbox allows no egress (only loopback)"
        );
        assert_eq!(
            e.check(sa("10.9.0.1:9")).unwrap_err(),
            "not in the sandbox's egress allow-list"
        );
    }

    fn v4(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        b.extend(port.to_be_bytes());
        b.extend(ip);
        b.extend([0u8; 8]);
        b
    }

    #[test]
    fn addresses_decode_as_the_kernel_reads_them() {
        assert_eq!(
            decode(libc::AF_INET, &v4([10, 0, 0, 1], 80)),
            Ok(Target::Inet(sa("10.0.0.1:80")))
        );
        // Short, wrong family, unspec.
        assert_eq!(
            decode(libc::AF_INET, &v4([10, 0, 0, 1], 80)[..15]),
            Err(libc::EINVAL)
        );
        let mut six = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        six.extend(443u16.to_be_bytes());
        six.extend([0u8; 4]);
        six.extend(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets());
        assert_eq!(decode(libc::AF_INET, &six), Err(libc::EAFNOSUPPORT));
        assert_eq!(
            decode(libc::AF_INET6, &six),
            Ok(Target::Inet(sa("[fd00::1]:443")))
        );
        assert_eq!(decode(libc::AF_INET6, &six[..23]), Err(libc::EINVAL));
        assert_eq!(
            decode(libc::AF_INET6, &v4([10, 0, 0, 1], 80)[..16]),
            Err(libc::EINVAL)
        );
        // An IPv4 sockaddr on an IPv6 TCP socket: refused, as tcp_v6_connect does.
        let mut padded = v4([10, 0, 0, 1], 80);
        padded.resize(28, 0);
        assert_eq!(decode(libc::AF_INET6, &padded), Err(libc::EAFNOSUPPORT));
        let unspec = (libc::AF_UNSPEC as u16).to_ne_bytes();
        assert_eq!(decode(libc::AF_INET, &unspec), Ok(Target::Unspec));
        assert_eq!(
            decode(libc::AF_UNIX, &v4([1, 2, 3, 4], 1)),
            Err(libc::EAFNOSUPPORT)
        );
    }
}
