//! Actor groups (meshes): N actors of one class, one per bundle of a placement group, each
//! knowing its rank, addressed as one.
//!
//! [`ActorGroup::spawn`] creates member `rank` in bundle `rank` (its options carry a
//! [`GroupMember`]); inside its constructor and methods [`crate::group_rank`] and
//! [`crate::group_world_size`] say where it stands. [`ActorGroup::call`] issues one call per
//! member, in rank order, and returns their results in that order; calls from one caller stay
//! ordered per member because each is an ordinary actor call on that member's mailbox.
//! [`ActorGroup::slice`] addresses a subset (ranks keep their value). A group serialises as
//! its members' handles, so it passes to tasks and actors as handles do.

use std::ops::{Bound, RangeBounds};

use serde::{Deserialize, Serialize};

use crate::actor::{Actor, ActorHandle, RawActorHandle, RecordedCall, record_calls};
use crate::error::Error;
use crate::object::ObjectRef;
use crate::placement_group::{GroupMember, PlacementGroup, Rank};
use crate::task::ArgSlot;

/// Whether two arguments are the same value for every member: equal inline bytes with no
/// nested references, or the same object.
fn same_arg(a: &ArgSlot, b: &ArgSlot) -> bool {
    use crate::object::Payload;
    match (a, b) {
        (ArgSlot::Value(a), ArgSlot::Value(b)) => match (&a.data, &b.data) {
            (Payload::Inline(x), Payload::Inline(y)) => {
                a.nested.is_empty() && b.nested.is_empty() && x[..] == y[..]
            }
            _ => false,
        },
        (ArgSlot::Ref(a), ArgSlot::Ref(b)) => crate::sync::Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// N actors of class `A`, one per bundle of a placement group (see the module docs).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct ActorGroup<A: Actor> {
    /// The members addressed, in rank order.
    members: Vec<ActorHandle<A>>,
    /// Their ranks (consecutive: a slice keeps the ranks of the whole group).
    first_rank: usize,
    world_size: usize,
}

impl<A: Actor> Clone for ActorGroup<A> {
    fn clone(&self) -> Self {
        ActorGroup {
            members: self.members.clone(),
            first_rank: self.first_rank,
            world_size: self.world_size,
        }
    }
}

impl<A: Actor> std::fmt::Debug for ActorGroup<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorGroup")
            .field("class", &A::CLASS.name())
            .field(
                "ranks",
                &(self.first_rank..self.first_rank + self.members.len()),
            )
            .field("world_size", &self.world_size)
            .finish()
    }
}

impl<A: Actor> ActorGroup<A> {
    /// Creates one member per bundle of `pg`: `create(member)` builds member `rank`, passing
    /// `member` to the actor's options, e.g.
    /// `ActorGroup::spawn(&pg, |m| Shard::options().group_member(&m).remote(m.rank()))`.
    /// A member created without its `GroupMember` is an [`Error::InvalidArgument`] (it would
    /// not be in its bundle nor know its rank).
    pub fn spawn(
        pg: &PlacementGroup,
        mut create: impl FnMut(GroupMember) -> ActorHandle<A>,
    ) -> Result<Self, Error> {
        let world_size = pg.bundle_count();
        let mut members = Vec::with_capacity(world_size);
        for rank in 0..world_size {
            let member = GroupMember {
                group: pg.clone(),
                rank: Rank {
                    rank: rank as u32,
                    world_size: world_size as u32,
                },
            };
            let handle = create(member);
            let cell = &handle.as_raw().cell;
            let wrong = cell.member()
                != Some(Rank {
                    rank: rank as u32,
                    world_size: world_size as u32,
                });
            if wrong || cell.is_dead() {
                for m in &members {
                    let _ = crate::api::kill(m);
                }
                if !wrong {
                    // Refused at creation (its options, or its group): that error.
                    return Err(cell.death_error());
                }
                let _ = crate::api::kill(&handle);
                return Err(Error::InvalidArgument {
                    what: format!("ActorGroup::spawn of {}", A::CLASS.name()),
                    message: format!(
                        "member {rank} was created without its GroupMember: \
                         pass it to the options (`.group_member(&member)`)"
                    ),
                });
            }
            members.push(handle);
        }
        Ok(ActorGroup {
            members,
            first_rank: 0,
            world_size,
        })
    }

    /// How many members this group (or slice) addresses.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether it addresses none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The size of the whole group (a slice keeps it).
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The ranks addressed, in order.
    pub fn ranks(&self) -> std::ops::Range<usize> {
        self.first_rank..self.first_rank + self.members.len()
    }

    /// The handle of member `rank` (a rank of the whole group), if addressed here.
    pub fn member(&self, rank: usize) -> Option<&ActorHandle<A>> {
        rank.checked_sub(self.first_rank)
            .and_then(|i| self.members.get(i))
    }

