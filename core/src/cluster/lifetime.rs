//! The end of an actor's life as the cluster's directory sees it, for deaths its host decides
//! alone (`exit_actor`).

use super::proto::{ActorInfo, Msg};
use super::worker::Cluster;
use crate::actor::ActorCell;

impl Cluster {
    /// Records in the GCS's directory that actor `cell`, hosted here, died (which frees its
    /// name there); the answer is of no use.
    pub(crate) fn record_actor_death(&self, cell: &ActorCell, reason: &str) {
        let actor = ActorInfo {
            actor_id: cell.id().as_u64(),
            name: cell.name().unwrap_or_default().to_owned(),
            class_name: cell.class_name().to_owned(),
            worker: self.index,
            node_id: self.node_id().unwrap_or(0),
            alive: false,
            death: reason.to_owned(),
        };
        drop(
            self.gcs
                .request(|request_id| Msg::RegisterActor { request_id, actor }),
        );
    }
}
