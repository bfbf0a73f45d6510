//! Tickets: the read capability of a file, as one token with no spaces.
//!
//! `dfs` followed by base32 (RFC 4648, lowercase, no padding) of
//! `u8 version (1) | key[32] | root CID (binary)`. The root CID alone is the
//! storage capability (enough to replicate, verify and pin); the key opens
//! the root's sealed part and, through it, the whole file.

use std::{fmt, str::FromStr};

use cid::Cid;
use data_encoding::BASE32_NOPAD;

use crate::{
    block::{self, DAG_CBOR},
    crypto::{KEY_LEN, Key},
    error::ParseError,
};

/// Every ticket starts with this. Must not change.
pub const TICKET_PREFIX: &str = "dfs";
/// Ticket format version. Must not change.
pub const TICKET_VERSION: u8 = 1;
/// Longest ticket body (after the prefix) a parser reads, in characters: a
/// version-1 ticket is 110.
pub const MAX_TICKET_BODY: usize = 256;

/// Characters after the prefix in a version-1 ticket: base32 of 1 + 32 +
/// 36 bytes (a CIDv1 with a SHA-256 multihash).
const V1_BODY: usize = 111;

/// What follows the ticket prefix, matched in any case.
fn strip_prefix(s: &str) -> Option<&str> {
    let (prefix, body) = s.split_at_checked(TICKET_PREFIX.len())?;
    prefix.eq_ignore_ascii_case(TICKET_PREFIX).then_some(body)
}

/// A root CID and the key of its sealed part.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Ticket {
    pub root: Cid,
    pub key: Key,
}

impl Ticket {
    pub fn new(root: Cid, key: Key) -> Self {
        Self { root, key }
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = Vec::with_capacity(1 + KEY_LEN + 40);
        bytes.push(TICKET_VERSION);
        bytes.extend_from_slice(&self.key);
        bytes.extend_from_slice(&self.root.to_bytes());
        write!(f, "{TICKET_PREFIX}{}", BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is a capability: keep it out of logs.
        write!(f, "Ticket({}, key: ..)", self.root)
    }
}

impl FromStr for Ticket {
    type Err = ParseError;

    /// Case does not matter: the prefix and base32 read the same either
    /// way (a ticket read aloud or typed in capitals still works).
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let body = strip_prefix(s.trim()).ok_or(ParseError::TicketPrefix(TICKET_PREFIX))?;
        if body.len() > MAX_TICKET_BODY {
            return Err(ParseError::TicketEncoding("too long".into()));
        }
        // A version-1 ticket of another length was cut or mistyped: say so,
        // rather than what its bytes then fail at.
        let length = || {
            let (n, want) = (body.len(), V1_BODY);
            (n != want).then(|| {
                let (off, way) = if n > want { (n - want, "more") } else { (want - n, "fewer") };
                format!(
                    "{off} character{} {way} than a ticket has ({} with `{TICKET_PREFIX}`): was it \
                     cut or mistyped?",
                    if off == 1 { "" } else { "s" },
                    want + TICKET_PREFIX.len()
                )
            })
        };
        let bytes = BASE32_NOPAD.decode(body.to_ascii_uppercase().as_bytes()).map_err(|e| {
            ParseError::TicketEncoding(length().unwrap_or_else(|| format!("bad base32: {e}")))
        })?;
        let (&version, rest) =
            bytes.split_first().ok_or_else(|| ParseError::TicketEncoding("empty".into()))?;
        if version != TICKET_VERSION {
            return Err(ParseError::TicketVersion(version));
        }
        if let Some(wrong) = length() {
            return Err(ParseError::TicketEncoding(wrong));
        }
        let (key, cid) = rest
            .split_at_checked(KEY_LEN)
            .ok_or_else(|| ParseError::TicketEncoding("too short".into()))?;
        let root = block::cid_from_bytes(cid)?;
        if root.codec() != DAG_CBOR {
            return Err(ParseError::UnsupportedCid {
                cid: root.to_string(),
                reason: "a ticket's root must be a dag-cbor structure block".into(),
            });
        }
        Ok(Ticket { root, key: key.try_into().expect("split at KEY_LEN") })
    }
}

