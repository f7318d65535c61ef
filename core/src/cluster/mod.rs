//! The cluster: a process's membership in a Manta cluster (its *core worker*), the GCS and the
//! raylet.
//!
//! A process joins a cluster when `MANTA_ADDRESS` (or [`Config::address`](crate::Config)) names
//! a GCS, or when a raylet started it as a worker (`MANTA_WORKER_RAYLET`). It then
//!
//! 1. registers with the GCS and receives a *worker index*, which becomes the top 16 bits of
//!    every object and actor id it creates (so any process can find an id's owner);
//! 2. listens for other members on a TCP port of its node's address and connects to them on
//!    demand (`peer::Peer`);
//! 3. as a **driver** (no local slots of its own: every task and actor goes to worker
//!    processes, as with Ray's driver), places tasks on nodes with Ray's hybrid policy
//!    (`policy.rs`) and asks each node's raylet once for the job's worker process there;
//! 4. as a **worker**, runs what owners push to it on its slots and serves until its raylet
//!    tells it to stop (or disappears), then exits.
//!
//! Ownership is Ray's: the submitter of a task owns its result. A result larger than
//! `max_inline_object_bytes` (or holding references) stays in the executor's store until its
//! owner drops its last reference and no borrower is left (the owner then sends
//! `FreeObject`); a reader elsewhere pulls it, as a bulk transfer written straight into its
//! own store. A process that deserialises a reference registers with the owner as a borrower
//! and pulls the value on first read (`borrow.rs`).
#![allow(dead_code)]

mod actor_manager;
mod attach;
pub(crate) mod borrow;
pub(crate) mod cancel;
mod client;
mod execute;
pub(crate) mod gcs;
mod gcs_link;
mod gcs_store;
mod gcs_tables;
mod group_call;
mod lifetime;
mod lineage;
pub(crate) mod node_store;
pub(crate) mod object_manager;
pub(crate) mod peer;
mod peers;
mod pending_actor;
pub(crate) mod pg;
mod placement;
pub(crate) mod policy;
pub(crate) mod proto;
mod pull_queue;
mod raylet;
pub(crate) mod reference_counter;
mod remote;
mod returns;
#[allow(unsafe_code)] // one system call (geteuid), argued there
pub mod session;
#[cfg(test)]
mod sim;
mod submit;
pub(crate) mod supervision;
mod task_manager;
mod wire;
pub(crate) mod worker;
mod worker_logs;
pub(crate) mod worker_table;

pub use client::{
    ActorRow, ClusterState, NodeRow, ObjectListing, TaskListing, WorkList, list_placement_groups,
    list_work, query, stop_cluster,
};
pub use raylet::{NodeOptions, NodeReady, run_node};

/// The file of a head's session directory where its GCS saves its tables (mode `0600`; no
/// secret in it): `manta start --head` on that session restores them.
pub const GCS_TABLES_FILE: &str = gcs_store::FILE;

use crate::sync::Arc;
use std::path::PathBuf;

use crate::config::Resolved;

/// Where session directories live: `$MANTA_SESSION_ROOT`, default `/tmp/manta`.
pub fn session_root() -> PathBuf {
    std::env::var_os(crate::config::vars::SESSION_ROOT)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/manta"))
}

/// Stores `value` under `key` in the key-value store (Ray's internal KV), replacing any old
/// value; returns whether there was one. In a cluster the store is the GCS's, shared by every
/// process of the cluster; embedded, it is an in-process map with the same semantics, shared
/// by every task and actor of the runtime and emptied by `shutdown`.
pub fn kv_put(key: &str, value: &[u8]) -> Result<bool, Error> {
    crate::runtime::kv_put(key, value)
}

/// The value stored under `key` in the key-value store (see [`kv_put`]), if any.
pub fn kv_get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    crate::runtime::kv_get(key)
}

/// The token of the cluster at `address`, from the latest session directory on this host
/// (written by `manta start --head`), if it is that cluster's. A session directory that is not
/// this user's alone is refused with a warning ([`session`]).
pub fn session_token(address: &str) -> Option<String> {
    match session::token_for(&session_root(), address) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "not reading the session's token");
            None
        }
    }
}

/// This host and network namespace (`<boot id>/net:[<inode>]`): processes with equal ids can
/// meet over shared memory, and a raylet's node row carries its own so that an SPMD rank finds
/// the raylet of its machine ([`NodeRow::host_id`]).
pub fn host_id() -> String {
    crate::remote::host_id()
}

