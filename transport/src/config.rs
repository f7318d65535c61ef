//! Transport settings, passed in by the caller (this crate reads no environment variables:
//! the runtime's configuration catalogue owns defaults and `MANTA_*` overrides).

use std::time::Duration;

/// Settings of listeners and connections.
#[derive(Clone)]
#[non_exhaustive]
pub struct TransportConfig {
    /// The cluster's shared secret; a peer presenting another is refused.
    pub cluster_token: Vec<u8>,
    /// Our opaque name (node id, rank), sent in the handshake.
    pub local_name: String,
    /// Largest frame payload accepted or sent, in bytes.
    pub max_frame_len: u32,
    /// Size of the chunks a bulk transfer is cut into (at most `max_frame_len`).
    pub bulk_chunk_len: u32,
    /// Largest bulk transfer or one-sided read accepted, in bytes.
    pub max_bulk_len: u64,
    /// Time allowed to connect and complete the handshake.
    pub handshake_timeout: Duration,
    /// Bytes of each direction's shared-memory ring (rounded up to a power of two).
    pub shm_ring_capacity: usize,
    /// How long a shm reader or writer spins before parking on its eventfd.
    pub shm_spin: Duration,
    /// Most handshakes a listener runs at once; a connection accepted beyond that is closed
    /// at once (so unauthenticated peers cannot make a listener hold unbounded state).
    pub max_pending_handshakes: usize,
}

impl TransportConfig {
    /// Settings with the given token and name and defaults for the rest: frames ≤ 4 MiB, bulk
    /// chunks of 1 MiB, bulk transfers ≤ 16 GiB, 5 s handshake, 4 MiB shm rings, 50 µs spin,
    /// 256 handshakes at once per listener.
    pub fn new(cluster_token: impl Into<Vec<u8>>, local_name: impl Into<String>) -> Self {
        Self {
            cluster_token: cluster_token.into(),
            local_name: local_name.into(),
            max_frame_len: 4 << 20,
            bulk_chunk_len: 1 << 20,
            max_bulk_len: 16 << 30,
            handshake_timeout: Duration::from_secs(5),
            shm_ring_capacity: 4 << 20,
            shm_spin: Duration::from_micros(50),
            max_pending_handshakes: 256,
        }
    }

    /// The chunk length actually used: `bulk_chunk_len` clamped to `1..=max_frame_len`.
    pub(crate) fn chunk_len(&self) -> usize {
        self.bulk_chunk_len.clamp(1, self.max_frame_len.max(1)) as usize
    }
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("cluster_token", &"<redacted>")
            .field("local_name", &self.local_name)
            .field("max_frame_len", &self.max_frame_len)
            .field("bulk_chunk_len", &self.bulk_chunk_len)
            .field("max_bulk_len", &self.max_bulk_len)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("shm_ring_capacity", &self.shm_ring_capacity)
            .field("shm_spin", &self.shm_spin)
            .field("max_pending_handshakes", &self.max_pending_handshakes)
            .finish()
    }
}
