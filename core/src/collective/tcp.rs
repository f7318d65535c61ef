//! The TCP backend: a full mesh of token-proved connections, ring algorithms for large
//! messages and recursive doubling for small ones.
//!
//! Each pair of members shares one connection; the higher rank connects to the lower with
//! the group's nonce, its rank and a fresh nonce of its own; the lower answers its own nonce;
//! the higher proves the cluster's token with a MAC over both greetings
//! (`manta_transport::auth`), checked in constant time, with a bound on size and time,
//! before the listener keeps the connection; the listener then proves the token in turn. The
//! token never crosses the connection. Every message is a frame: a 48-byte header (magic, flags, the operation's
//! header, the collective's sequence number, the payload's length) and the payload, read
//! straight into its destination or, for reductions, into a small scratch piece reduced into
//! the destination as it arrives (pipelined with the transfer).
//!
//! An allreduce of 1 MiB or more per member is one pipeline: every step's segment goes in
//! chunks of 256 KiB, the chunks of all steps share each connection in one interleaved
//! order, a thread of its own sends while the caller receives and reduces, and a chunk is sent
//! on as soon as the chunk it depends on is in (a reduced chunk leaves while still in cache;
//! no step waits for the whole of the one before). Out of place, the input is reduced into
//! the output piece by piece, never copied into it whole.
//!
//! Sockets are non-blocking; one loop moves a send and a receive at once (`poll` when neither
//! can progress), bounded by the collective timeout. A closed connection names its member.
//! On a failure this member tells its peers why (an abort frame where its stream is at a
//! frame boundary) and shuts its connections down, so every member waiting on it fails too.

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use manta_transport::auth::{self, Role};

use crate::sync::{AtomicBool, AtomicUsize, Ordering};

use super::element::Reducer;
use super::shared::Settings;
use super::{Backend, Fault, Header};

const HELLO_MAGIC: &[u8; 8] = b"MNTCOLL2";
/// A greeting: the magic, the group's nonce, rank, world and the connector's nonce.
const HELLO_LEN: usize = 24 + auth::NONCE_LEN;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const FRAME_MAGIC: u32 = 0x4c4f_434d; // "MCOL"
const HDR_LEN: usize = 48;
const FLAG_ABORT: u32 = 1;
const ABORT_MISMATCH: u64 = 1;
const ABORT_FAILED: u64 = 2;
/// Messages up to this size use recursive doubling (power-of-two groups).
const SMALL: usize = 64 << 10;
/// Scratch piece into which reduced data is received.
const PIECE: usize = 256 << 10;
/// Broadcast pipeline piece.
const BCAST_PIECE: usize = 1 << 20;
/// A transfer that sends and receives at least this much sends from a thread of its own, so
/// the kernel copies its bytes out while this thread receives (and reduces) on another core.
const THREADED: usize = 1 << 20;
/// Allreduces of at least this many bytes per member run as one pipeline (see
/// [`TcpBackend::allreduce_pipelined`]).
const PIPELINED: usize = 1 << 20;
/// A pipelined allreduce's frames carry at most this many bytes of a segment.
const CHUNK: usize = 256 << 10;
/// How many chunks each step of a pipelined allreduce runs ahead of the next in the order of
/// frames on a connection.
const LAG: usize = 2;

/// A bound listener, published before the group knows its backend.
pub(crate) struct TcpListen {
    listener: TcpListener,
    address: String,
}

impl TcpListen {
    pub(crate) fn bind(host: &str) -> Result<TcpListen, Fault> {
        let listener = TcpListener::bind((host, 0))
            .map_err(|e| Fault::Os(format!("binding a collective listener on {host}: {e}")))?;
        let address = listener
            .local_addr()
            .map_err(|e| Fault::Os(format!("collective listener address: {e}")))?
            .to_string();
        Ok(TcpListen { listener, address })
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }
}

/// A member of a TCP group.
pub(crate) struct TcpBackend {
    rank: usize,
    world: usize,
    conns: Vec<Option<TcpStream>>,
    /// Bytes of a frame a failed transfer left unsent, per peer (an abort frame may follow
    /// only once they are padded out).
    unsent: Vec<usize>,
    timeout: Duration,
    seq: u64,
    /// Operations among a subset of the members (hierarchical groups' leaders).
    sub_seq: u64,
    left: bool,
    /// The member at fault in this member's failure, passed on in its abort frames.
    culprit: Option<usize>,
    /// Reductions' receive piece, kept between collectives (see [`TcpBackend::scratch`]).
    scratch: Vec<u64>,
}

fn peer_fault(rank: usize, what: &str, e: impl std::fmt::Display) -> Fault {
    Fault::Peer {
        rank,
        message: format!("{what} rank {rank}: {e}"),
    }
}

