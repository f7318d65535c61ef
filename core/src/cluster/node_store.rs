//! The node's object store: one arena per node, created by the raylet, shared by the node's
//! processes.
//!
//! 1. **The raylet creates it.** At start, a raylet with `node_object_store` on (the default)
//!    creates a [`NodeArena`] of `object_store_memory` bytes (its own environment's catalogue:
//!    huge pages, pre-faulting and NUMA nodes as configured; by default every NUMA node of the
//!    machine), and serves it on an abstract Unix socket, `@manta-arena-<pid>-<nonce>`,
//!    advertised in its node-table row (`Node.arena_socket`). A raylet that cannot create it
//!    logs why and advertises nothing: its processes then keep arenas of their own.
//! 2. **A process attaches it.** A process that joins the cluster (a worker the raylet
//!    started, an SPMD rank, a driver) finds its node's row — a worker by its node id, a
//!    driver by its host identity (the lowest live node id on the same host and network
//!    namespace) — proves the cluster token on that socket, receives the memfd and maps it
//!    read-write ([`NodeClient`]). Its store ([`Store::on_node`](manta_store::Store::on_node))
//!    then allocates only inside extents the raylet grants it, so `object_store_memory` bounds
//!    the node, not each process.
//! 3. **Reads.** A same-host reader that attaches a holder's arena receives that same memfd;
//!    it recognises it (`(st_dev, st_ino)`) and uses its own mapping of the node arena instead
//!    of mapping it again (`attach.rs`), taking a read lock on the object's range while it reads
//!    in place so that the raylet never hands the range to another process should the holder
//!    die meanwhile (the store crate's `node.rs` gives the argument).
//! 4. **Death.** A process's connection to the raylet's socket is its lease: when it closes,
//!    the raylet takes the process's extents back (once no reader holds a lock on them).

use crate::sync::Arc;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

use manta_store::{NodeArena, NodeClient, NodeServer};

use super::proto::Resource;

/// The raylet's side: the arena, its server, and the name it is served under.
pub(super) struct NodeStore {
    arena: Arc<NodeArena>,
    /// Held for its drop: stops serving.
    _server: NodeServer,
    /// `@name`, as advertised.
    pub(super) socket: String,
}

impl NodeStore {
    /// Step 1: `None` (logged) when the node keeps no shared arena.
    pub(super) fn start(token: &str) -> Option<NodeStore> {
        let config = match crate::Config::default().resolve() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no node object store: bad configuration");
                return None;
            }
        };
        if !config.node_object_store {
            return None;
        }
        // The whole node's NUMA nodes (or the raylet's MANTA_OBJECT_STORE_NUMA_NODES): each
        // process's grants then prefer its own node's span.
        let store_config = crate::store::store_config(&config, None);
        let arena = match NodeArena::create(&store_config) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "no node object store: each process keeps its own arena");
                return None;
            }
        };
        // The pid makes the name unique among live raylets of this namespace; the clock, among
        // raylets that had this pid before.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let name = format!("manta-arena-{}-{nonce:016x}", std::process::id());
        let server = SocketAddr::from_abstract_name(&name)
            .and_then(|addr| UnixListener::bind_addr(&addr))
            .and_then(|listener| arena.serve(listener, token));
        match server {
            Ok(server) => {
                let stats = arena.stats();
                tracing::info!(capacity = stats.capacity, pages = %stats.page_kind, granule = arena.granule(), socket = %name, "node object store ready");
                Some(NodeStore {
                    arena,
                    _server: server,
                    socket: format!("@{name}"),
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "no node object store: cannot serve its arena");
                None
            }
        }
    }

    /// The node's `object_store_memory` resource: total the arena, available what is not
    /// granted to a process.
    pub(super) fn resource(&self) -> Resource {
        let s = self.arena.stats();
        Resource {
            name: "object_store_memory".into(),
            total: s.capacity as f64,
            available: s.capacity.saturating_sub(s.granted) as f64,
        }
    }

    /// Bytes granted to the node's processes.
    pub(super) fn used(&self) -> u64 {
        self.arena.stats().granted as u64
    }

    /// The arena's page kind, for `manta status`.
    pub(super) fn pages(&self) -> String {
        self.arena.stats().page_kind.to_string()
    }
}

/// Step 2: connects to the arena served at `socket` (`@name`); `None` (logged) when it cannot.
pub(crate) fn connect(socket: &str, token: &str) -> Option<NodeClient> {
    let name = socket.strip_prefix('@')?;
    let client =
        SocketAddr::from_abstract_name(name).and_then(|addr| NodeClient::connect(&addr, token));
    match client {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, %socket, "cannot attach the node's object store: this process keeps its own arena");
            None
        }
    }
}

impl super::worker::Cluster {
    /// Step 2: a connection to the arena of this process's node, if its raylet serves one.
    pub(crate) fn node_arena(&self) -> Option<NodeClient> {
        let _guard = self.io.enter();
        let rx = self
            .gcs
            .request(|request_id| super::proto::Msg::GetNodes { request_id });
        let nodes = match super::wait_reply(rx, super::call_timeout(), "reading the node table") {
            Ok(super::proto::Msg::Nodes { nodes, .. }) => nodes,
            Ok(_) | Err(_) => {
                tracing::warn!("cannot read the node table: this process keeps its own arena");
                return None;
            }
        };
        let mine = match &self.member.role {
            super::worker::Role::Worker { node_id, .. } => {
                nodes.into_iter().find(|n| n.node_id == *node_id)
            }
            super::worker::Role::Driver => nodes
                .into_iter()
                .filter(|n| n.alive && n.host_id == self.peers.host_id())
                .min_by_key(|n| n.node_id),
        }?;
        if mine.arena_socket.is_empty() {
            return None;
        }
        connect(&mine.arena_socket, &self.member.token)
    }
}