/// Where a worker process of an SPMD launch (a rank) joins: its GCS and its node's raylet.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerSpec {
    /// The GCS (`host:port`).
    pub gcs_address: String,
    /// The cluster's token.
    pub token: String,
    /// This node's raylet (`host:port`).
    pub raylet_address: String,
    /// The job it works for.
    pub job_id: u64,
    /// Its node.
    pub node_id: u64,
}

impl WorkerSpec {
    /// A worker of `job_id` on node `node_id`.
    pub fn new(
        gcs_address: impl Into<String>,
        token: impl Into<String>,
        raylet_address: impl Into<String>,
        job_id: u64,
        node_id: u64,
    ) -> Self {
        WorkerSpec {
            gcs_address: gcs_address.into(),
            token: token.into(),
            raylet_address: raylet_address.into(),
            job_id,
            node_id,
        }
    }
}

/// Runs this process as a worker of the cluster `spec` names, with `config`'s resources, until
/// the cluster stops it; then the process exits (0 when told to stop, 1 when its raylet or the
/// GCS is lost). Returns only if it could not join.
pub fn serve_worker(config: crate::Config, spec: WorkerSpec) -> Error {
    let join = move |resolved: &mut Resolved| {
        worker::Cluster::join(worker::JoinOptions {
            gcs_address: spec.gcs_address,
            token: spec.token,
            role: worker::Role::Worker {
                raylet: spec.raylet_address,
                job_id: spec.job_id,
                node_id: spec.node_id,
            },
            max_inline: resolved.max_inline_object_bytes,
            shm: resolved.shm_transport,
            zero_copy: resolved.zero_copy_node,
        })
        .map(|c| Some(c as Arc<dyn crate::remote::Remote>))
    };
    match crate::runtime::init_joining(config, join) {
        Ok(()) => Error::Cluster {
            what: "serving as a worker".into(),
            message: "the runtime returned instead of serving".into(),
        },
        Err(e) => e,
    }
}

/// Joins the cluster the configuration (or a raylet's environment) names, if any.
pub(crate) fn join_from_env(config: &mut Resolved) -> Result<Option<Arc<worker::Cluster>>, Error> {
    let raylet = std::env::var(crate::config::vars::WORKER_RAYLET).unwrap_or_default();
    if config.address.is_empty() {
        if !raylet.is_empty() {
            return Err(Error::Config {
                key: "MANTA_ADDRESS".into(),
                message: "a worker process needs the GCS address".into(),
            });
        }
        return Ok(None);
    }
    let token = if config.token.is_empty() {
        session_token(&config.address).ok_or_else(|| Error::Config {
            key: "MANTA_TOKEN".into(),
            message: format!(
                "no token for the cluster at {}: set MANTA_TOKEN (printed by `manta start --head`)",
                config.address
            ),
        })?
    } else {
        config.token.clone()
    };
    let env_u64 = |key: &str| -> Result<u64, Error> {
        std::env::var(key)
            .unwrap_or_default()
            .parse()
            .map_err(|_| Error::Config {
                key: key.into(),
                message: "a worker process needs it as a number".into(),
            })
    };
    let role = if raylet.is_empty() {
        // A driver runs no work of its own.
        config.num_cpus = 0.0;
        config.num_gpus = 0.0;
        config.resources = crate::config::CustomResources::default();
        worker::Role::Driver
    } else {
        worker::Role::Worker {
            raylet,
            job_id: env_u64(crate::config::vars::JOB_ID)?,
            node_id: env_u64(crate::config::vars::NODE_ID)?,
        }
    };
    worker::Cluster::join(worker::JoinOptions {
        gcs_address: config.address.clone(),
        token,
        role,
        max_inline: config.max_inline_object_bytes,
        shm: config.shm_transport,
        zero_copy: config.zero_copy_node,
    })
    .map(Some)
}

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use manta_transport::{Address, Connection, TransportConfig};

use crate::error::Error;

/// How long a blocking call to another member waits for its reply (`call_timeout` in the
/// configuration catalogue).
pub(crate) fn call_timeout() -> Duration {
    crate::config::current().call_timeout
}

/// Bits of an id below the creating worker's index.
pub(crate) const INDEX_SHIFT: u32 = crate::id::OWNER_SHIFT;

