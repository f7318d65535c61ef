//! An actor group's call to every member as a tree (`ActorGroup::call`): the caller sends one
//! `GroupCall` (tag 100) to the first worker hosting members; each worker calls its own
//! members and forwards the rest, split in `group_call_fanout` runs of workers, each to the
//! first worker of its run, so no process sends more than `fanout + 1` messages and the call
//! reaches every worker in O(log workers) hops. Each member's worker answers `TaskDone` to the
//! caller directly, as for any actor call: the caller owns every result and keeps one
//! in-flight entry per member (its worker's death fails or retries it as usual).
//!
//! Order: a member reached through relays could be overtaken by a later direct call from the
//! same caller. So the caller *fences* each member while its tree call is unanswered: later
//! calls to it wait in its proxy (`supervision.rs`, `Fence`) and go, in order, when the
//! answer comes. A later group call by the same route needs no wait (each hop is one ordered
//! connection, and every worker forwards in arrival order); one by another route (a slice,
//! another fan-out), or while calls wait at a fence, goes member by member and waits there.
//! The other way round, a relayed call could overtake an earlier direct call still on its
//! way: while the last call sent to a member on its own is unanswered, the group call goes
//! member by member too.
//!
//! A relay's death: the calls it had to forward may never arrive, and no worker on their way
//! answers for them. The caller knows each call's relays (the tree is a pure function of the
//! workers' order and the fan-out, [`tree_paths`]); when one dies, the calls below it that are
//! unanswered fail with `WorkerCrashed` naming it (they may or may not have run, as a call
//! whose worker dies) — no hang.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::ops::Range;

use super::proto::{Arg, GroupTarget, Msg};
use super::submit::{ActorFlight, InFlight, WireArgs};
use super::supervision::RemoteActor;
use super::task_manager::Completion;
use super::worker::Cluster;
use crate::actor::RawActorHandle;
use crate::error::Error;
use crate::object::{ObjectCell, Waiter};
use crate::sync::{Arc, Mutex, lock};
use crate::task::ArgSlot;

/// The caller's record of its relayed group calls: call id → (the workers relaying it, the
/// worker hosting its member).
#[derive(Debug, Default)]
pub(crate) struct GroupRelays(Mutex<HashMap<u64, (Vec<u64>, u64)>>);

/// `0..n` cut into at most `parts` consecutive ranges of near-equal length (none empty).
pub(super) fn split(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.max(1).min(n);
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 0..parts {
        let len = n / parts + usize::from(i < n % parts);
        out.push(start..start + len);
        start += len;
    }
    out
}

/// For workers `order` (the first is the root the caller sends to), the relays on the way to
/// each: `paths[i]` lists the workers that forward the call to `order[i]`, root first. It
/// mirrors [`Cluster::group_call_pushed`]'s forwarding.
pub(super) fn tree_paths(order: &[u64], fanout: usize) -> Vec<Vec<u64>> {
    fn walk(
        order: &[u64],
        at: usize,
        len: usize,
        fanout: usize,
        path: &mut Vec<u64>,
        out: &mut [Vec<u64>],
    ) {
        // `order[at]` holds the call for `order[at..at + len]`.
        out[at] = path.clone();
        path.push(order[at]);
        for r in split(len - 1, fanout) {
            walk(order, at + 1 + r.start, r.len(), fanout, path, out);
        }
        path.pop();
    }
    let mut out = vec![Vec::new(); order.len()];
    if !order.is_empty() {
        walk(order, 0, order.len(), fanout, &mut Vec::new(), &mut out);
    }
    out
}

/// A name for the tree's shape: the workers' order and the fan-out.
fn route_of(order: &[u64], fanout: usize) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    order.hash(&mut h);
    fanout.hash(&mut h);
    h.finish()
}

