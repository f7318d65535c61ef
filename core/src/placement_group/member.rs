//! Work in a group: where a task or actor runs in it, and an actor group member's rank.

use super::PlacementGroup;

/// Where a task or actor runs in a group: set by `.placement_group(&pg, bundle)`.
#[derive(Clone, Debug)]
pub(crate) struct InGroup {
    pub(crate) group: PlacementGroup,
    pub(crate) bundle: Option<usize>,
}

/// A member's place in an actor group: its placement group, its rank (= its bundle) and the
/// group's size. [`crate::ActorGroup::spawn`] hands one to the closure that creates each
/// member; pass it to the actor's options (`A::options().group_member(member)`).
#[derive(Clone, Debug)]
pub struct GroupMember {
    pub(crate) group: PlacementGroup,
    pub(crate) rank: Rank,
}

/// A member's rank and its group's size (what the member's methods see).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rank {
    pub(crate) rank: u32,
    pub(crate) world_size: u32,
}

impl GroupMember {
    /// The member's rank, `0..world_size`.
    pub fn rank(&self) -> usize {
        self.rank.rank as usize
    }
    /// The number of members.
    pub fn world_size(&self) -> usize {
        self.rank.world_size as usize
    }
    /// The name of the group's communicator: pass it to the member (a constructor argument)
    /// and call [`Communicator::join_group`](crate::collective::Communicator::join_group) with
    /// it there; every member of the group gets the same name, no other group does.
    pub fn collective_name(&self) -> String {
        format!("manta-actor-group-{}", self.group.id().as_u64())
    }
}

std::thread_local! {
    static MEMBER: std::cell::Cell<Option<Rank>> = const { std::cell::Cell::new(None) };
}

/// Makes `member` the thread's current group member while the guard lives (an actor
/// group's method or constructor runs).
pub(crate) struct MemberGuard(Option<Rank>);

impl MemberGuard {
    pub(crate) fn enter(member: Option<Rank>) -> Self {
        MemberGuard(MEMBER.with(|m| m.replace(member)))
    }
}

impl Drop for MemberGuard {
    fn drop(&mut self) {
        MEMBER.with(|m| m.set(self.0));
    }
}

/// The rank of the actor-group member whose method (or constructor) calls it; `None`
/// outside an actor group's member.
pub fn group_rank() -> Option<usize> {
    MEMBER.with(|m| m.get().map(|m| m.rank as usize))
}

/// The size of the actor group whose member's method (or constructor) calls it; `None`
/// outside an actor group's member.
pub fn group_world_size() -> Option<usize> {
    MEMBER.with(|m| m.get().map(|m| m.world_size as usize))
}
