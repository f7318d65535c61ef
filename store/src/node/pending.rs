//! A connection to the node arena socket that has not proven the token yet (steps 1–2 of
//! `node.rs`), read without blocking by the acceptor thread: no thread is spent on a peer
//! until it has proven the token.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::granules::ClientId;

/// Bytes of the length prefix.
const LEN: usize = 4;

/// A client still proving the token.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) id: ClientId,
    pub(super) stream: UnixStream,
    pub(super) deadline: Instant,
    /// The length prefix and the token bytes read so far.
    buf: Vec<u8>,
}

/// What a [`Pending::read`] came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Progress {
    /// Nothing more to read now; wait for readiness.
    More,
    /// The whole token.
    Token(Vec<u8>),
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
            buf: Vec::new(),
        }
    }

    /// Bytes wanted in all: the prefix, then the prefix and the token it announces.
    fn want(&self) -> usize {
        match self.buf.get(..LEN) {
            Some(p) => LEN + u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize,
            None => LEN,
        }
    }

    /// Reads what the socket holds (never blocking); tokens over `max_token` bytes are refused
    /// as soon as their length is read.
    pub(super) fn read(&mut self, max_token: usize) -> Progress {
        loop {
            let want = self.want();
            if self.buf.len() >= LEN && want - LEN > max_token {
                return Progress::Refused(format!("token of {} bytes is too long", want - LEN));
            }
            if self.buf.len() == want && self.buf.len() >= LEN {
                return Progress::Token(self.buf.split_off(LEN));
            }
            let mut chunk = [0u8; 512];
            let room = (want - self.buf.len()).min(chunk.len());
            match (&self.stream).read(&mut chunk[..room]) {
                Ok(0) => return Progress::Refused("closed before the token was read".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::More,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Progress::Refused(format!("no token read: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn pair() -> (Pending, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        (Pending::new(1, a, deadline), b)
    }

    #[test]
    fn reads_a_token_in_pieces() {
        let (mut p, mut peer) = pair();
        assert_eq!(p.read(64), Progress::More);
        peer.write_all(&5u32.to_le_bytes()[..3]).unwrap();
        assert_eq!(p.read(64), Progress::More);
        peer.write_all(&[0, b's', b'e']).unwrap();
        assert_eq!(p.read(64), Progress::More);
        peer.write_all(b"cret").unwrap();
        assert_eq!(p.read(64), Progress::Token(b"secre".to_vec()));
    }

    #[test]
    fn refuses_long_tokens_and_early_close() {
        let (mut p, mut peer) = pair();
        peer.write_all(&65u32.to_le_bytes()).unwrap();
        assert!(matches!(p.read(64), Progress::Refused(_)));
        let (mut p, peer) = pair();
        drop(peer);
        assert!(matches!(p.read(64), Progress::Refused(_)));
    }
}
