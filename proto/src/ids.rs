//! Domain identifiers shared by every layer: node ids, mesh addresses, the mesh network, static
//! public keys and Noise session indices. Parsing happens once, here; the rest of Warren handles
//! these newtypes and never re-validates raw strings or bytes.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Identifier the coordinator gives a node when it registers. Stable for the node's lifetime and
/// never reused, so a removed node's id cannot be confused with a new one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A node's address inside the mesh (the address of its TUN interface).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MeshIp(pub Ipv4Addr);

impl fmt::Display for MeshIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The mesh's IPv4 network (`--network`), e.g. `100.80.0.0/16`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MeshNetwork {
    /// Network address with the host bits cleared.
    addr: Ipv4Addr,
    /// Prefix length, 8..=30 so that there is room for nodes and it is not the whole internet.
    prefix: u8,
}

/// Why a `--network` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetworkError {
    /// The value is not of the form `a.b.c.d/len`.
    #[error("network must look like 100.80.0.0/16, got {0:?}")]
    Syntax(String),
    /// The prefix is too short (too large a network) or too long (no room for nodes).
    #[error("network prefix must be between /8 and /30, got /{0}")]
    Prefix(u8),
    /// Host bits are set in the network address.
    #[error("{0} has host bits set; did you mean {1}?")]
    HostBits(String, String),
}

impl MeshNetwork {
    /// Builds a network, refusing host bits and unusable prefixes.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, NetworkError> {
        if !(8..=30).contains(&prefix) {
            return Err(NetworkError::Prefix(prefix));
        }
        let mask = Self::mask_of(prefix);
        let net = Ipv4Addr::from(u32::from(addr) & mask);
        if net != addr {
            return Err(NetworkError::HostBits(
                format!("{addr}/{prefix}"),
                format!("{net}/{prefix}"),
            ));
        }
        Ok(Self { addr, prefix })
    }

    fn mask_of(prefix: u8) -> u32 {
        u32::MAX << (32 - u32::from(prefix))
    }

    /// Network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_of(self.prefix) == u32::from(self.addr)
    }

    /// The `n`-th usable host address (1-based; 0 and the broadcast address are never handed out).
    pub fn host(&self, n: u32) -> Option<MeshIp> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        if n == 0 || u64::from(n) >= size - 1 {
            return None;
        }
        Some(MeshIp(Ipv4Addr::from(u32::from(self.addr) + n)))
    }

    /// Index of `ip` within the network (inverse of [`MeshNetwork::host`]).
    pub fn host_index(&self, ip: MeshIp) -> Option<u32> {
        self.contains(ip.0)
            .then(|| u32::from(ip.0) - u32::from(self.addr))
    }
}

impl Default for MeshNetwork {
    /// `100.80.0.0/16`: inside the shared address space of RFC 6598, which home LANs do not use,
    /// and away from 100.64.0.0/16 where other mesh VPNs sit.
    fn default() -> Self {
        Self {
            addr: Ipv4Addr::new(100, 80, 0, 0),
            prefix: 16,
        }
    }
}

impl fmt::Display for MeshNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for MeshNetwork {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || NetworkError::Syntax(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| syntax())?;
        let prefix: u8 = p.parse().map_err(|_| syntax())?;
        Self::new(addr, prefix)
    }
}

impl Serialize for MeshNetwork {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MeshNetwork {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A node's static X25519 public key; its identity in Noise handshakes. Shown as standard base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

/// A public key string that is not 32 bytes of base64.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("public key must be 32 bytes of base64")]
pub struct PublicKeyError;

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = PublicKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = B64.decode(s).map_err(|_| PublicKeyError)?;
        Ok(Self(bytes.try_into().map_err(|_| PublicKeyError)?))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A node's static X25519 private key. Never serialized by serde and never printed.
#[derive(Clone)]
pub struct PrivateKey(pub [u8; 32]);

impl PrivateKey {
    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// Builds a key from 32 bytes of caller-supplied randomness (the shell reads the OS RNG).
    pub fn from_random(bytes: [u8; 32]) -> Self {
        Self(x25519_dalek::StaticSecret::from(bytes).to_bytes())
    }

    /// X25519 Diffie-Hellman with a peer's public key.
    pub fn diffie_hellman(&self, peer: &PublicKey) -> [u8; 32] {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer.0))
            .to_bytes()
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// Index a receiver picked for one Noise session; transport packets carry it so the receiver finds
/// the session without trying keys (WireGuard's receiver index).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct SessionIndex(pub u32);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn network_parse_and_hosts() {
        let n: MeshNetwork = "10.9.0.0/24".parse().unwrap();
        assert_eq!(n.host(1), Some(MeshIp(Ipv4Addr::new(10, 9, 0, 1))));
        assert_eq!(n.host(254), Some(MeshIp(Ipv4Addr::new(10, 9, 0, 254))));
        assert_eq!(n.host(255), None);
        assert_eq!(n.host(0), None);
        assert_eq!(n.host_index(MeshIp(Ipv4Addr::new(10, 9, 0, 7))), Some(7));
        assert_eq!(n.host_index(MeshIp(Ipv4Addr::new(10, 9, 1, 7))), None);
        assert!(matches!(
            "10.9.0.1/24".parse::<MeshNetwork>(),
            Err(NetworkError::HostBits(..))
        ));
        assert!(matches!(
            "10.0.0.0/4".parse::<MeshNetwork>(),
            Err(NetworkError::Prefix(4))
        ));
        assert!(matches!(
            "nonsense".parse::<MeshNetwork>(),
            Err(NetworkError::Syntax(_))
        ));
    }

    #[test]
    fn public_key_round_trip_and_dh_agrees() {
        let a = PrivateKey::from_random([1; 32]);
        let b = PrivateKey::from_random([2; 32]);
        let pa = a.public_key();
        assert_eq!(pa.to_string().parse::<PublicKey>().unwrap(), pa);
        assert_eq!(a.diffie_hellman(&b.public_key()), b.diffie_hellman(&pa));
        assert!("AAAA".parse::<PublicKey>().is_err());
    }
}