impl TcpBackend {
    /// Connects the mesh: to every lower rank, and accepts every higher one.
    pub(crate) fn connect(
        listen: TcpListen,
        rank: usize,
        addrs: &[String],
        nonce: u64,
        token: &[u8],
        deadline: Instant,
        settings: &Settings,
    ) -> Result<TcpBackend, Fault> {
        let world = addrs.len();
        let mut conns: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
        for (r, addr) in addrs.iter().enumerate().take(rank) {
            let sockaddr: std::net::SocketAddr = addr
                .parse()
                .map_err(|e| peer_fault(r, &format!("the address {addr:?} of"), e))?;
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let mut s = TcpStream::connect_timeout(&sockaddr, left)
                .map_err(|e| peer_fault(r, "connecting to", e))?;
            s.set_nodelay(true)
                .map_err(|e| peer_fault(r, "configuring the connection to", e))?;
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            s.set_read_timeout(Some(wait))
                .map_err(|e| peer_fault(r, "configuring", e))?;
            greet(&mut s, r, nonce, rank, world, token)?;
            conns[r] = Some(s);
        }
        let listener = listen.listener;
        listener
            .set_nonblocking(true)
            .map_err(|e| Fault::Os(format!("collective listener: {e}")))?;
        while let Some(missing) = (rank + 1..world).find(|&r| conns[r].is_none()) {
            let (s, from) = match listener.accept() {
                Ok(x) => x,
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    if Instant::now() >= deadline {
                        return Err(Fault::Timeout {
                            rank: missing,
                            waited: settings.timeout,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => return Err(Fault::Os(format!("accepting a collective member: {e}"))),
            };
            match accept_hello(s, nonce, world, token) {
                Ok((r, s)) if r > rank && conns[r].is_none() => conns[r] = Some(s),
                Ok((r, _)) => {
                    tracing::warn!(%from, rank = r, "collective: refused a duplicate or misdirected member")
                }
                Err(e) => tracing::warn!(%from, error = %e, "collective: refused a connection"),
            }
        }
        for (r, c) in conns.iter().enumerate() {
            if let Some(c) = c {
                c.set_nonblocking(true)
                    .map_err(|e| peer_fault(r, "configuring the connection to", e))?;
            }
        }
        Ok(TcpBackend {
            rank,
            world,
            conns,
            unsent: vec![0; world],
            timeout: settings.timeout,
            seq: 0,
            sub_seq: 0,
            left: false,
            culprit: None,
            scratch: Vec::new(),
        })
    }

    fn conn(&self, r: usize) -> Result<&TcpStream, Fault> {
        self.conns[r].as_ref().ok_or_else(|| Fault::Peer {
            rank: r,
            message: format!("no connection to rank {r}"),
        })
    }

    fn frame(&self, h: &Header, seq: u64, len: usize) -> [u8; HDR_LEN] {
        let mut f = [0u8; HDR_LEN];
        let [a, b] = h.pack();
        f[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        f[8..16].copy_from_slice(&a.to_le_bytes());
        f[16..24].copy_from_slice(&b.to_le_bytes());
        f[24..32].copy_from_slice(&seq.to_le_bytes());
        f[32..40].copy_from_slice(&(len as u64).to_le_bytes());
        f
    }

    /// Checks a received frame header against what this member expects.
    fn check_frame(
        &self,
        peer: usize,
        f: &[u8; HDR_LEN],
        h: &Header,
        seq: u64,
        len: usize,
    ) -> Result<(), Fault> {
        let word = |i: usize| u64::from_le_bytes(f[i..i + 8].try_into().unwrap_or([0; 8]));
        let magic = u32::from_le_bytes(f[0..4].try_into().unwrap_or([0; 4]));
        let flags = u32::from_le_bytes(f[4..8].try_into().unwrap_or([0; 4]));
        if magic != FRAME_MAGIC {
            return Err(peer_fault(peer, "a garbled message from", "bad magic"));
        }
        if flags & FLAG_ABORT != 0 {
            return Err(match word(8) {
                ABORT_MISMATCH => Fault::Mismatch(format!(
                    "rank {peer} found the members' arguments mismatched"
                )),
                _ => {
                    let culprit = word(16) as usize;
                    if culprit == peer || culprit >= self.world {
                        Fault::Peer {
                            rank: peer,
                            message: format!(
                                "rank {peer} left the group (its communicator failed or was \
                                 dropped)"
                            ),
                        }
                    } else {
                        Fault::Peer {
                            rank: culprit,
                            message: format!(
                                "rank {culprit} failed or left the group (reported by rank \
                                 {peer})"
                            ),
                        }
                    }
                }
            });
        }
        let theirs = Header::unpack([word(8), word(16)]);
        if theirs != *h {
            return Err(Fault::Mismatch(format!(
                "rank {} called {h} but rank {peer} called {theirs}",
                self.rank
            )));
        }
        if word(24) != seq || word(32) != len as u64 {
            return Err(Fault::Mismatch(format!(
                "rank {} and rank {peer} are out of step: operation {seq} of {len} bytes here, \
                 {} of {} bytes there",
                self.rank,
                word(24),
                word(32)
            )));
        }
        Ok(())
    }

    /// Sends `send` (peer, payload) and receives into `recv` (peer, sink) at once.
    fn transfer(
        &mut self,
        h: &Header,
        seq: u64,
        send: Option<(usize, &[u8])>,
        recv: Option<(usize, Sink<'_>)>,
    ) -> Result<(), Fault> {
        let mut sent = 0;
        let result = self.transfer_inner(h, seq, send, recv, &mut sent);
        if let Err(Fault::Peer { rank, .. } | Fault::Timeout { rank, .. }) = &result {
            self.culprit.get_or_insert(*rank);
        }
        if let (Err(_), Some((peer, body))) = (&result, send)
            && sent > 0
            && sent < HDR_LEN + body.len()
        {
            // This stream is left mid-frame.
            self.unsent[peer] = HDR_LEN + body.len() - sent;
        }
        result
    }

    fn transfer_inner(
        &self,
        h: &Header,
        seq: u64,
        send: Option<(usize, &[u8])>,
        recv: Option<(usize, Sink<'_>)>,
        sent: &mut usize,
    ) -> Result<(), Fault> {
        if let Some((peer, body)) = send
            && body.len() >= THREADED
            && recv.as_ref().is_some_and(|(_, s)| s.len() >= THREADED)
        {
            return self.transfer_threaded(h, seq, (peer, body), recv, sent);
        }
        let start = Instant::now();
        let deadline = start + self.timeout;
        let out_hdr = send.map(|(_, body)| self.frame(h, seq, body.len()));
        let send_total = send.map_or(0, |(_, b)| HDR_LEN + b.len());
        let (recv_peer, mut sink) = match recv {
            Some((p, s)) => (Some(p), Some(s)),
            None => (None, None),
        };
        let recv_total = sink.as_ref().map_or(0, |s| s.len());
        let mut in_hdr = [0u8; HDR_LEN];
        let mut hdr_got = 0usize;
        let mut got = 0usize;
        let mut recv_done = recv_peer.is_none();
        loop {
            let mut progressed = false;
            if let (Some((peer, body)), Some(hdr)) = (send, &out_hdr)
                && *sent < send_total
            {
                let mut conn = self.conn(peer)?;
                let r = if *sent < HDR_LEN {
                    conn.write_vectored(&[IoSlice::new(&hdr[*sent..]), IoSlice::new(body)])
                } else {
                    conn.write(&body[*sent - HDR_LEN..])
                };
                match r {
                    Ok(0) => return Err(peer_fault(peer, "sending to", "connection closed")),
                    Ok(k) => {
                        *sent += k;
                        progressed = true;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(e) => return Err(peer_fault(peer, "sending to", e)),
                }
            }
            if let Some(peer) = recv_peer
                && !recv_done
            {
                let mut conn = self.conn(peer)?;
                let r = if hdr_got < HDR_LEN {
                    conn.read(&mut in_hdr[hdr_got..])
                } else {
                    sink.as_mut().map_or(Ok(0), |s| s.read_from(&mut conn, got))
                };
                match r {
                    Ok(0) if hdr_got < HDR_LEN || got < recv_total => {
                        return Err(Fault::Peer {
                            rank: peer,
                            message: format!(
                                "rank {peer} closed its connection (it died, failed or left the group)"
                            ),
                        });
                    }
                    Ok(k) => {
                        progressed = true;
                        if hdr_got < HDR_LEN {
                            hdr_got += k;
                            if hdr_got == HDR_LEN {
                                self.check_frame(peer, &in_hdr, h, seq, recv_total)?;
                            }
                        } else {
                            got += k;
                        }
                        if hdr_got == HDR_LEN && got == recv_total {
                            recv_done = true;
                        }
                    }
                    Err(e) if would_block(&e) => {}
                    Err(e) => return Err(peer_fault(peer, "receiving from", e)),
                }
            }
            if *sent == send_total && recv_done {
                return Ok(());
            }
            if progressed {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                let rank = match recv_peer {
                    Some(p) if !recv_done => p,
                    _ => send.map_or(self.rank, |(p, _)| p),
                };
                return Err(Fault::Timeout {
                    rank,
                    waited: now - start,
                });
            }
            let mut fds: Vec<libc::pollfd> = Vec::with_capacity(2);
            if let Some((peer, _)) = send
                && *sent < send_total
            {
                fds.push(libc::pollfd {
                    fd: self.conn(peer)?.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                });
            }
            if let Some(peer) = recv_peer
                && !recv_done
            {
                let fd = self.conn(peer)?.as_raw_fd();
                match fds.iter_mut().find(|p| p.fd == fd) {
                    Some(p) => p.events |= libc::POLLIN,
                    None => fds.push(libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    }),
                }
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the call's duration.
            unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    wait.as_millis().max(1) as libc::c_int,
                )
            };
        }
    }

    /// A large send and receive at once: the send on a scoped thread of its own, the receive
    /// here. Either side's failure stops the other within one poll (100 ms); the sender's
    /// bytes count in `sent` as the single-threaded loop's do.
    fn transfer_threaded(
        &self,
        h: &Header,
        seq: u64,
        (peer, body): (usize, &[u8]),
        recv: Option<(usize, Sink<'_>)>,
        sent: &mut usize,
    ) -> Result<(), Fault> {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let hdr = self.frame(h, seq, body.len());
        let conn = self.conn(peer)?;
        let stop = AtomicBool::new(false);
        let (received, (sending, n)) = std::thread::scope(|scope| {
            let sender = scope.spawn(|| {
                let mut n = 0;
                let r = send_all(conn, peer, &hdr, body, (start, deadline), &mut n, &stop);
                if r.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                (r, n)
            });
            let mut none = 0;
            let received = self.transfer_inner(h, seq, None, recv, &mut none);
            if received.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            let sending = sender.join().unwrap_or_else(|_| {
                (
                    Err(Fault::Os("a collective's sender thread panicked".into())),
                    0,
                )
            });
            (received, sending)
        });
        *sent = n;
        received.and(sending)
    }

    /// The scratch piece reductions receive into (allocated once, and touched once, per
    /// member), taken out while a collective uses it.
    fn scratch(&mut self) -> Vec<u64> {
        let s = std::mem::take(&mut self.scratch);
        if s.len() * 8 >= PIECE {
            s
        } else {
            aligned(PIECE)
        }
    }

    fn prev(&self, k: usize) -> usize {
        (self.rank + self.world * 2 - k % self.world) % self.world
    }

    /// Allreduce among all members: of `input` into `out`, or in place in `out`.
    fn allreduce_bytes(
        &mut self,
        h: &Header,
        input: Option<&[u8]>,
        out: &mut [u8],
        red: &Reducer,
    ) -> Result<(), Fault> {
        self.seq += 1;
        let seq = self.seq;
        let all: Vec<usize> = (0..self.world).collect();
        self.allreduce_ring(h, seq, input, out, red, &all)
    }

    /// Allreduce among the members `ring` (this member among them), of `input` into `out`
    /// or (`None`) in place. Out of place, the input is never copied whole into `out`: the
    /// first step sends from it, and each received piece is reduced with the input's piece
    /// into `out` while both are in cache.
    fn allreduce_ring(
        &mut self,
        h: &Header,
        seq: u64,
        input: Option<&[u8]>,
        out: &mut [u8],
        red: &Reducer,
        ring: &[usize],
    ) -> Result<(), Fault> {
        let w = ring.len();
        let pos = position(ring, self.rank)?;
        if let Some(input) = input
            && (w == 1 || (out.len() <= SMALL && w.is_power_of_two()))
        {
            out.copy_from_slice(input);
        }
        if w == 1 {
            return Ok(());
        }
        if out.len() <= SMALL && w.is_power_of_two() {
            let mut tmp = aligned(out.len());
            let mut mask = 1;
            while mask < w {
                let partner = ring[pos ^ mask];
                let t = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut tmp)[..out.len()];
                self.transfer(h, seq, Some((partner, out)), Some((partner, Sink::Copy(t))))?;
                red.apply(out, t);
                mask <<= 1;
            }
            return Ok(());
        }
        if out.len() >= PIPELINED {
            return self.allreduce_pipelined(h, seq, input, out, red, ring, pos);
        }
        let n = out.len();
        let seg = |i: usize| segment(n, red.elem, w, i);
        let back = |k: usize| (pos + w * 2 - k % w) % w;
        let next = ring[(pos + 1) % w];
        let prev = ring[back(1)];
        let mut scratch = self.scratch();
        let mut result = Ok(());
        for s in 0..w - 1 {
            let (sa, sb) = split2(out, seg(back(s + 1)), seg(back(s + 2)));
            // The first step sends and reduces the input's own pieces; later ones send what
            // the step before reduced into `out`.
            let (sa, base) = match input {
                Some(input) if s == 0 => (&input[seg(back(1))], Some(&input[seg(back(2))])),
                Some(input) => (sa, Some(&input[seg(back(s + 2))])),
                None => (sa, None),
            };
            let sink = Sink::Reduce {
                acc: sb,
                base,
                scratch: bytemuck::cast_slice_mut(&mut scratch),
                red,
                done: 0,
            };
            result = self.transfer(h, seq, Some((next, sa)), Some((prev, sink)));
            if result.is_err() {
                break;
            }
        }
        self.scratch = scratch;
        result?;
        for s in 0..w - 1 {
            let (sa, sb) = split2(out, seg(back(s)), seg(back(s + 1)));
            self.transfer(h, seq, Some((next, sa)), Some((prev, Sink::Copy(sb))))?;
        }
        Ok(())
    }

    /// A large ring allreduce as one pipeline: each step's segment travels in frames of
    /// [`CHUNK`] bytes, and frames of all `2(w-1)` steps share each connection in one order
    /// (chunk `c` of step `s` at `c + s·LAG`), so that a chunk reduced in one step is sent on
    /// in the next while it is still in cache, and no step waits for the whole of the one
    /// before it. A thread of its own sends; this one receives and reduces. The sender sends
    /// chunk `c` of step `s` once chunk `c` of step `s - 1` is in (reduced, or copied); the
    /// receiver writes chunk `c` of allgather step `t` only once chunk `c` of reduce-scatter
    /// step `t` (the same bytes of `out`) is sent. So the two threads never touch the same
    /// bytes of `out` at once, whatever the peers send.
    #[allow(clippy::too_many_arguments)]
    fn allreduce_pipelined(
        &mut self,
        h: &Header,
        seq: u64,
        input: Option<&[u8]>,
        out: &mut [u8],
        red: &Reducer,
        ring: &[usize],
        pos: usize,
    ) -> Result<(), Fault> {
        let w = ring.len();
        let n = out.len();
        let steps = 2 * (w - 1);
        let seg = |i: usize| segment(n, red.elem, w, i);
        let back = |k: usize| (pos + w * 2 - k % w) % w;
        let next = ring[(pos + 1) % w];
        let prev = ring[back(1)];
        let chunks = (0..w)
            .map(|i| seg(i).len())
            .max()
            .unwrap_or(0)
            .div_ceil(CHUNK)
            .max(1);
        let chunk = |i: usize, c: usize| {
            let r = seg(i);
            let a = (r.start + c * CHUNK).min(r.end);
            a..(a + CHUNK).min(r.end)
        };
        // Step s sends segment `back(s + 1)` (reduce-scatter) or `back(s - (w - 1))`
        // (allgather), and receives `back(s + 2)` or `back(s - (w - 1) + 1)`.
        let sends = |s: usize| {
            if s < w - 1 {
                back(s + 1)
            } else {
                back(s + 1 - w)
            }
        };
        let recvs = |s: usize| {
            if s < w - 1 {
                back(s + 2)
            } else {
                back(s + 2 - w)
            }
        };
        let mut order: Vec<(usize, usize)> = (0..steps)
            .flat_map(|s| (0..chunks).map(move |c| (s, c)))
            .collect();
        order.sort_by_key(|&(s, c)| (c + s * LAG, s));
        let mut at = vec![0usize; steps * chunks];
        for (k, &(s, c)) in order.iter().enumerate() {
            at[s * chunks + c] = k;
        }
        let received = AtomicUsize::new(0);
        let sent = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        // Which side failed first (1: the receiver, 2: the sender): the other side's failure
        // only follows from `stop`, and the first one's names the member at fault.
        let first = AtomicUsize::new(0);
        let mut scratch = self.scratch();
        let this = &*self;
        let conn_out = this.conn(next)?;
        let conn_in = this.conn(prev)?;
        let timeout = this.timeout;
        let base = out.as_mut_ptr();
        let shared = SharedBuf(base);
        let (received_result, (sent_result, unsent)) = std::thread::scope(|scope| {
            let me = std::thread::current();
            let (order, at, received, sent, stop, first) =
                (&order, &at, &received, &sent, &stop, &first);
            // A side failed: note which if it was first, stop the other side and wake it.
            let fail = move |side: usize, other: &std::thread::Thread| {
                let _ = first.compare_exchange(0, side, Ordering::AcqRel, Ordering::Acquire);
                stop.store(true, Ordering::Release);
                other.unpark();
            };
            let sender = scope.spawn(move || {
                let shared = shared;
                let mut unsent = 0;
                let r = (|| {
                    for (k, &(s, c)) in order.iter().enumerate() {
                        if s > 0 {
                            let dep = at[(s - 1) * chunks + c];
                            wait_until(received, dep + 1, stop, timeout, prev)?;
                        }
                        let range = chunk(sends(s), c);
                        let body: &[u8] = match input {
                            Some(input) if s == 0 => &input[range],
                            // SAFETY: `out` outlives the scope; these bytes are only read
                            // here once the receiver's write of them is done (the wait
                            // above, with Acquire), and the receiver writes them again
                            // only after `sent` passes this frame (see the method's doc).
                            _ => unsafe {
                                std::slice::from_raw_parts(shared.0.add(range.start), range.len())
                            },
                        };
                        let hdr = this.frame(h, seq, body.len());
                        let mut done = 0;
                        let r = send_all(
                            conn_out,
                            next,
                            &hdr,
                            body,
                            (Instant::now(), Instant::now() + timeout),
                            &mut done,
                            stop,
                        );
                        if r.is_err() {
                            if done > 0 {
                                unsent = HDR_LEN + body.len() - done;
                            }
                            return r;
                        }
                        sent.store(k + 1, Ordering::Release);
                        me.unpark();
                    }
                    Ok(())
                })();
                if r.is_err() {
                    fail(2, &me);
                }
                (r, unsent)
            });
            let sender_thread = sender.thread().clone();
            let r = (|| {
                let scratch: &mut [u8] = bytemuck::cast_slice_mut(&mut scratch);
                for (k, &(s, c)) in order.iter().enumerate() {
                    let range = chunk(recvs(s), c);
                    if s >= w - 1 {
                        // Allgather: these bytes were sent in reduce-scatter step s - (w - 1).
                        let dep = at[(s + 1 - w) * chunks + c];
                        wait_until(sent, dep + 1, stop, timeout, next)?;
                    }
                    let mut hdr = [0u8; HDR_LEN];
                    read_full(conn_in, prev, &mut hdr, timeout, stop)?;
                    this.check_frame(prev, &hdr, h, seq, range.len())?;
                    // SAFETY: `out` outlives the scope, and the sender reads these bytes
                    // only before this step's wait above or after `received` passes this
                    // frame (see the method's doc).
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(shared.0.add(range.start), range.len())
                    };
                    if s < w - 1 {
                        let tmp = &mut scratch[..range.len()];
                        read_full(conn_in, prev, tmp, timeout, stop)?;
                        if let Some(input) = input {
                            dst.copy_from_slice(&input[range]);
                        }
                        red.apply(dst, tmp);
                    } else {
                        read_full(conn_in, prev, dst, timeout, stop)?;
                    }
                    received.store(k + 1, Ordering::Release);
                    sender_thread.unpark();
                }
                Ok(())
            })();
            if r.is_err() {
                fail(1, &sender_thread);
            }
            let sending = sender.join().unwrap_or_else(|_| {
                (
                    Err(Fault::Os("a collective's sender thread panicked".into())),
                    0,
                )
            });
            (r, sending)
        });
        self.scratch = scratch;
        self.unsent[next] = unsent;
        let result = if first.load(Ordering::Acquire) == 2 {
            sent_result.and(received_result)
        } else {
            received_result.and(sent_result)
        };
        if let Err(Fault::Peer { rank, .. } | Fault::Timeout { rank, .. }) = &result {
            self.culprit.get_or_insert(*rank);
        }
        result
    }

    /// Ring allgather among the members `ring` (this member among them): block `i` of
    /// `out` (of `input.len()` bytes) is `ring[i]`'s input.
    fn allgather_ring(
        &mut self,
        h: &Header,
        seq: u64,
        input: &[u8],
        out: &mut [u8],
        ring: &[usize],
    ) -> Result<(), Fault> {
        let (w, n) = (ring.len(), input.len());
        let pos = position(ring, self.rank)?;
        out[pos * n..(pos + 1) * n].copy_from_slice(input);
        let back = |k: usize| (pos + w * 2 - k % w) % w;
        let (next, prev) = (ring[(pos + 1) % w], ring[back(1)]);
        for s in 0..w.saturating_sub(1) {
            let (a, b) = (back(s), back(s + 1));
            let (sa, sb) = split2(out, a * n..(a + 1) * n, b * n..(b + 1) * n);
            self.transfer(h, seq, Some((next, sa)), Some((prev, Sink::Copy(sb))))?;
        }
        Ok(())
    }

    /// Ring reduce-scatter among the members `ring` (this member among them): `out` gets
    /// block `i` (of `out.len()` bytes) of the members' reduced `input`, where `ring[i]` is
    /// this member.
    fn reduce_scatter_ring(
        &mut self,
        h: &Header,
        seq: u64,
        input: &[u8],
        out: &mut [u8],
        red: &Reducer,
        ring: &[usize],
    ) -> Result<(), Fault> {
        let (w, n) = (ring.len(), out.len());
        let pos = position(ring, self.rank)?;
        if w == 1 {
            out.copy_from_slice(input);
            return Ok(());
        }
        let block = |i: usize| &input[i * n..(i + 1) * n];
        let back = |k: usize| (pos + w * 2 - k % w) % w;
        let (next, prev) = (ring[(pos + 1) % w], ring[back(1)]);
        let mut a = aligned(n);
        let mut b = aligned(n);
        let mut scratch = aligned(PIECE.min(n.max(8)));
        for s in 0..w - 1 {
            let bb = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut b)[..n];
            let send: &[u8] = if s == 0 {
                block(back(1))
            } else {
                &bytemuck::cast_slice::<u64, u8>(&a)[..n]
            };
            let sink = Sink::Reduce {
                acc: bb,
                base: Some(block(back(s + 2))),
                scratch: &mut bytemuck::cast_slice_mut::<u64, u8>(&mut scratch)
                    [..PIECE.min(n.max(8)) / red.elem * red.elem],
                red,
                done: 0,
            };
            self.transfer(h, seq, Some((next, send)), Some((prev, sink)))?;
            std::mem::swap(&mut a, &mut b);
        }
        out.copy_from_slice(&bytemuck::cast_slice::<u64, u8>(&a)[..n]);
        Ok(())
    }

    /// The next sequence number of the operations among a subset of the members (counted
    /// apart from the whole group's: every member of one subset makes the same such calls).
    fn next_sub_seq(&mut self) -> u64 {
        self.sub_seq += 1;
        self.sub_seq | 1 << 63
    }

    /// [`allgather`](Backend::allgather) among the members `ring` only (block `i` of `out`
    /// from `ring[i]`).
    pub(crate) fn allgather_among(
        &mut self,
        h: &Header,
        input: &[u8],
        out: &mut [u8],
        ring: &[usize],
    ) -> Result<(), Fault> {
        let seq = self.next_sub_seq();
        self.allgather_ring(h, seq, input, out, ring)
    }

    /// [`reduce_scatter`](Backend::reduce_scatter) among the members `ring` only (this
    /// member gets block `i` where `ring[i]` is this member).
    pub(crate) fn reduce_scatter_among(
        &mut self,
        h: &Header,
        input: &[u8],
        out: &mut [u8],
        red: &Reducer,
        ring: &[usize],
    ) -> Result<(), Fault> {
        let seq = self.next_sub_seq();
        self.reduce_scatter_ring(h, seq, input, out, red, ring)
    }

    /// Names `rank` as the member at fault in this member's abort frames (a failure seen
    /// outside this backend: a hierarchical group's segment), unless one is named already.
    pub(crate) fn blame(&mut self, rank: usize) {
        self.culprit.get_or_insert(rank);
    }

    /// Allreduce among the members `ring` only (the node leaders of a hierarchical group),
    /// counted apart from the whole group's operations.
    pub(crate) fn allreduce_among(
        &mut self,
        h: &Header,
        out: &mut [u8],
        red: &Reducer,
        ring: &[usize],
    ) -> Result<(), Fault> {
        let seq = self.next_sub_seq();
        self.allreduce_ring(h, seq, None, out, red, ring)
    }

    /// A barrier among the members `ring` only.
    pub(crate) fn barrier_among(&mut self, h: &Header, ring: &[usize]) -> Result<(), Fault> {
        let red = Reducer::of::<u8>(super::ReduceOp::Sum);
        self.allreduce_among(h, &mut [], &red, ring)
    }

    /// A failure: tell the peers why (`code`, and the member at fault) and close every
    /// connection. A stream left mid-frame is first padded out (bounded in bytes and time),
    /// so that the abort frame is read as one.
    fn abort(&mut self, code: u64, culprit: usize) {
        for r in 0..self.world {
            let unsent = self.unsent[r];
            if let Some(c) = self.conns[r].as_mut() {
                let mut f = [0u8; HDR_LEN];
                f[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
                f[4..8].copy_from_slice(&FLAG_ABORT.to_le_bytes());
                f[8..16].copy_from_slice(&code.to_le_bytes());
                f[16..24].copy_from_slice(&(culprit as u64).to_le_bytes());
                let padded = unsent == 0
                    || (unsent <= MAX_PAD
                        && c.set_nonblocking(false).is_ok()
                        && c.set_write_timeout(Some(Duration::from_millis(200)))
                            .is_ok()
                        && {
                            let zeros = vec![0u8; unsent.min(64 << 10)];
                            let mut left = unsent;
                            while left > 0 {
                                let k = left.min(zeros.len());
                                if c.write_all(&zeros[..k]).is_err() {
                                    break;
                                }
                                left -= k;
                            }
                            left == 0
                        });
                if padded {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_write_timeout(Some(Duration::from_millis(200)));
                    let _ = c.write_all(&f);
                }
                // Only the write side: a peer still sending here must not be reset before it
                // reads this abort frame.
                let _ = c.shutdown(Shutdown::Write);
            }
        }
    }
}

/// The most bytes of a cut-off frame padded out before an abort frame.
const MAX_PAD: usize = 16 << 20;

fn would_block(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

/// Greets member `r` on `s` as member `rank` of `world` (the connector's side): our nonce,
/// the proof of the token over both greetings, and the check of `r`'s proof.
fn greet(
    s: &mut TcpStream,
    r: usize,
    nonce: u64,
    rank: usize,
    world: usize,
    token: &[u8],
) -> Result<(), Fault> {
    let mine = auth::nonce().map_err(|e| Fault::Os(format!("a greeting's nonce: {e}")))?;
    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(HELLO_MAGIC);
    hello.extend_from_slice(&nonce.to_le_bytes());
    hello.extend_from_slice(&(rank as u32).to_le_bytes());
    hello.extend_from_slice(&(world as u32).to_le_bytes());
    hello.extend_from_slice(&mine);
    s.write_all(&hello)
        .map_err(|e| peer_fault(r, "greeting", e))?;
    let mut theirs = [0u8; auth::NONCE_LEN];
    s.read_exact(&mut theirs)
        .map_err(|e| peer_fault(r, "waiting for the nonce of", e))?;
    s.write_all(&auth::prove(token, Role::Connector, &hello, &theirs))
        .map_err(|e| peer_fault(r, "proving the token to", e))?;
    let mut ack = [0u8; 1 + auth::PROOF_LEN];
    s.read_exact(&mut ack)
        .map_err(|e| peer_fault(r, "waiting for the acceptance of", e))?;
    if ack[0] != 1 {
        return Err(peer_fault(r, "refused by", "the greeting was refused"));
    }
    if !auth::verify(token, Role::Listener, &hello, &theirs, &ack[1..]) {
        return Err(peer_fault(
            r,
            "greeting",
            "the listener did not prove the cluster token",
        ));
    }
    Ok(())
}

/// Sends a frame (`hdr`, `body`) on the non-blocking `conn` to member `peer` by `deadline`
/// (`(start, deadline)`), counting bytes sent in `sent`; gives up when `stop` is raised (the
/// receive beside it failed).
fn send_all(
    conn: &TcpStream,
    peer: usize,
    hdr: &[u8; HDR_LEN],
    body: &[u8],
    (start, deadline): (Instant, Instant),
    sent: &mut usize,
    stop: &AtomicBool,
) -> Result<(), Fault> {
    let total = HDR_LEN + body.len();
    let mut conn = conn;
    while *sent < total {
        let r = if *sent < HDR_LEN {
            conn.write_vectored(&[IoSlice::new(&hdr[*sent..]), IoSlice::new(body)])
        } else {
            conn.write(&body[*sent - HDR_LEN..])
        };
        match r {
            Ok(0) => return Err(peer_fault(peer, "sending to", "connection closed")),
            Ok(k) => *sent += k,
            Err(e) if would_block(&e) => {
                if stop.load(Ordering::Relaxed) {
                    return Err(peer_fault(
                        peer,
                        "sending to",
                        "the receive beside it failed",
                    ));
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(Fault::Timeout {
                        rank: peer,
                        waited: now - start,
                    });
                }
                poll_once(conn.as_raw_fd(), libc::POLLOUT, deadline - now);
            }
            Err(e) => return Err(peer_fault(peer, "sending to", e)),
        }
    }
    Ok(())
}

/// Waits until `fd` is ready for `events`, at most `left` and at most 100 ms (the callers
/// loop, looking at their deadline and their peers' faults between waits).
fn poll_once(fd: std::os::fd::RawFd, events: libc::c_short, left: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let wait = left.min(Duration::from_millis(100));
    // SAFETY: `pfd` is one valid pollfd for the call's duration.
    unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as libc::c_int) };
}

/// `out` of a pipelined allreduce, written by its receiving thread and read by its sending
/// thread at disjoint bytes (see [`TcpBackend::allreduce_pipelined`]).
#[derive(Clone, Copy)]
struct SharedBuf(*mut u8);

// SAFETY: the pointer is only dereferenced inside the scope that borrows the buffer, by two
// threads that touch disjoint bytes at any time (the waits of `allreduce_pipelined`).
unsafe impl Send for SharedBuf {}

/// Waits until `counter` reaches `target` (the other thread of a pipelined allreduce
/// advances it and unparks this one); fails when `stop` is raised or after `timeout`
/// without it, blaming member `peer` (whose data the wait is for).
fn wait_until(
    counter: &AtomicUsize,
    target: usize,
    stop: &AtomicBool,
    timeout: Duration,
    peer: usize,
) -> Result<(), Fault> {
    let start = Instant::now();
    let mut spins = 0u32;
    while counter.load(Ordering::Acquire) < target {
        if stop.load(Ordering::Relaxed) {
            return Err(peer_fault(
                peer,
                "exchanging with",
                "the other direction failed",
            ));
        }
        if spins < 64 {
            spins += 1;
            std::hint::spin_loop();
            continue;
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(Fault::Timeout { rank: peer, waited });
        }
        std::thread::park_timeout(Duration::from_millis(10));
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes from the non-blocking `conn` of member `peer`, with at
/// most `timeout` without progress; gives up when `stop` is raised.
fn read_full(
    conn: &TcpStream,
    peer: usize,
    buf: &mut [u8],
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<(), Fault> {
    let mut conn = conn;
    let mut got = 0;
    let mut since = Instant::now();
    while got < buf.len() {
        match conn.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(Fault::Peer {
                    rank: peer,
                    message: format!(
                        "rank {peer} closed its connection (it died, failed or left the group)"
                    ),
                });
            }
            Ok(k) => {
                got += k;
                since = Instant::now();
            }
            Err(e) if would_block(&e) => {
                if stop.load(Ordering::Relaxed) {
                    return Err(peer_fault(
                        peer,
                        "receiving from",
                        "the send beside it failed",
                    ));
                }
                let waited = since.elapsed();
                if waited >= timeout {
                    return Err(Fault::Timeout { rank: peer, waited });
                }
                poll_once(conn.as_raw_fd(), libc::POLLIN, timeout - waited);
            }
            Err(e) => return Err(peer_fault(peer, "receiving from", e)),
        }
    }
    Ok(())
}

/// Reads and checks a connecting member's greeting and proof (bounded in size and time), and
/// proves the token in turn.
fn accept_hello(
    mut s: TcpStream,
    nonce: u64,
    world: usize,
    token: &[u8],
) -> Result<(usize, TcpStream), String> {
    s.set_nonblocking(false).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; HELLO_LEN];
    s.read_exact(&mut head).map_err(|e| e.to_string())?;
    if &head[0..8] != HELLO_MAGIC {
        return Err("not a collective greeting".into());
    }
    let mine = auth::nonce().map_err(|e| e.to_string())?;
    s.write_all(&mine).map_err(|e| e.to_string())?;
    let mut proof = [0u8; auth::PROOF_LEN];
    s.read_exact(&mut proof).map_err(|e| e.to_string())?;
    if !auth::verify(token, Role::Connector, &head, &mine, &proof) {
        return Err("a wrong token".into());
    }
    let u32_at = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().unwrap_or([0; 4]));
    let their_nonce = u64::from_le_bytes(head[8..16].try_into().unwrap_or([0; 8]));
    let (rank, their_world) = (u32_at(16) as usize, u32_at(20) as usize);
    if their_nonce != nonce || their_world != world || rank >= world {
        return Err(format!(
            "a member of another group (rank {rank} of {their_world})"
        ));
    }
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut ack = vec![1u8];
    ack.extend_from_slice(&auth::prove(token, Role::Listener, &head, &mine));
    s.write_all(&ack).map_err(|e| e.to_string())?;
    Ok((rank, s))
}

/// Where received payload bytes go.
enum Sink<'a> {
    Copy(&'a mut [u8]),
    /// Received into `scratch` piece by piece, each reduced into `acc` once complete (with
    /// `base`'s piece copied into `acc` first, where given: an out-of-place reduction).
    Reduce {
        acc: &'a mut [u8],
        base: Option<&'a [u8]>,
        scratch: &'a mut [u8],
        red: &'a Reducer,
        /// Bytes of `acc` already reduced.
        done: usize,
    },
}

impl Sink<'_> {
    fn len(&self) -> usize {
        match self {
            Sink::Copy(b) => b.len(),
            Sink::Reduce { acc, .. } => acc.len(),
        }
    }

    /// Reads the payload's bytes from `got` on.
    fn read_from(&mut self, conn: &mut &TcpStream, got: usize) -> std::io::Result<usize> {
        match self {
            Sink::Copy(b) => conn.read(&mut b[got..]),
            Sink::Reduce {
                acc,
                base,
                scratch,
                red,
                done,
            } => {
                let piece = scratch.len();
                let start = got - *done;
                let end = piece.min(acc.len() - *done);
                let k = conn.read(&mut scratch[start..end])?;
                if start + k == end && end > 0 {
                    let into = &mut acc[*done..*done + end];
                    if let Some(base) = base {
                        into.copy_from_slice(&base[*done..*done + end]);
                    }
                    red.apply(into, &scratch[..end]);
                    *done += end;
                }
                Ok(k)
            }
        }
    }
}

/// This member's position in `ring`.
fn position(ring: &[usize], rank: usize) -> Result<usize, Fault> {
    ring.iter()
        .position(|&r| r == rank)
        .ok_or_else(|| Fault::Os("an operation among members that exclude this one".into()))
}

/// A zeroed buffer of at least `n` bytes, aligned for every element type.
fn aligned(n: usize) -> Vec<u64> {
    vec![0u64; n.div_ceil(8)]
}

/// Segment `i` of `w` of `n` bytes of `elem`-byte elements.
fn segment(n: usize, elem: usize, w: usize, i: usize) -> std::ops::Range<usize> {
    let m = n / elem;
    (m * i / w * elem)..(m * (i + 1) / w * elem)
}

/// Disjoint ranges `a` (read) and `b` (written) of `buf`.
fn split2(
    buf: &mut [u8],
    a: std::ops::Range<usize>,
    b: std::ops::Range<usize>,
) -> (&[u8], &mut [u8]) {
    if a.end <= b.start {
        let (lo, hi) = buf.split_at_mut(b.start);
        (&lo[a], &mut hi[..b.end - b.start])
    } else {
        let (lo, hi) = buf.split_at_mut(a.start);
        (&hi[..a.end - a.start], &mut lo[b])
    }
}

impl Backend for TcpBackend {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn allreduce(
        &mut self,
        h: &Header,
        input: Option<&[u8]>,
        out: &mut [u8],
        red: &Reducer,
    ) -> Result<(), Fault> {
        self.allreduce_bytes(h, input, out, red)
    }

