//! Proof of the cluster token by both ends of a connection, without sending it: the one
//! door every handshake of Manta goes through (the transport's connections, its shared-memory
//! rendezvous, arena attaches, the node arena's socket and collective meshes).
//!
//! Each side draws a fresh 32-byte nonce; the connector proves first, with
//! HMAC-SHA256(token, "manta connector" ‖ connector nonce ‖ listener nonce), and the
//! listener, only once that proof holds, answers with the same MAC under the label
//! "manta listener". So:
//!
//! - an impostor listener (a local user who took a port a cluster peer used to hold) learns no
//!   token: it gets one MAC over nonces, and cannot complete the handshake, because it cannot
//!   make the listener's proof;
//! - a connector without the token gets nothing from a real listener but a challenge nonce;
//! - a proof cannot be replayed: every handshake covers two fresh nonces, and the labels keep a
//!   connector's proof from passing as a listener's (or the reverse).
//!
//! A MAC given to a peer that turns out not to hold the token lets it guess the token offline;
//! the tokens Manta makes are 128 random bits, which no guessing reaches.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Length of each side's nonce.
pub const NONCE_LEN: usize = 32;

/// Length of a proof (an HMAC-SHA256 tag).
pub const PROOF_LEN: usize = 32;

/// Which end of the connection makes a proof.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    /// The side that dialled; it proves first.
    Connector,
    /// The side that accepted; it proves once the connector's proof holds.
    Listener,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Connector => b"manta connector",
            Role::Listener => b"manta listener",
        }
    }
}

/// A fresh random nonce from the OS.
pub fn nonce() -> std::io::Result<[u8; NONCE_LEN]> {
    let mut n = [0; NONCE_LEN];
    getrandom::fill(&mut n).map_err(std::io::Error::other)?;
    Ok(n)
}

fn mac(token: &[u8], role: Role, connector: &[u8], listener: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length (a long one is hashed first).
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(token)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(role.label());
    mac.update(&[0]);
    mac.update(connector);
    mac.update(listener);
    mac
}

/// `role`'s proof of `token` over the two nonces.
pub fn prove(token: &[u8], role: Role, connector: &[u8], listener: &[u8]) -> Vec<u8> {
    mac(token, role, connector, listener)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// Whether `proof` is `role`'s proof of `token` over the two nonces (compared in constant
/// time).
pub fn verify(token: &[u8], role: Role, connector: &[u8], listener: &[u8], proof: &[u8]) -> bool {
    proof.len() == PROOF_LEN
        && mac(token, role, connector, listener)
            .verify_slice(proof)
            .is_ok()
}

/// A value derived from `key` for `context` (HMAC-SHA256 under the label "manta derive"):
/// the same on every process that holds `key`, unguessable to one that does not, and telling
/// nothing of `key` or of the values for other contexts.
pub fn derive(key: &[u8], context: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(b"manta derive");
    mac.update(&[0]);
    mac.update(context);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_holds_for_its_token_role_and_nonces_only() {
        let (c, l) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(c, l, "nonces are fresh");
        let p = prove(b"token", Role::Connector, &c, &l);
        assert_eq!(p.len(), PROOF_LEN);
        assert!(verify(b"token", Role::Connector, &c, &l, &p));
        assert!(
            !verify(b"tokeN", Role::Connector, &c, &l, &p),
            "another token"
        );
        assert!(
            !verify(b"token", Role::Listener, &c, &l, &p),
            "another role"
        );
        assert!(
            !verify(b"token", Role::Connector, &l, &c, &p),
            "nonces swapped"
        );
        let other = nonce().unwrap();
        assert!(
            !verify(b"token", Role::Connector, &c, &other, &p),
            "a replay"
        );
        assert!(
            !verify(b"token", Role::Connector, &c, &l, &p[..31]),
            "truncated"
        );
        assert!(!verify(b"token", Role::Connector, &c, &l, &[]), "empty");
    }

    #[test]
    fn derived_values_depend_on_key_and_context() {
        let a = derive(b"secret", b"job 1");
        assert_eq!(a, derive(b"secret", b"job 1"), "deterministic");
        assert_ne!(a, derive(b"secret", b"job 2"));
        assert_ne!(a, derive(b"secreT", b"job 1"));
        assert_ne!(a.to_vec(), prove(b"secret", Role::Connector, b"job 1", b""));
    }
}