impl Cluster {
    /// The caller's side (see the module docs): `None`, with nothing sent, when a member is
    /// hosted here, not at a worker (restarting, dead) or not known to be created here (its
    /// constructor not yet answered, or a handle from another process), an argument is held here for its
    /// call (one held argument is freed with one call), or the fan-out is 0.
    pub(crate) fn group_call(
        &self,
        members: &[&RawActorHandle],
        method: &'static str,
        args: &[ArgSlot],
    ) -> Option<Vec<Arc<ObjectCell>>> {
        let rt = self.runtime()?;
        let fanout = rt.config.group_call_fanout as usize;
        if fanout == 0 || members.len() < 2 || self.stopped.load(crate::sync::Ordering::Acquire) {
            return None;
        }
        let mut at: Vec<(RemoteActor, u64)> = Vec::with_capacity(members.len());
        for m in members {
            // Created, as its owner saw: the creation went to the host on the owner's own
            // connection, which a relayed call would not wait behind (a handle passed here
            // from another process does not know: its calls go one by one).
            let created = m
                .cell
                .created_cell()
                .is_some_and(|c| matches!(c.get(), Some(Ok(_))));
            if m.cell.is_dead() || !created {
                return None;
            }
            let remote = RemoteActor::of_cell(&m.cell)?;
            let (worker, _) = remote.target()?;
            // A call sent on its own and unanswered: the relayed one could overtake it.
            if remote
                .last_direct()
                .is_some_and(|id| self.tasks.is_in_flight(id))
            {
                return None;
            }
            if worker == self.index {
                return None;
            }
            at.push((remote.clone(), worker));
        }
        let ids: Vec<_> = (0..members.len()).map(|_| rt.next_object_id()).collect();
        // The workers in order of their first member; the targets grouped by worker so.
        let mut order: Vec<u64> = Vec::new();
        let mut slot_of: HashMap<u64, usize> = HashMap::new();
        for (_, w) in &at {
            slot_of.entry(*w).or_insert_with(|| {
                order.push(*w);
                order.len() - 1
            });
        }
        let WireArgs {
            args: wire, held, ..
        } = self.wire_args(&rt, args);
        if !held.is_empty() {
            self.release_held_args(&held);
            return None;
        }
        let route = route_of(&order, fanout);
        for (i, (remote, _)) in at.iter().enumerate() {
            if !remote.fence_enter(route) {
                for ((remote, _), m) in at[..i].iter().zip(members) {
                    self.fence_leave(remote, m.cell.id().as_u64());
                }
                return None;
            }
        }
        let paths = tree_paths(&order, fanout);
        let me = self.me.get().cloned().unwrap_or_default();
        let mut cells = Vec::with_capacity(members.len());
        let mut targets = Vec::with_capacity(members.len());
        for (((remote, worker), m), id) in at.iter().zip(members).zip(ids) {
            let actor_id = m.cell.id().as_u64();
            let call_id = id.as_u64();
            let cell = Arc::new(ObjectCell::pending(id, None));
            self.tasks.pushed(
                call_id,
                InFlight {
                    cell: cell.clone(),
                    name: method,
                    worker: *worker,
                    node: None,
                    load: Vec::new(),
                    args: args.to_vec().into_boxed_slice(),
                    retry: None,
                    actor: Some(ActorFlight::Call {
                        actor_id,
                        method,
                        left: remote.max_task_retries(),
                    }),
                    keep: Some((m.cell.clone(), m.borrow.clone())),
                    held_args: Vec::new(),
                },
            );
            let path = &paths[slot_of[worker]];
            if !path.is_empty() {
                lock(&self.group_relays.0).insert(call_id, (path.clone(), *worker));
            }
            // Answered or failed, however: the relay record goes and the fence lifts (on an
            // I/O thread: the completing thread may hold the proxy's location lock).
            let (me, remote) = (me.clone(), remote.clone());
            let done = move || {
                let Some(c) = me.upgrade() else { return };
                lock(&c.group_relays.0).remove(&call_id);
                let c2 = c.clone();
                c.io.spawn(async move { c2.fence_leave(&remote, actor_id) });
            };
            if let Err(Waiter::Callback(f)) = cell.register(Waiter::Callback(Box::new(done))) {
                f();
            }
            targets.push(GroupTarget {
                actor_id,
                call_id,
                worker: *worker,
            });
            cells.push(cell);
        }
        targets.sort_by_key(|t| slot_of[&t.worker]);
        let root = order[0];
        let peer = self.peer(root);
        peer.send(Msg::GroupCall {
            caller: self.index,
            method: method.to_owned(),
            args: wire,
            targets,
            fanout: fanout as u32,
        });
        if peer.is_closed() {
            self.worker_lost(root, &peer.closed_error().to_string());
        }
        Some(cells)
    }