    fn allgather(&mut self, h: &Header, input: &[u8], out: &mut [u8]) -> Result<(), Fault> {
        self.seq += 1;
        let seq = self.seq;
        let all: Vec<usize> = (0..self.world).collect();
        self.allgather_ring(h, seq, input, out, &all)
    }

    fn reduce_scatter(
        &mut self,
        h: &Header,
        input: &[u8],
        out: &mut [u8],
        red: &Reducer,
    ) -> Result<(), Fault> {
        self.seq += 1;
        let seq = self.seq;
        let all: Vec<usize> = (0..self.world).collect();
        self.reduce_scatter_ring(h, seq, input, out, red, &all)
    }

    fn broadcast(&mut self, h: &Header, data: &mut [u8], root: usize) -> Result<(), Fault> {
        self.seq += 1;
        let seq = self.seq;
        let w = self.world;
        if w == 1 {
            return Ok(());
        }
        let pos = (self.rank + w - root) % w;
        let next = (self.rank + 1) % w;
        let prev = self.prev(1);
        let n = data.len();
        let pieces = n.div_ceil(BCAST_PIECE).max(1);
        let piece = |k: usize| (k * BCAST_PIECE).min(n)..((k + 1) * BCAST_PIECE).min(n);
        for k in 0..=pieces {
            let send = pos + 1 < w && k >= 1;
            let recv = pos > 0 && k < pieces;
            match (send, recv) {
                (true, true) => {
                    let (sa, sb) = split2(data, piece(k - 1), piece(k));
                    self.transfer(h, seq, Some((next, sa)), Some((prev, Sink::Copy(sb))))?;
                }
                (true, false) => {
                    let r = piece(k - 1);
                    self.transfer(h, seq, Some((next, &data[r])), None)?;
                }
                (false, true) => {
                    let r = piece(k);
                    self.transfer(h, seq, None, Some((prev, Sink::Copy(&mut data[r]))))?;
                }
                (false, false) => {}
            }
        }
        // The chain's end closes the ring back to the root, so that every member hears from
        // its predecessor (and a member that disagrees about the root is caught).
        if pos == w - 1 {
            self.transfer(h, seq, Some((next, &[])), None)?;
        }
        if pos == 0 {
            self.transfer(h, seq, None, Some((prev, Sink::Copy(&mut []))))?;
        }
        Ok(())
    }

