//! Invite tokens: what `warren join TOKEN` needs to find and trust a coordinator and register.
//!
//! Text form: `warren1-` followed by unpadded base64url of
//! `payload || SHA-256("warren-invite" || payload)[..4]`, where `payload` is
//!
//! ```text
//! version u8 (=1) | fingerprint [32] | secret [32] | addr count u8 | addrs...
//! addr: kind u8 (4 = IPv4, 6 = IPv6, 0 = host name) | address bytes (4, 16, or len u8 + UTF-8) | port u16 BE
//! ```
//!
//! The checksum catches typos and truncation before anything goes on the wire; the fingerprint
//! pins the coordinator's self-signed certificate (no CA, no trust on first use); the secret is
//! what the coordinator redeems (it stores only its hash).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Text prefix of a version-1 token.
const PREFIX: &str = "warren1-";
/// Payload format version.
const VERSION: u8 = 1;
/// Checksum length in bytes.
const CHECKSUM_LEN: usize = 4;
/// At most this many coordinator addresses in a token.
const MAX_ADDRS: usize = 8;

/// Where a coordinator can be reached: an IP address or a DNS name, and its UDP port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CoordinatorAddr {
    /// A literal socket address.
    Ip(IpAddr, u16),
    /// A DNS name, resolved by the node when it connects.
    Host(String, u16),
}

impl fmt::Display for CoordinatorAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoordinatorAddr::Ip(IpAddr::V6(ip), port) => write!(f, "[{ip}]:{port}"),
            CoordinatorAddr::Ip(ip, port) => write!(f, "{ip}:{port}"),
            CoordinatorAddr::Host(h, port) => write!(f, "{h}:{port}"),
        }
    }
}

impl FromStr for CoordinatorAddr {
    type Err = TokenError;
    /// Parses `1.2.3.4:7443`, `[::1]:7443` or `vpn.example.com:7443`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
            return Ok(CoordinatorAddr::Ip(sa.ip(), sa.port()));
        }
        let bad = || TokenError::BadAddress(s.to_string());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid_host || port == 0 {
            return Err(bad());
        }
        Ok(CoordinatorAddr::Host(host.to_ascii_lowercase(), port))
    }
}

/// A parsed invite token.
#[derive(Clone, PartialEq, Eq)]
pub struct InviteToken {
    /// Addresses of the coordinator's QUIC (UDP) endpoint, tried in order.
    pub addrs: Vec<CoordinatorAddr>,
    /// SHA-256 of the coordinator certificate's DER encoding.
    pub fingerprint: [u8; 32],
    /// The secret the coordinator redeems.
    pub secret: [u8; 32],
}

impl fmt::Debug for InviteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InviteToken")
            .field("addrs", &self.addrs)
            .field("fingerprint", &hex::encode(self.fingerprint))
            .field("secret", &"..")
            .finish()
    }
}

/// Why a token string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The string does not start with `warren1-`.
    #[error("not a Warren invite token (it should start with \"warren1-\")")]
    Prefix,
    /// The body is not base64url.
    #[error("invite token contains characters that cannot be in a token")]
    Encoding,
    /// The checksum does not match: a typo or a truncated copy.
    #[error("invite token checksum does not match: it was mistyped or cut short")]
    Checksum,
    /// The payload version is not one this build understands.
    #[error("invite token version {0} is not supported by this warren")]
    Version(u8),
    /// The payload ends early or has bytes left over.
    #[error("invite token is malformed ({0})")]
    Malformed(&'static str),
    /// A coordinator address inside the token (or given to build one) is invalid.
    #[error("invalid coordinator address {0:?}")]
    BadAddress(String),
}

