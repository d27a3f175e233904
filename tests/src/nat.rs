//! The kinds of site a lab can build (RFC 4787 vocabulary) and their router rulesets.
//!
//! Lab layer. See DESIGN.md section 4. Every router has a WAN interface `wan` on the lab's
//! internet segment and a LAN bridge `lan`; the rulesets below are loaded with `nft -f`.

use std::fmt;
use std::str::FromStr;

use anyhow::bail;

/// How a site reaches the lab's internet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteKind {
    /// One node with a public address directly on the internet segment; no NAT.
    Open,
    /// Endpoint-independent, port-preserving mapping; address+port-dependent filtering.
    Eim,
    /// Endpoint-dependent mapping: a random port per new flow (`masquerade random`).
    Sym,
    /// Like `eim`, but UDP from the LAN is dropped (TCP still allowed).
    UdpBlock,
    /// Two nodes on the same LAN behind one `eim` router.
    Lan,
    /// `eim` without the input-hook drop: the conntrack trap of DESIGN.md section 4. A peer's
    /// probe that arrives before our own outbound packet gets a confirmed conntrack entry, and
    /// masquerade then maps our flow to that peer to a different (random) port.
    EimTrap,
}

impl SiteKind {
    /// All kinds, in documentation order.
    pub const ALL: [SiteKind; 6] = [
        SiteKind::Open,
        SiteKind::Eim,
        SiteKind::Sym,
        SiteKind::UdpBlock,
        SiteKind::Lan,
        SiteKind::EimTrap,
    ];

    /// How many node namespaces a site of this kind has.
    pub fn node_count(self) -> usize {
        match self {
            SiteKind::Lan => 2,
            _ => 1,
        }
    }

    /// The router's nftables ruleset, or `None` for `open` (no router).
    pub fn ruleset(self) -> Option<String> {
        let (masq, lan_udp) = match self {
            SiteKind::Open => return None,
            SiteKind::Eim | SiteKind::Lan | SiteKind::EimTrap => ("masquerade", ""),
            SiteKind::Sym => ("masquerade random", ""),
            SiteKind::UdpBlock => ("masquerade", "iifname \"lan\" meta l4proto udp drop\n"),
        };
        let input_drop = if self == SiteKind::EimTrap {
            "# No input drop: the conntrack trap (see SiteKind::EimTrap).\n"
        } else {
            "# Unsolicited inbound dies here, before conntrack confirms an entry for it (otherwise
    # masquerade would later avoid that port: see DESIGN.md section 4).
    iifname \"wan\" ct state new drop\n"
        };
        Some(format!(
            "flush ruleset
table ip nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan\" {masq}
  }}
}}
table ip filter {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    {lan_udp}ct state established,related accept
    iifname \"lan\" oifname \"wan\" accept
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    {input_drop}  }}
}}
"
        ))
    }
}

impl fmt::Display for SiteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SiteKind::Open => "open",
            SiteKind::Eim => "eim",
            SiteKind::Sym => "sym",
            SiteKind::UdpBlock => "udpblock",
            SiteKind::Lan => "lan",
            SiteKind::EimTrap => "eim-trap",
        })
    }
}

impl FromStr for SiteKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        for k in SiteKind::ALL {
            if k.to_string() == s {
                return Ok(k);
            }
        }
        bail!("unknown site kind {s:?} (one of open, eim, sym, udpblock, lan, eim-trap)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_rulesets_differ() {
        for k in SiteKind::ALL {
            assert_eq!(k.to_string().parse::<SiteKind>().ok(), Some(k));
        }
        assert!(SiteKind::Open.ruleset().is_none());
        let sym = SiteKind::Sym.ruleset().unwrap_or_default();
        assert!(sym.contains("masquerade random"));
        let block = SiteKind::UdpBlock.ruleset().unwrap_or_default();
        assert!(block.contains("meta l4proto udp drop"));
        let eim = SiteKind::Eim.ruleset().unwrap_or_default();
        assert!(!eim.contains("random"));
        assert!(eim.contains("ct state new drop"));
        let trap = SiteKind::EimTrap.ruleset().unwrap_or_default();
        assert!(!trap.contains("ct state new drop"));
    }
}