    /// A worker's side: forwards the targets of other workers as `fanout` runs, then calls
    /// its own members, each answering the caller.
    pub(super) fn group_call_pushed(
        &self,
        caller: u64,
        method: String,
        args: Vec<Arg>,
        targets: Vec<GroupTarget>,
        fanout: u32,
    ) {
        let Some(rt) = self.runtime() else { return };
        let (mine, others): (Vec<GroupTarget>, Vec<GroupTarget>) =
            targets.into_iter().partition(|t| t.worker == self.index);
        // The runs of one worker each, in order.
        let mut runs: Vec<Range<usize>> = Vec::new();
        for (i, t) in others.iter().enumerate() {
            match runs.last_mut() {
                Some(r) if others[r.start].worker == t.worker => r.end = i + 1,
                _ => runs.push(i..i + 1),
            }
        }
        for part in split(runs.len(), fanout as usize) {
            let range = runs[part.start].start..runs[part.end - 1].end;
            let child = others[range.start].worker;
            self.peer(child).send(Msg::GroupCall {
                caller,
                method: method.clone(),
                args: args.clone(),
                targets: others[range].to_vec(),
                fanout,
            });
        }
        if mine.is_empty() {
            return;
        }
        let owner = self.peer(caller);
        for t in mine {
            let slots: Vec<ArgSlot> = args.iter().cloned().map(|a| self.local_arg(a)).collect();
            let cell = rt.call_pushed(t.actor_id, t.call_id, &method, slots);
            self.reply_when_done(&owner, t.call_id, &method, &cell);
        }
    }

    /// Worker `index` died: the group calls it was to relay that are unanswered fail (see the
    /// module docs).
    pub(super) fn group_relay_lost(&self, index: u64, reason: &str) {
        let lost: Vec<(u64, u64)> = {
            let mut relays = lock(&self.group_relays.0);
            let ids: Vec<(u64, u64)> = relays
                .iter()
                .filter(|(_, (path, _))| path.contains(&index))
                .map(|(id, (_, worker))| (*id, *worker))
                .collect();
            for (id, _) in &ids {
                relays.remove(id);
            }
            ids
        };
        for (call_id, worker) in lost {
            if let Completion::Done(f) = self.tasks.complete(call_id, Some(worker)) {
                f.cell.complete(Err(Error::WorkerCrashed {
                    task: f.name.to_owned(),
                    reason: format!(
                        "worker process {index}, which relayed this actor group call to \
                         worker process {worker}, died or became unreachable ({reason}); \
                         the call may or may not have run"
                    ),
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_even_and_covers() {
        assert_eq!(split(0, 2), Vec::<Range<usize>>::new());
        assert_eq!(split(1, 2), vec![0..1]);
        assert_eq!(split(5, 2), vec![0..3, 3..5]);
        assert_eq!(split(7, 3), vec![0..3, 3..5, 5..7]);
        assert_eq!(split(2, 0), vec![0..2]);
    }

    #[test]
    fn the_tree_is_logarithmic_and_each_worker_is_reached_once() {
        for fanout in [1usize, 2, 4] {
            for n in [1usize, 2, 3, 16, 100, 1024] {
                let order: Vec<u64> = (10..10 + n as u64).collect();
                let paths = tree_paths(&order, fanout);
                assert_eq!(paths.len(), n);
                assert!(paths[0].is_empty(), "the root gets it from the caller");
                let depth = paths.iter().map(Vec::len).max().unwrap_or(0);
                // Each hop keeps at most ceil((len - 1) / fanout) workers below it.
                let mut bound = 0;
                let mut left = n;
                while left > 1 {
                    left = (left - 1).div_ceil(fanout);
                    bound += 1;
                }
                assert_eq!(depth, bound, "n {n} fanout {fanout}");
                if fanout == 2 && n == 1024 {
                    assert!(depth <= 10, "depth {depth}");
                }
                // How many each worker forwards to: at most `fanout`.
                let mut children: HashMap<u64, usize> = HashMap::new();
                for p in &paths[1..] {
                    *children.entry(*p.last().unwrap()).or_default() += 1;
                }
                assert!(children.values().all(|&c| c <= fanout));
                // Every relay of a worker comes before it in the order.
                for (i, p) in paths.iter().enumerate() {
                    for r in p {
                        assert!(order[..i].contains(r));
                    }
                }
            }
        }
    }
}