/// The worker index that created `id` (0: a process outside any cluster): the raw form of
/// [`ObjectId::owner`](crate::ObjectId::owner), for the wire's bare ids.
pub(crate) fn owner_of(id: u64) -> u64 {
    crate::ObjectId::from_u64(id).owner().as_u64()
}

/// Transport settings for a member named `name`.
pub(crate) fn transport_config(token: &str, name: String) -> TransportConfig {
    let mut c = TransportConfig::new(token.as_bytes().to_vec(), name);
    c.shm_spin = io_spin();
    c
}

/// Cores at or above which the I/O threads spin on their shared-memory rings by default.
///
/// A round trip through a worker process crosses four threads (the caller, the worker's I/O
/// thread, a slot, the caller's I/O thread). Where each can keep a core while it spins, no
/// hop pays a wake-up (5–150 µs on VMs); where fewer cores are free, spinning I/O threads take
/// the core from the slot they feed (measured on 2 vCPUs: a 20 µs spin made the round trip
/// 4× slower), so they park at once.
const SPIN_MIN_CORES: usize = 8;

/// How long a cluster I/O thread spins on an empty shared-memory ring before it parks:
/// `shm_spin` of the configuration catalogue when set, else 50 µs on nodes with at least
/// [`SPIN_MIN_CORES`] usable cores (the process's affinity mask), else 0.
pub(crate) fn io_spin() -> Duration {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    spin_for(crate::config::current().shm_spin, cores)
}

fn spin_for(setting: Option<Duration>, cores: usize) -> Duration {
    match setting {
        Some(spin) => spin,
        None if cores >= SPIN_MIN_CORES => Duration::from_micros(50),
        None => Duration::ZERO,
    }
}

/// Parses `host:port` into a socket address (resolving a host name).
pub(crate) fn parse_address(address: &str) -> Result<SocketAddr, Error> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Config {
            key: "address".into(),
            message: format!("{address:?} is not a HOST:PORT address"),
        })
}

/// A cluster error: `what` was being done, `message` went wrong.
pub(crate) fn cluster_error(what: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Cluster {
        what: what.into(),
        message: message.into(),
    }
}

/// The address of this host that reaches `peer` (what the routing table would use; nothing is
/// sent). Loopback for a loopback peer.
pub fn local_ip_towards(peer: SocketAddr) -> IpAddr {
    if peer.ip().is_loopback() {
        return IpAddr::V4(Ipv4Addr::LOCALHOST);
    }
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| {
            s.connect(peer)?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Connects to `address` with the cluster's token.
pub(crate) async fn connect(address: &str, token: &str, name: String) -> Result<Connection, Error> {
    let addr = parse_address(address)?;
    Connection::connect(&Address::Tcp(addr), &transport_config(token, name))
        .await
        .map_err(|e| Error::Cluster {
            what: format!("connecting to {address}"),
            message: e.to_string(),
        })
}

/// Blocks the calling (non-tokio) thread on a reply, for at most `timeout`.
pub(crate) fn wait_reply<T>(
    rx: tokio::sync::oneshot::Receiver<Result<T, Error>>,
    timeout: Duration,
    what: &str,
) -> Result<T, Error> {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let deadline = std::time::Instant::now() + timeout;
    let waker = Waker::from(Arc::new(crate::api::ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut rx = std::pin::pin!(rx);
    loop {
        match rx.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(r)) => return r,
            Poll::Ready(Err(_)) => {
                return Err(Error::Cluster {
                    what: what.to_owned(),
                    message: "no reply: the connection closed".into(),
                });
            }
            Poll::Pending => {
                let now = std::time::Instant::now();
                if now >= deadline {
                    return Err(Error::Cluster {
                        what: what.to_owned(),
                        message: format!("no reply within {timeout:?}"),
                    });
                }
                std::thread::park_timeout(deadline - now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_threads_spin_only_where_cores_are_plentiful() {
        assert_eq!(spin_for(None, 2), Duration::ZERO);
        assert_eq!(spin_for(None, SPIN_MIN_CORES - 1), Duration::ZERO);
        assert_eq!(spin_for(None, SPIN_MIN_CORES), Duration::from_micros(50));
        // An explicit setting wins either way; garbage falls back to the default.
        assert_eq!(
            spin_for(Some(Duration::from_micros(20)), 2),
            Duration::from_micros(20)
        );
        assert_eq!(spin_for(Some(Duration::ZERO), 64), Duration::ZERO);
    }
}