impl InviteToken {
    /// Serializes the binary payload (without checksum).
    fn payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(80);
        out.push(VERSION);
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(&self.secret);
        let addrs = &self.addrs[..self.addrs.len().min(MAX_ADDRS)];
        out.push(addrs.len() as u8);
        for a in addrs {
            match a {
                CoordinatorAddr::Ip(IpAddr::V4(ip), port) => {
                    out.push(4);
                    out.extend_from_slice(&ip.octets());
                    out.extend_from_slice(&port.to_be_bytes());
                }
                CoordinatorAddr::Ip(IpAddr::V6(ip), port) => {
                    out.push(6);
                    out.extend_from_slice(&ip.octets());
                    out.extend_from_slice(&port.to_be_bytes());
                }
                CoordinatorAddr::Host(h, port) => {
                    out.push(0);
                    let h = &h.as_bytes()[..h.len().min(255)];
                    out.push(h.len() as u8);
                    out.extend_from_slice(h);
                    out.extend_from_slice(&port.to_be_bytes());
                }
            }
        }
        out
    }

    fn checksum(payload: &[u8]) -> [u8; CHECKSUM_LEN] {
        let digest = Sha256::new()
            .chain_update(b"warren-invite")
            .chain_update(payload)
            .finalize();
        let mut out = [0; CHECKSUM_LEN];
        out.copy_from_slice(&digest[..CHECKSUM_LEN]);
        out
    }

    fn parse_payload(p: &[u8]) -> Result<Self, TokenError> {
        let mut r = Reader(p);
        let version = r.u8()?;
        if version != VERSION {
            return Err(TokenError::Version(version));
        }
        let fingerprint = r.array::<32>()?;
        let secret = r.array::<32>()?;
        let count = r.u8()? as usize;
        if count == 0 || count > MAX_ADDRS {
            return Err(TokenError::Malformed("coordinator address count"));
        }
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let addr = match r.u8()? {
                4 => {
                    let ip = Ipv4Addr::from(r.array::<4>()?);
                    CoordinatorAddr::Ip(ip.into(), r.u16()?)
                }
                6 => {
                    let ip = Ipv6Addr::from(r.array::<16>()?);
                    CoordinatorAddr::Ip(ip.into(), r.u16()?)
                }
                0 => {
                    let len = r.u8()? as usize;
                    let host = std::str::from_utf8(r.take(len)?)
                        .map_err(|_| TokenError::Malformed("host name is not UTF-8"))?;
                    let port = r.u16()?;
                    format!("{host}:{port}").parse()?
                }
                _ => return Err(TokenError::Malformed("unknown address kind")),
            };
            addrs.push(addr);
        }
        if !r.0.is_empty() {
            return Err(TokenError::Malformed("trailing bytes"));
        }
        Ok(Self {
            addrs,
            fingerprint,
            secret,
        })
    }
}

/// Cursor over the payload bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Malformed("token ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, TokenError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, TokenError> {
        Ok(u16::from_be_bytes(self.array::<2>()?))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

impl fmt::Display for InviteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = self.payload();
        let sum = Self::checksum(&bytes);
        bytes.extend_from_slice(&sum);
        write!(f, "{PREFIX}{}", B64.encode(bytes))
    }
}

impl FromStr for InviteToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s.trim().strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        let bytes = B64.decode(body).map_err(|_| TokenError::Encoding)?;
        if bytes.len() < CHECKSUM_LEN + 1 {
            return Err(TokenError::Checksum);
        }
        let (payload, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if Self::checksum(payload) != sum {
            return Err(TokenError::Checksum);
        }
        Self::parse_payload(payload)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> InviteToken {
        InviteToken {
            addrs: vec![
                "198.51.100.10:7443".parse().unwrap(),
                "[2001:db8::1]:7443".parse().unwrap(),
                "vpn.example.com:7443".parse().unwrap(),
            ],
            fingerprint: [7; 32],
            secret: [9; 32],
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let s = t.to_string();
        assert!(s.starts_with("warren1-"));
        assert_eq!(s.parse::<InviteToken>().unwrap(), t);
        // Surrounding whitespace from a copy-paste is tolerated.
        assert_eq!(format!("  {s}\n").parse::<InviteToken>().unwrap(), t);
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let s = sample().to_string();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in PREFIX.len()..s.len() {
            for &c in alphabet.iter().step_by(7) {
                let mut b = s.clone().into_bytes();
                if b[i] == c {
                    continue;
                }
                b[i] = c;
                let typo = String::from_utf8(b).unwrap();
                assert!(typo.parse::<InviteToken>().is_err(), "typo at {i} accepted");
            }
        }
    }

    #[test]
    fn truncation_and_garbage_are_typed_errors() {
        let s = sample().to_string();
        for cut in 0..s.len() {
            assert!(s[..cut].parse::<InviteToken>().is_err());
        }
        assert_eq!("hello".parse::<InviteToken>(), Err(TokenError::Prefix));
        assert_eq!(
            "warren1-!!!!".parse::<InviteToken>(),
            Err(TokenError::Encoding)
        );
        assert_eq!("warren1-".parse::<InviteToken>(), Err(TokenError::Checksum));
    }

    #[test]
    fn wrong_version_and_bad_payloads() {
        let mut p = sample().payload();
        p[0] = 2;
        let mut bytes = p.clone();
        bytes.extend_from_slice(&InviteToken::checksum(&p));
        let s = format!("{PREFIX}{}", B64.encode(&bytes));
        assert_eq!(s.parse::<InviteToken>(), Err(TokenError::Version(2)));

        let mut p = sample().payload();
        p.push(0xff);
        let mut bytes = p.clone();
        bytes.extend_from_slice(&InviteToken::checksum(&p));
        let s = format!("{PREFIX}{}", B64.encode(&bytes));
        assert!(matches!(
            s.parse::<InviteToken>(),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn coordinator_addr_parsing() {
        assert!("bad host:1".parse::<CoordinatorAddr>().is_err());
        assert!("host:0".parse::<CoordinatorAddr>().is_err());
        assert!("host".parse::<CoordinatorAddr>().is_err());
        assert_eq!(
            "Example.COM:80".parse::<CoordinatorAddr>().unwrap(),
            CoordinatorAddr::Host("example.com".into(), 80)
        );
    }
}