    fn reduce(
        &mut self,
        h: &Header,
        data: &mut [u8],
        root: usize,
        red: &Reducer,
    ) -> Result<(), Fault> {
        if self.rank == root {
            return self.allreduce_bytes(h, None, data, red);
        }
        let mut tmp = aligned(data.len());
        let t = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut tmp)[..data.len()];
        self.allreduce_bytes(h, Some(data), t, red)
    }

    fn send(&mut self, h: &Header, data: &[u8], dst: usize) -> Result<(), Fault> {
        self.transfer(h, 0, Some((dst, data)), None)
    }

    fn recv(&mut self, h: &Header, data: &mut [u8], src: usize) -> Result<(), Fault> {
        self.transfer(h, 0, None, Some((src, Sink::Copy(data))))
    }

    fn barrier(&mut self, h: &Header) -> Result<(), Fault> {
        let red = Reducer::of::<u8>(super::ReduceOp::Sum);
        self.allreduce_bytes(h, None, &mut [], &red)
    }

    fn leave(&mut self, mismatch: bool) {
        if !self.left {
            self.left = true;
            let culprit = self.culprit.unwrap_or(self.rank);
            let code = if mismatch {
                ABORT_MISMATCH
            } else {
                ABORT_FAILED
            };
            self.abort(code, culprit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_tile_the_buffer_in_whole_elements() {
        for (n, elem, w) in [(0, 4, 3), (4, 4, 3), (40, 4, 3), (1000, 8, 4), (6, 2, 7)] {
            let mut end = 0;
            for i in 0..w {
                let r = segment(n, elem, w, i);
                assert_eq!(r.start, end, "contiguous");
                assert_eq!(r.start % elem, 0);
                assert_eq!(r.end % elem, 0);
                end = r.end;
            }
            assert_eq!(end, n, "n={n} elem={elem} w={w}");
        }
    }

    #[test]
    fn split2_gives_disjoint_ranges_either_way_round() {
        let mut buf: Vec<u8> = (0..10).collect();
        let (a, b) = split2(&mut buf, 0..3, 5..8);
        assert_eq!(a, [0, 1, 2]);
        b.fill(0);
        let (a, b) = split2(&mut buf, 6..9, 1..4);
        assert_eq!(a, [0, 0, 8]);
        assert_eq!(b, [1, 2, 3]);
    }

    #[test]
    fn a_greeting_with_a_wrong_token_or_group_is_refused() {
        let listen = TcpListen::bind("127.0.0.1").unwrap();
        let addr = listen.address().to_owned();
        let greet = |token: &'static [u8], nonce: u64, rank: u32| {
            let addr = addr.clone();
            let connector = std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                super::greet(&mut s, 0, nonce, rank as usize, 2, token)
            });
            let (conn, _) = listen.listener.accept().unwrap();
            let accepted = accept_hello(conn, 7, 2, b"secret").map(|(r, _)| r);
            (accepted, connector.join().unwrap())
        };
        let (accepted, greeted) = greet(b"secret", 7, 1);
        assert_eq!(accepted, Ok(1));
        assert!(greeted.is_ok(), "the listener's proof holds");
        let (accepted, greeted) = greet(b"wrong!", 7, 1);
        assert!(accepted.unwrap_err().contains("token"));
        assert!(greeted.is_err(), "the connector hears of it");
        assert!(
            greet(b"secret", 8, 1)
                .0
                .unwrap_err()
                .contains("another group")
        );
        assert!(
            greet(b"secret", 7, 5)
                .0
                .unwrap_err()
                .contains("another group")
        );
    }

    /// A listener that does not hold the token gets no token from a connector, and the
    /// connector refuses it.
    #[test]
    fn an_impostor_member_never_sees_the_token() {
        let listen = TcpListen::bind("127.0.0.1").unwrap();
        let addr = listen.address().to_owned();
        let connector = std::thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            super::greet(&mut s, 0, 7, 1, 2, b"secret")
        });
        let (mut s, _) = listen.listener.accept().unwrap();
        let mut seen = vec![0u8; HELLO_LEN];
        s.read_exact(&mut seen).unwrap();
        s.write_all(&[1u8; auth::NONCE_LEN]).unwrap();
        let mut proof = [0u8; auth::PROOF_LEN];
        s.read_exact(&mut proof).unwrap();
        seen.extend_from_slice(&proof);
        let mut ack = vec![1u8];
        ack.extend_from_slice(&[9u8; auth::PROOF_LEN]);
        s.write_all(&ack).unwrap();
        match connector.join().unwrap() {
            Err(Fault::Peer { message, .. }) => assert!(message.contains("did not prove")),
            other => panic!("an impostor must be refused: {:?}", other.err()),
        }
        assert!(!seen.windows(6).any(|w| w == b"secret"));
    }
}
