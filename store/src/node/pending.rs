//! A connection to the node arena socket that has not proven the token yet (steps 1–2 of
//! `node.rs`), read without blocking by the acceptor thread: no thread is spent on a peer
//! until it has proven the token.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use manta_auth as auth;

use super::granules::ClientId;

/// The first bytes of a client's request (step 1), before its nonce.
pub(super) const MAGIC: &[u8; 4] = b"MNOD";

/// Bytes of step 1: the magic and the client's nonce.
const REQUEST: usize = MAGIC.len() + auth::NONCE_LEN;

/// A client still proving the token.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) id: ClientId,
    pub(super) stream: UnixStream,
    pub(super) deadline: Instant,
    /// This server's nonce, once it answered the client's request.
    mine: Option<[u8; auth::NONCE_LEN]>,
    /// The client's request, then its proof, as read so far.
    buf: Vec<u8>,
    /// The client's nonce, once its request was read.
    theirs: Vec<u8>,
}

/// What a [`Pending::read`] came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Progress {
    /// Nothing more to read now; wait for readiness.
    More,
    /// The client's proof, with both nonces, to check.
    Proof {
        /// The client's nonce.
        theirs: Vec<u8>,
        /// This server's nonce.
        mine: [u8; auth::NONCE_LEN],
        /// The client's proof.
        proof: Vec<u8>,
    },
    /// The client must be refused (why).
    Refused(String),
}

impl Pending {
    /// A pending client on a non-blocking `stream`, to finish by `deadline`.
    pub(super) fn new(id: ClientId, stream: UnixStream, deadline: Instant) -> Self {
        Self {
            id,
            stream,
            deadline,
            mine: None,
            buf: Vec::new(),
            theirs: Vec::new(),
        }
    }

    /// Reads what the socket holds (never blocking): the request, then (after answering it
    /// with this server's nonce) the proof. Nothing but those fixed lengths is ever read.
    pub(super) fn read(&mut self) -> Progress {
        loop {
            let want = if self.mine.is_none() {
                REQUEST
            } else {
                auth::PROOF_LEN
            };
            if self.mine.is_none() && self.buf.len() >= MAGIC.len() && &self.buf[..4] != MAGIC {
                // Refused at its first bytes, not at its length or the deadline.
                return Progress::Refused("not a node arena request".into());
            }
            if self.buf.len() == want {
                let Some(mine) = self.mine else {
                    self.theirs = self.buf.split_off(MAGIC.len());
                    self.buf.clear();
                    match self.answer() {
                        Ok(()) => continue,
                        Err(why) => return Progress::Refused(why),
                    }
                };
                return Progress::Proof {
                    theirs: std::mem::take(&mut self.theirs),
                    mine,
                    proof: std::mem::take(&mut self.buf),
                };
            }
            let mut chunk = [0u8; REQUEST];
            let room = want - self.buf.len();
            match (&self.stream).read(&mut chunk[..room]) {
                Ok(0) => return Progress::Refused("closed before its proof was read".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::More,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Progress::Refused(format!("no proof read: {e}")),
            }
        }
    }

    /// Sends this server's nonce. A fresh socket's buffer always takes the 32 bytes; one that
    /// does not is refused rather than waited on.
    fn answer(&mut self) -> Result<(), String> {
        let mine = auth::nonce().map_err(|e| format!("no nonce: {e}"))?;
        match (&self.stream).write(&mine) {
            Ok(n) if n == mine.len() => {
                self.mine = Some(mine);
                Ok(())
            }
            Ok(_) | Err(_) => Err("could not answer its request".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair() -> (Pending, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        (Pending::new(1, a, deadline), b)
    }

    #[test]
    fn reads_a_request_and_a_proof_in_pieces() {
        let (mut p, mut peer) = pair();
        assert_eq!(p.read(), Progress::More);
        peer.write_all(b"MNO").unwrap();
        assert_eq!(p.read(), Progress::More);
        peer.write_all(b"D").unwrap();
        peer.write_all(&[4; 30]).unwrap();
        assert_eq!(p.read(), Progress::More);
        peer.write_all(&[4; 2]).unwrap();
        assert_eq!(p.read(), Progress::More, "answered, waiting for the proof");
        let mut nonce = [0u8; auth::NONCE_LEN];
        peer.read_exact(&mut nonce).unwrap();
        peer.write_all(&[9; 31]).unwrap();
        assert_eq!(p.read(), Progress::More);
        peer.write_all(&[9]).unwrap();
        assert_eq!(
            p.read(),
            Progress::Proof {
                theirs: vec![4; 32],
                mine: nonce,
                proof: vec![9; 32],
            }
        );
    }

    #[test]
    fn refuses_another_request_and_early_close() {
        let (mut p, mut peer) = pair();
        // The plaintext token of the protocol before: a length, then the token.
        peer.write_all(&5u32.to_le_bytes()).unwrap();
        peer.write_all(&[b's'; 32]).unwrap();
        assert!(matches!(p.read(), Progress::Refused(_)));
        let (mut p, peer) = pair();
        drop(peer);
        assert!(matches!(p.read(), Progress::Refused(_)));
    }
}
