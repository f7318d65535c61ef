//! The CLI's queries of a running cluster (`manta status`, `manta list`, `manta stop`): each
//! connects to the GCS as `cli`, asks, and leaves. `list_work` also asks every live worker
//! for what it owns and runs (`ListWork`).

use crate::sync::Arc;
use std::time::Duration;

use super::peer::{Handler, Peer};
use super::proto::{Msg, PgOp, PgRow};
use super::raylet::io_runtime;
use super::{call_timeout, cluster_error};
use crate::error::Error;

/// One node in [`ClusterState`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeRow {
    /// Node id.
    pub node_id: u64,
    /// Raylet address.
    pub address: String,
    /// Host name.
    pub hostname: String,
    /// ALIVE or DEAD.
    pub alive: bool,
    /// `(name, available, total)`.
    pub resources: Vec<(String, f64, f64)>,
    /// Seconds since it joined.
    pub age_s: f64,
    /// Why it died.
    pub death: String,
    /// The topology its raylet found (cores, NUMA nodes, GPUs, NICs).
    pub topology: String,
    /// Its raylet's host and network namespace ([`host_id`](super::host_id)).
    pub host_id: String,
    /// Live worker processes registered on it (every job's).
    pub workers: u32,
    /// The page kind of its workers' store arenas, as their reports last said ("2 MiB huge
    /// pages", "1 GiB huge pages", "4 KiB pages (THP advised)"); empty before any worker ran.
    pub store_pages: String,
}

/// One actor in [`ClusterState`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ActorRow {
    /// Actor id.
    pub actor_id: u64,
    /// Name, if named (`namespace/name` outside the default namespace).
    pub name: String,
    /// Class.
    pub class_name: String,
    /// Node id.
    pub node_id: u64,
    /// Worker index.
    pub worker: u64,
    /// ALIVE (or RESTARTING) rather than DEAD.
    pub alive: bool,
    /// RESTARTING: its worker died and it is being started again (`max_restarts`).
    pub restarting: bool,
    /// Times it was restarted after its worker died.
    pub num_restarts: u32,
    /// Why it died, if it did.
    pub death: String,
}

/// A snapshot of a running cluster, for `manta status` and `manta list`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClusterState {
    /// The node table.
    pub nodes: Vec<NodeRow>,
    /// The actor directory.
    pub actors: Vec<ActorRow>,
}

/// A handler for connections that only carry replies (CLI queries).
struct RepliesOnly;

impl Handler for RepliesOnly {
    fn on_message(self: Arc<Self>, _peer: &Arc<Peer>, _msg: Msg) {}
    fn on_close(self: Arc<Self>, _peer: &Arc<Peer>, _reason: &str) {}
}

/// Reads the node table and actor directory of the cluster whose GCS is at `address`.
pub fn query(address: &str, token: &str) -> Result<ClusterState, Error> {
    let io = io_runtime()?;
    io.block_on(async {
        let conn = super::connect(address, token, "cli".into()).await?;
        let gcs = Peer::spawn(conn, "gcs".into(), Arc::new(RepliesOnly));
        let nodes = gcs.request(|request_id| Msg::GetNodes { request_id });
        let actors = gcs.request(|request_id| Msg::ListActors { request_id });
        let timeout = |what: &'static str| move |_| cluster_error(what, "no reply in time");
        let nodes = tokio::time::timeout(call_timeout(), nodes)
            .await
            .map_err(timeout("reading the node table"))?
            .map_err(|_| cluster_error("reading the node table", "connection closed"))??;
        let actors = tokio::time::timeout(call_timeout(), actors)
            .await
            .map_err(timeout("reading the actor directory"))?
            .map_err(|_| cluster_error("reading the actor directory", "connection closed"))??;
        let Msg::Nodes { nodes, .. } = nodes else {
            return Err(cluster_error("reading the node table", "unexpected reply"));
        };
        let Msg::Actors { actors, .. } = actors else {
            return Err(cluster_error(
                "reading the actor directory",
                "unexpected reply",
            ));
        };
        gcs.shutdown("done");
        Ok(ClusterState {
            nodes: nodes
                .into_iter()
                .map(|n| NodeRow {
                    node_id: n.node_id,
                    address: n.address,
                    hostname: n.hostname,
                    alive: n.alive,
                    resources: n
                        .resources
                        .into_iter()
                        .map(|r| (r.name, r.available, r.total))
                        .collect(),
                    age_s: n.age_s,
                    death: n.death,
                    topology: n.topology,
                    host_id: n.host_id,
                    workers: n.workers,
                    store_pages: n.store_pages,
                })
                .collect(),
            actors: actors
                .into_iter()
                .map(|a| ActorRow {
                    actor_id: a.actor_id,
                    name: crate::runtime::display_name(&a.name),
                    class_name: a.class_name,
                    node_id: a.node_id,
                    worker: a.worker,
                    alive: a.alive,
                    restarting: a.restarting,
                    num_restarts: a.num_restarts,
                    death: a.death,
                })
                .collect(),
        })
    })
}

