//! An actor created in a placement group that is still pending (Ray's: its creation waits for
//! the group). Its proxy gets a *waiting* place at once ([`RemoteActor::waiting`]): calls made
//! meanwhile park there, in order, as they do while an actor restarts. When the group's
//! `ready()` completes, a thread places and creates the actor as usual (placing may wait on
//! the GCS and raylets: never on an I/O thread), then sends the parked calls after its
//! `CreateActor` on the same connection. If the group is removed first, or placing fails, the
//! actor dies with that error and so do the parked calls; a kill meanwhile fails them too.

use super::supervision::RemoteActor;
use super::worker::Cluster;
use crate::actor::{ActorCell, ActorOptions};
use crate::error::Error;
use crate::object::{ObjectCell, Waiter};
use crate::runtime::RuntimeInner;
use crate::sync::Arc;
use crate::task::ArgSlot;

impl Cluster {
    /// Creates `actor` once `ready` (its placement group's) completes; see the module docs.
    pub(crate) fn create_actor_after(
        &self,
        rt: &Arc<RuntimeInner>,
        actor: &Arc<ActorCell>,
        created: Arc<ObjectCell>,
        args: Vec<ArgSlot>,
        options: &ActorOptions,
        ready: Arc<ObjectCell>,
    ) {
        let remote = RemoteActor::waiting(options.max_task_retries);
        actor.set_remote(Arc::new(remote.clone()));
        let me = self.me.get().cloned().unwrap_or_default();
        let rt = Arc::downgrade(rt);
        let cell = Arc::downgrade(actor);
        let options = options.clone();
        let r2 = ready.clone();
        let go = move || {
            let spawned = std::thread::Builder::new()
                .name("manta-pg-actor".into())
                .spawn(move || {
                    let (Some(c), Some(rt)) = (me.upgrade(), rt.upgrade()) else {
                        created.complete(Err(Error::ShutDown));
                        return;
                    };
                    let fail = |actor: Option<&Arc<ActorCell>>, e: Error| {
                        created.complete(Err(e.clone()));
                        if let Some(actor) = actor {
                            actor.die(e.clone());
                        }
                        c.never_placed(&remote, &e);
                    };
                    // Its last handle went while it waited: nothing to create.
                    let Some(actor) = cell.upgrade() else {
                        return fail(None, Error::ShutDown);
                    };
                    if actor.is_dead() {
                        return fail(Some(&actor), actor.death_error());
                    }
                    if let Some(Err(e)) = r2.get() {
                        return fail(Some(&actor), e.clone());
                    }
                    match c.create_actor_placed(&rt, &actor, created.clone(), args, &options) {
                        Ok((worker, peer)) => {
                            c.first_arrival(&remote, actor.id().as_u64(), worker, &peer);
                            if options.detached {
                                c.detach_remote(&actor);
                            }
                        }
                        Err(e) => fail(Some(&actor), e),
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start creating an actor of a placed group");
            }
        };
        if let Err(Waiter::Callback(f)) = ready.register(Waiter::Callback(Box::new(go))) {
            f();
        }
    }
}
