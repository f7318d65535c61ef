//! A byte stream over a pair of rings, as two independent halves: [`ShmReader`]
//! (`AsyncRead`) and [`ShmWriter`] (`AsyncWrite`), each with spin-then-park wake-ups.
//!
//! A reader that finds its ring empty spins for `shm_spin` (waking an idle vCPU costs
//! 40–150 µs on the target VMs, a spin costs only this core's time), then parks: it sets the
//! ring's waiter flag (see `ring.rs`, "Memory ordering"), re-checks, and awaits its eventfd
//! through tokio's reactor. Writers mirror this on a full ring. The Unix socket that carried
//! the segment stays open: its end-of-file is how a crashed peer is noticed, since a dead
//! process never sets the ring's `closed` flag.

use super::ring::{Consumer, Producer};
use super::sys::EventFd;
use crate::error::FrameError;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

/// The liveness socket and spin budget each half of a shm connection keeps for itself.
///
/// Each half owns its own descriptor of the Unix socket (a `dup` made at setup), so the two
/// halves can park in different tasks without sharing tokio's single read-readiness waker.
#[derive(Debug)]
struct Liveness {
    /// End-of-file here means the peer process is gone.
    sock: UnixStream,
    peer_gone: bool,
}

impl Liveness {
    /// Polls the liveness socket; sets `peer_gone` on end-of-file or error.
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            match self.sock.poll_read_ready(cx) {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => break,
                Poll::Ready(Ok(())) => {
                    let mut b = [0u8; 16];
                    match self.sock.try_read(&mut b) {
                        Ok(0) => break,
                        // Stray bytes are ignored; WouldBlock re-arms the readiness.
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => break,
                    }
                }
            }
        }
        self.peer_gone = true;
        true
    }
}

/// The reading half of this process's end of a shm connection: our ring's consumer.
#[derive(Debug)]
pub(crate) struct ShmReader {
    rx: Consumer,
    /// Signalled by the peer when it wrote into `rx`.
    rx_data: AsyncFd<EventFd>,
    /// The peer's `tx_space`: signalled after we read.
    peer_space: EventFd,
    live: Liveness,
    spin: Duration,
}

/// The writing half of this process's end of a shm connection: the peer's ring's producer.
#[derive(Debug)]
pub(crate) struct ShmWriter {
    tx: Producer,
    /// Signalled by the peer when it freed space in `tx`.
    tx_space: AsyncFd<EventFd>,
    /// The peer's `rx_data`: signalled after we write.
    peer_data: EventFd,
    live: Liveness,
    spin: Duration,
}

/// Everything [`split_stream`] needs: the two rings, `waits` = [our rx data, our tx space,
/// peer's rx data, peer's tx space], and the liveness socket.
pub(crate) struct StreamParts {
    pub(crate) tx: Producer,
    pub(crate) rx: Consumer,
    pub(crate) waits: [EventFd; 4],
    pub(crate) sock: UnixStream,
    pub(crate) spin: Duration,
}

/// Builds the two halves, duplicating the liveness socket so each half owns one.
/// Must run inside a tokio runtime (it registers descriptors with the reactor).
pub(crate) fn split_stream(p: StreamParts) -> io::Result<(ShmReader, ShmWriter)> {
    let [rx_data, tx_space, peer_data, peer_space] = p.waits;
    let std_sock = p.sock.into_std()?;
    let dup = std_sock.try_clone()?;
    let reader = ShmReader {
        rx: p.rx,
        rx_data: super::sys::async_eventfd(rx_data)?,
        peer_space,
        live: Liveness {
            sock: UnixStream::from_std(std_sock)?,
            peer_gone: false,
        },
        spin: p.spin,
    };
    let writer = ShmWriter {
        tx: p.tx,
        tx_space: super::sys::async_eventfd(tx_space)?,
        peer_data,
        live: Liveness {
            sock: UnixStream::from_std(dup)?,
            peer_gone: false,
        },
        spin: p.spin,
    };
    Ok((reader, writer))
}

fn corrupt(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Spins until `ready` or `spin` elapses; returns whether `ready` held.
fn spin_until(spin: Duration, ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if ready() {
            return true;
        }
        for _ in 0..64 {
            std::hint::spin_loop();
        }
        if start.elapsed() >= spin {
            return false;
        }
    }
}

impl ShmReader {
    fn read_now(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        let n = self.rx.read(dst).map_err(corrupt)?;
        if n > 0 && self.rx.take_space_waiter() {
            self.peer_space.signal()?;
        }
        Ok(n)
    }

    /// Non-blocking read: `WouldBlock` when the ring is empty and open.
    pub(crate) fn try_read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        let n = self.read_now(dst)?;
        if n > 0 || dst.is_empty() || self.rx.is_closed() || self.live.peer_gone {
            return Ok(n);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl ShmWriter {
    fn write_now(&mut self, src: &[u8]) -> io::Result<usize> {
        if self.tx.is_closed() || self.live.peer_gone {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = self.tx.write(src).map_err(corrupt)?;
        if n > 0 && self.tx.take_data_waiter() {
            self.peer_data.signal()?;
        }
        Ok(n)
    }
}

impl AsyncRead for ShmReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut spun = false;
        loop {
            let n = this.read_now(buf.initialize_unfilled())?;
            if n > 0 || buf.remaining() == 0 {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.rx.is_closed() || this.live.peer_gone {
                // Step 7: closed was seen after the last read found nothing... re-read once
                // in case the final bytes were published just before `closed`.
                let n = this.read_now(buf.initialize_unfilled())?;
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if !spun {
                spun = true;
                let rx = &this.rx;
                if spin_until(this.spin, || {
                    rx.available().map(|a| a > 0).unwrap_or(true) || rx.is_closed()
                }) {
                    continue;
                }
            }
            if !this.rx.prepare_park().map_err(corrupt)? {
                continue;
            }
            match this.rx_data.poll_read_ready(cx) {
                Poll::Ready(Ok(mut guard)) => {
                    guard.get_inner().drain()?;
                    guard.clear_ready_matching(tokio::io::Ready::READABLE);
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if this.live.poll(cx) {
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for ShmWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        src: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut spun = false;
        loop {
            let n = this.write_now(src)?;
            if n > 0 || src.is_empty() {
                return Poll::Ready(Ok(n));
            }
            if !spun {
                spun = true;
                let tx = &this.tx;
                if spin_until(this.spin, || {
                    tx.free().map(|f| f > 0).unwrap_or(true) || tx.is_closed()
                }) {
                    continue;
                }
            }
            if !this.tx.prepare_park().map_err(corrupt)? {
                continue;
            }
            match this.tx_space.poll_read_ready(cx) {
                Poll::Ready(Ok(mut guard)) => {
                    guard.get_inner().drain()?;
                    guard.clear_ready_matching(tokio::io::Ready::READABLE);
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if this.live.poll(cx) {
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tx.close();
        let _ = this.peer_data.signal();
        Poll::Ready(Ok(()))
    }
}

impl Drop for ShmReader {
    fn drop(&mut self) {
        // Step 7 on the ring we read: our reader is gone; wake a writer parked on it.
        self.rx.close();
        let _ = self.peer_space.signal();
    }
}

impl Drop for ShmWriter {
    fn drop(&mut self) {
        // Step 7 on the ring we write: no more bytes; wake a reader parked on it.
        self.tx.close();
        let _ = self.peer_data.signal();
    }
}