    /// The handles addressed, in rank order.
    pub fn members(&self) -> &[ActorHandle<A>] {
        &self.members
    }

    /// Calls `f` on every member in rank order and returns their results in that order:
    /// `group.call(|m| m.step(3))`. `f` runs once per member and should make one call.
    ///
    /// In a cluster, when every member gets the same method and arguments (inline values or
    /// the same `ObjectRef`s) and lives in another process, the call travels as a tree: the
    /// caller sends one message to the first worker hosting members, which calls its own and
    /// forwards the rest to `group_call_fanout` workers, and so on; each member's result comes
    /// back to the caller directly. Calls from this caller stay ordered per member (a later
    /// call to a member waits here until the member answered the tree's call). Otherwise, and
    /// embedded (one process: a call is a push onto the member's mailbox), each member gets
    /// its call from the caller.
    pub fn call<R>(&self, mut f: impl FnMut(&ActorHandle<A>) -> ObjectRef<R>) -> Vec<ObjectRef<R>> {
        let in_cluster = self.members.len() >= 2
            && crate::runtime::current_inner().is_some_and(|rt| rt.cluster.is_some());
        if !in_cluster {
            return self.members.iter().map(&mut f).collect();
        }
        // Record each member's call, then send them as one tree or, failing that, one by one.
        let recorded: Vec<(ObjectRef<R>, Vec<RecordedCall>)> =
            self.members.iter().map(|m| record_calls(|| f(m))).collect();
        if let Some(cells) = self.tree_call(&recorded) {
            return cells.into_iter().map(ObjectRef::from_cell).collect();
        }
        recorded
            .into_iter()
            .zip(&self.members)
            .map(|((returned, calls), m)| {
                let mut result = None;
                for call in calls {
                    let is_returned = call.is(&returned);
                    let r: ObjectRef<R> = m.as_raw().call(call.method, call.args);
                    if is_returned {
                        result = Some(r);
                    }
                }
                result.unwrap_or(returned)
            })
            .collect()
    }

    /// Sends the recorded calls as one tree, if they are one call of one method with the
    /// same arguments on every member and the cluster can relay it.
    fn tree_call<R>(
        &self,
        recorded: &[(ObjectRef<R>, Vec<RecordedCall>)],
    ) -> Option<Vec<crate::sync::Arc<crate::object::ObjectCell>>> {
        let (first_ref, first) = recorded.first()?;
        let [first] = first.as_slice() else {
            return None;
        };
        if !first.is(first_ref) {
            return None;
        }
        let args: Vec<ArgSlot> = first
            .args
            .iter()
            .map(|a| a.as_ref().ok().cloned())
            .collect::<Option<_>>()?;
        for (returned, calls) in &recorded[1..] {
            let [call] = calls.as_slice() else {
                return None;
            };
            if !call.is(returned)
                || !std::ptr::eq(call.method, first.method)
                || call.args.len() != args.len()
                || !call
                    .args
                    .iter()
                    .zip(&args)
                    .all(|(a, b)| a.as_ref().is_ok_and(|a| same_arg(a, b)))
            {
                return None;
            }
        }
        // A cancelled caller's calls fail one by one (`Cancelled`), as direct calls do.
        crate::cancel::check().ok()?;
        let rt = crate::runtime::current_inner()?;
        let cluster = rt.cluster.as_ref()?;
        let members: Vec<&RawActorHandle> = self.members.iter().map(|m| m.as_raw()).collect();
        cluster.group_call(&members, RawActorHandle::method_name(first.method), &args)
    }

    /// Calls `f(rank, member)` on every member in rank order: per-member arguments.
    pub fn call_ranked<R>(
        &self,
        mut f: impl FnMut(usize, &ActorHandle<A>) -> ObjectRef<R>,
    ) -> Vec<ObjectRef<R>> {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| f(self.first_rank + i, m))
            .collect()
    }

    /// The members of ranks `range` (ranks of the whole group, within this slice), as a group
    /// that keeps their ranks and the world size. A range outside is
    /// [`Error::InvalidArgument`].
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Result<ActorGroup<A>, Error> {
        let have = self.ranks();
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => have.start,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e + 1,
            Bound::Excluded(&e) => e,
            Bound::Unbounded => have.end,
        };
        if start < have.start || end > have.end || start > end {
            return Err(Error::InvalidArgument {
                what: "ActorGroup::slice".into(),
                message: format!("ranks {start}..{end} are not within {have:?}"),
            });
        }
        Ok(ActorGroup {
            members: self.members[start - self.first_rank..end - self.first_rank].to_vec(),
            first_rank: start,
            world_size: self.world_size,
        })
    }
}
