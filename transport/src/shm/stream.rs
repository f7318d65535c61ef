//! A byte stream over a pair of rings: `AsyncRead`/`AsyncWrite` with spin-then-park wake-ups.
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

/// This process's end of a shm connection.
#[derive(Debug)]
pub(crate) struct ShmStream {
    pub(super) tx: Producer,
    pub(super) rx: Consumer,
    /// Signalled by the peer when it wrote into `rx`.
    pub(super) rx_data: AsyncFd<EventFd>,
    /// Signalled by the peer when it freed space in `tx`.
    pub(super) tx_space: AsyncFd<EventFd>,
    /// The peer's `rx_data`: signalled after we write.
    pub(super) peer_data: EventFd,
    /// The peer's `tx_space`: signalled after we read.
    pub(super) peer_space: EventFd,
    /// Liveness: end-of-file here means the peer process is gone.
    pub(super) sock: UnixStream,
    pub(super) spin: Duration,
    pub(super) peer_gone: bool,
}

fn corrupt(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl ShmStream {
    /// Polls the liveness socket; sets `peer_gone` on end-of-file or error.
    fn poll_liveness(&mut self, cx: &mut Context<'_>) -> bool {
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

    fn read_now(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        let n = self.rx.read(dst).map_err(corrupt)?;
        if n > 0 && self.rx.take_space_waiter() {
            self.peer_space.signal()?;
        }
        Ok(n)
    }

    fn write_now(&mut self, src: &[u8]) -> io::Result<usize> {
        if self.tx.is_closed() || self.peer_gone {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = self.tx.write(src).map_err(corrupt)?;
        if n > 0 && self.tx.take_data_waiter() {
            self.peer_data.signal()?;
        }
        Ok(n)
    }

    /// Non-blocking read: `WouldBlock` when the ring is empty and open.
    pub(crate) fn try_read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        let n = self.read_now(dst)?;
        if n > 0 || dst.is_empty() || self.rx.is_closed() || self.peer_gone {
            return Ok(n);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn spin_until(&self, ready: impl Fn(&Self) -> bool) -> bool {
        let start = Instant::now();
        loop {
            if ready(self) {
                return true;
            }
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            if start.elapsed() >= self.spin {
                return false;
            }
        }
    }
}

impl AsyncRead for ShmStream {
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
            if this.rx.is_closed() || this.peer_gone {
                // Step 7: closed was seen after the last read found nothing... re-read once
                // in case the final bytes were published just before `closed`.
                let n = this.read_now(buf.initialize_unfilled())?;
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if !spun {
                spun = true;
                if this.spin_until(|s| {
                    s.rx.available().map(|a| a > 0).unwrap_or(true) || s.rx.is_closed()
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
                    if this.poll_liveness(cx) {
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for ShmStream {
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
                if this
                    .spin_until(|s| s.tx.free().map(|f| f > 0).unwrap_or(true) || s.tx.is_closed())
                {
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
                    if this.poll_liveness(cx) {
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

impl Drop for ShmStream {
    fn drop(&mut self) {
        // Step 7 on both rings: our reader and our writer are gone.
        self.tx.close();
        self.rx.close();
        let _ = self.peer_data.signal();
        let _ = self.peer_space.signal();
    }
}