/// A ticket, or a bare root CID (the storage capability), as a user may give
/// to `delete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketOrCid {
    Ticket(Ticket),
    Cid(Cid),
}

impl TicketOrCid {
    pub fn root(&self) -> Cid {
        match self {
            TicketOrCid::Ticket(t) => t.root,
            TicketOrCid::Cid(c) => *c,
        }
    }
}

impl FromStr for TicketOrCid {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let s = s.trim();
        if strip_prefix(s).is_some() {
            s.parse().map(TicketOrCid::Ticket)
        } else {
            block::parse_cid(s).map(TicketOrCid::Cid).map_err(|e| match e {
                // Neither: most likely a ticket cut at its start.
                ParseError::Cid { input, .. } => ParseError::TicketEncoding(format!(
                    "`{input}` is neither a ticket (they start with `{TICKET_PREFIX}`) nor a \
                     root CID (bafy...)"
                )),
                e => e,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn root(seed: &[u8]) -> Cid {
        block::cid_of(DAG_CBOR, seed)
    }

    proptest! {
        #[test]
        fn tickets_round_trip(seed in proptest::collection::vec(any::<u8>(), 0..64), key in any::<[u8; 32]>()) {
            let t = Ticket::new(root(&seed), key);
            let s = t.to_string();
            prop_assert!(s.starts_with(TICKET_PREFIX));
            prop_assert!(s.chars().all(|c| c.is_ascii_alphanumeric()));
            prop_assert_eq!(s.parse::<Ticket>().unwrap(), t);
        }

        #[test]
        fn garbage_never_panics(s in ".{0,200}") {
            let _ = s.parse::<Ticket>();
            let _ = s.parse::<TicketOrCid>();
        }

        #[test]
        fn any_single_character_change_is_detected_or_harmless(pos in 3usize..100, c in "[a-z2-7]") {
            let t = Ticket::new(root(b"x"), [1; 32]);
            let mut s = t.to_string();
            let pos = pos.min(s.len() - 1);
            s.replace_range(pos..pos + 1, &c);
            if let Ok(parsed) = s.parse::<Ticket>() {
                // base32's last character may carry unused bits; otherwise a
                // change must change the ticket.
                prop_assert!(parsed != t || s == t.to_string() || pos == s.len() - 1);
            }
        }
    }

    #[test]
    fn malformed_tickets_give_clear_errors() {
        let good = Ticket::new(root(b"x"), [1; 32]).to_string();
        assert_eq!("xyz".parse::<Ticket>(), Err(ParseError::TicketPrefix(TICKET_PREFIX)));
        assert!(matches!("dfs!!!".parse::<Ticket>(), Err(ParseError::TicketEncoding(_))));
        assert!(matches!(good[..20].parse::<Ticket>(), Err(ParseError::TicketEncoding(_))));
        let raw = Ticket::new(block::cid_of(block::RAW, b"x"), [1; 32]).to_string();
        assert!(matches!(raw.parse::<Ticket>(), Err(ParseError::UnsupportedCid { .. })));
        let msg = "dfs!!!".parse::<Ticket>().unwrap_err().to_string();
        assert!(msg.starts_with("malformed ticket"), "{msg}");
        // One character too many, or too few: said as such.
        let msg = format!("{good}a").parse::<Ticket>().unwrap_err().to_string();
        assert!(msg.contains("1 character more than a ticket has (114"), "{msg}");
        let msg = good[..good.len() - 2].parse::<Ticket>().unwrap_err().to_string();
        assert!(msg.contains("2 characters fewer"), "{msg}");
    }

    #[test]
    fn tickets_are_read_in_any_case() {
        let good = Ticket::new(root(b"x"), [1; 32]).to_string();
        assert_eq!(good.len(), V1_BODY + TICKET_PREFIX.len());
        assert_eq!(good.to_ascii_uppercase().parse::<Ticket>(), good.parse::<Ticket>());
        let either = good.to_ascii_uppercase().parse::<TicketOrCid>().unwrap();
        assert_eq!(either, TicketOrCid::Ticket(good.parse().unwrap()));
    }
}