/// One task in [`WorkList`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TaskListing {
    /// Task (or actor call) id.
    pub task_id: u64,
    /// Function, method or actor class.
    pub name: String,
    /// SUBMITTED (seen by its owner) or RUNNING (seen by its executor).
    pub state: String,
    /// The owner's worker index.
    pub owner: u64,
    /// The executing worker's index.
    pub worker: u64,
    /// The executing node.
    pub node_id: u64,
}

/// One object in [`WorkList`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ObjectListing {
    /// Object id.
    pub object_id: u64,
    /// Encoded size in bytes.
    pub size: u64,
    /// inline, store, remote, pending or failed.
    pub kind: String,
    /// held (a result kept for its owner), shared (referenced from other processes) or
    /// borrowed (a copy pulled from its owner).
    pub role: String,
    /// The worker holding its bytes.
    pub holder: u64,
    /// The owner's worker index.
    pub owner: u64,
}

/// Every worker's tasks and objects, for `manta list tasks|objects`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkList {
    /// Tasks submitted or running.
    pub tasks: Vec<TaskListing>,
    /// Objects held, shared or borrowed.
    pub objects: Vec<ObjectListing>,
    /// Whether some worker did not answer in time.
    pub partial: bool,
}

/// Gathers every worker's tasks and objects from the cluster whose GCS is at `address`.
pub fn list_work(address: &str, token: &str) -> Result<WorkList, Error> {
    let io = io_runtime()?;
    io.block_on(async {
        let conn = super::connect(address, token, "cli".into()).await?;
        let gcs = Peer::spawn(conn, "gcs".into(), Arc::new(RepliesOnly));
        let reply = gcs.request(|request_id| Msg::ListWork { request_id });
        let reply = tokio::time::timeout(call_timeout(), reply)
            .await
            .map_err(|_| cluster_error("listing work", "no reply in time"))?
            .map_err(|_| cluster_error("listing work", "connection closed"))??;
        gcs.shutdown("done");
        let Msg::Work {
            tasks,
            objects,
            partial,
            ..
        } = reply
        else {
            return Err(cluster_error("listing work", "unexpected reply"));
        };
        Ok(WorkList {
            tasks: tasks
                .into_iter()
                .map(|t| TaskListing {
                    task_id: t.task_id,
                    name: t.name,
                    state: t.state,
                    owner: t.owner,
                    worker: t.worker,
                    node_id: t.node_id,
                })
                .collect(),
            objects: objects
                .into_iter()
                .map(|o| ObjectListing {
                    object_id: o.object_id,
                    size: o.size,
                    kind: o.kind,
                    role: o.role,
                    holder: o.holder,
                    owner: o.owner,
                })
                .collect(),
            partial,
        })
    })
}

/// The placement groups of the cluster whose GCS is at `address` (pending, created, and the
/// last removed ones), by id.
pub fn list_placement_groups(
    address: &str,
    token: &str,
) -> Result<Vec<crate::PlacementGroupInfo>, Error> {
    let io = io_runtime()?;
    io.block_on(async {
        let what = "listing placement groups";
        let conn = super::connect(address, token, "cli".into()).await?;
        let gcs = Peer::spawn(conn, "gcs".into(), Arc::new(RepliesOnly));
        let reply =
            gcs.request(|request_id| super::pg::msg(PgOp::List, request_id, PgRow::default(), ""));
        let reply = tokio::time::timeout(call_timeout(), reply)
            .await
            .map_err(|_| cluster_error(what, "no reply in time"))?
            .map_err(|_| cluster_error(what, "connection closed"))??;
        gcs.shutdown("done");
        let Msg::Pg { groups, .. } = reply else {
            return Err(cluster_error(what, "unexpected reply"));
        };
        Ok(groups.iter().map(super::pg::info_of).collect())
    })
}

/// Asks the cluster whose GCS is at `address` to stop (every raylet stops its workers and
/// exits, then the head).
pub fn stop_cluster(address: &str, token: &str) -> Result<(), Error> {
    let io = io_runtime()?;
    io.block_on(async {
        let conn = super::connect(address, token, "cli".into()).await?;
        let gcs = Peer::spawn(conn, "gcs".into(), Arc::new(RepliesOnly));
        gcs.send(Msg::Stop {
            reason: "manta stop".into(),
        });
        // Let the writer flush before the runtime goes away.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    })
}
