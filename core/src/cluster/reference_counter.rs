//! The reference counter (Ray's `ReferenceCounter`), sans I/O: all the reference-counting
//! state of one process — the objects it borrows from other owners and the objects it owns
//! that other processes borrow — as a state machine that takes events and returns the
//! messages to send. No sockets, threads or clocks: `borrow.rs` is the I/O shell that feeds it
//! what happens (a reference deserialised, a registration answered, a handle's last drop, a
//! message from a borrower, a death) and sends what it returns; `sim.rs` (tests) drives many
//! of them over a simulated network. raft-rs `RawNode` is the model: events in, messages out.
//!
//! The protocol itself (its numbered steps and why it is safe) is documented in `borrow.rs`.
//! What is counted here, and what is not:
//!
//! - **Borrowed** (the borrower's side, steps 1–3 and 5): one entry per object owned elsewhere
//!   that this process deserialised, holding the shell's handle `B` (a weak pointer to the
//!   registration: the shell's own handles count the local references, as `Arc`s do) and
//!   where its registration with the owner stands ([`Registration`]). Each registration gets
//!   an *epoch*, so the end of an old registration that a newer one replaced sends nothing.
//! - **Lent** (the owner's side, step 4): one entry per owned object some process borrows,
//!   holding the shell's strong handle `L` on it (dropping the last one frees the object) and
//!   the borrowing workers' indices.
//!
//! The local references of an owned object (its handles, the tasks in flight that take it as
//! an argument, the values it is nested in) are the shell's `Arc`s, not counts here: an
//! object is freed when its last strong handle drops, and a loan is one of them. Every loan
//! this machine gives back (`L` in a return value) is to be dropped by the caller after it
//! released its lock, since freeing may end other borrows.

use std::collections::{HashMap, HashSet};

use super::owner_of;

/// Where a borrow's registration with its owner stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Registration {
    /// `AddBorrowers` sent (or about to be), no answer yet.
    Pending,
    /// The owner counts this process (or this process is the owner).
    Acked,
    /// The owner did not know the object, or could not answer: reads fail.
    Failed,
}

/// The shell's handle on a borrow's registration.
pub(crate) trait BorrowHandle {
    /// Whether the registration is still referenced here (its last handle did not drop yet).
    fn is_live(&self) -> bool;
}

/// A message the shell is to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Out {
    /// Registers this process as a borrower of `objects`, owned by `owner` (step 3); the
    /// owner answers with the ones it does not know ([`ReferenceCounter::registered`]).
    AddBorrowers { owner: u64, objects: Vec<u64> },
    /// This process no longer borrows `object_id` (step 5).
    RemoveBorrower { owner: u64, object_id: u64 },
}

/// The owner's answer to one `AddBorrowers`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Answer<'a> {
    /// `BorrowersAdded`: every object but `missing` now counts this process.
    Added { missing: &'a [u64] },
    /// No answer: the owner died or became unreachable.
    Unreachable,
}

/// One object borrowed here.
#[derive(Debug)]
pub(crate) struct Borrowed<B> {
    pub(crate) handle: B,
    epoch: u64,
    state: Registration,
}

/// One object owned here that other processes borrow.
#[derive(Debug)]
struct Lent<L> {
    /// Keeps the object alive while anyone borrows it.
    loan: L,
    /// Worker indices of the borrowers.
    borrowers: HashSet<u64>,
}

/// The least size of the borrowed table at which dead entries are swept.
const SWEEP_MIN: usize = 1024;

/// All the reference-counting state of one process (see the module doc).
#[derive(Debug)]
pub(crate) struct ReferenceCounter<B, L> {
    /// This process's worker index (the owner part of the ids it creates).
    me: u64,
    /// References owned elsewhere that were deserialised here: one registration with the
    /// owner per object while any handle here lives.
    borrowed: HashMap<u64, Borrowed<B>>,
    /// Size of `borrowed` at which dead entries are next swept (doubles with the live ones, so
    /// sweeping stays amortised O(1) per borrow).
    sweep_at: usize,
    /// The epoch of the next registration.
    next_epoch: u64,
    /// Objects owned here that other processes borrow.
    lent: HashMap<u64, Lent<L>>,
}

impl<B: BorrowHandle, L> ReferenceCounter<B, L> {
    /// The reference counter of worker `me`, empty.
    pub(crate) fn new(me: u64) -> Self {
        ReferenceCounter {
            me,
            borrowed: HashMap::new(),
            sweep_at: SWEEP_MIN,
            next_epoch: 1,
            lent: HashMap::new(),
        }
    }

    // ----- the borrower's side ---------------------------------------------------------------

    /// The registration of borrowed object `id`, if one is recorded.
    pub(crate) fn borrowed(&self, id: u64) -> Option<&B> {
        self.borrowed.get(&id).map(|b| &b.handle)
    }

    /// The same, to update the handle (the shell re-makes a dead cell around a live
    /// registration).
    pub(crate) fn borrowed_mut(&mut self, id: u64) -> Option<&mut B> {
        self.borrowed.get_mut(&id).map(|b| &mut b.handle)
    }

    /// Every recorded registration (listings).
    pub(crate) fn borrowed_handles(&self) -> impl Iterator<Item = &B> {
        self.borrowed.values().map(|b| &b.handle)
    }

    /// Where registration `epoch` of `id` stands; `None` once it ended or was replaced.
    pub(crate) fn registration(&self, id: u64, epoch: u64) -> Option<Registration> {
        self.borrowed
            .get(&id)
            .filter(|b| b.epoch == epoch)
            .map(|b| b.state)
    }

    /// A reference to `id`, owned elsewhere, was deserialised and no live registration was
    /// found (step 1): records a new one, whose handle `make` makes from its epoch (with what
    /// the caller keeps of it), replacing a dead one. Dead entries are swept now and then.
    pub(crate) fn begin_borrow<T>(&mut self, id: u64, make: impl FnOnce(u64) -> (B, T)) -> T {
        if self.borrowed.len() >= self.sweep_at {
            // A dead acknowledged entry stays: its end (step 5) is on its way, and must send
            // its RemoveBorrower.
            self.borrowed
                .retain(|_, b| b.handle.is_live() || b.state == Registration::Acked);
            self.sweep_at = (self.borrowed.len() * 2).max(SWEEP_MIN);
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let (handle, kept) = make(epoch);
        self.borrowed.insert(
            id,
            Borrowed {
                handle,
                epoch,
                state: Registration::Pending,
            },
        );
        kept
    }

    /// The registrations `borrows` (`(id, epoch)`, all owned by `owner`) are to be registered
    /// (step 3): the message to send, or `None` when `owner` is this process or no process
    /// (they count as registered at once).
    pub(crate) fn register(&mut self, owner: u64, borrows: &[(u64, u64)]) -> Option<Out> {
        if owner == self.me || owner == 0 {
            self.registered(borrows, Answer::Added { missing: &[] });
            return None;
        }
        Some(Out::AddBorrowers {
            owner,
            objects: borrows.iter().map(|(id, _)| *id).collect(),
        })
    }

    /// The owner answered the registration of `borrows` (or could not): whether each is now
    /// registered (`true`) or failed (its reads are to fail).
    pub(crate) fn registered(&mut self, borrows: &[(u64, u64)], answer: Answer<'_>) -> Vec<bool> {
        let missing: Option<HashSet<u64>> = match answer {
            Answer::Added { missing } => Some(missing.iter().copied().collect()),
            Answer::Unreachable => None,
        };
        borrows
            .iter()
            .map(|&(id, epoch)| {
                let ok = missing.as_ref().is_some_and(|m| !m.contains(&id));
                if let Some(b) = self.borrowed.get_mut(&id).filter(|b| b.epoch == epoch) {
                    b.state = if ok {
                        Registration::Acked
                    } else {
                        Registration::Failed
                    };
                }
                ok
            })
            .collect()
    }

    /// The last handle here on registration `epoch` of `id` dropped (step 5): the
    /// `RemoveBorrower` to send, if the owner counts it. A registration that a newer one
    /// replaced sends nothing: the owner keeps one entry per borrowing process, and the newer
    /// one removes it when it ends.
    pub(crate) fn end_borrow(&mut self, id: u64, epoch: u64) -> Option<Out> {
        let b = self.borrowed.get(&id)?;
        if b.epoch != epoch {
            return None;
        }
        let b = self.borrowed.remove(&id)?;
        (b.state == Registration::Acked).then(|| Out::RemoveBorrower {
            owner: owner_of(id),
            object_id: id,
        })
    }

    // ----- the owner's side (lending) --------------------------------------------------------

    /// `AddBorrowers` from `borrower` (`None`: a connection that is no worker, or a process
    /// that cannot lend now) for `objects` (step 4): each object owned here is kept alive
    /// (by the strong handle `lookup` finds for it) until that worker removes itself or dies.
    /// Returns the objects not known here (freed, or never owned here): the answer.
    pub(crate) fn add_borrowers(
        &mut self,
        borrower: Option<u64>,
        objects: Vec<u64>,
        mut lookup: impl FnMut(u64) -> Option<L>,
    ) -> Vec<u64> {
        let Some(b) = borrower.filter(|b| *b != self.me) else {
            return objects;
        };
        let mut missing = Vec::new();
        for id in objects {
            if let Some(l) = self.lent.get_mut(&id) {
                l.borrowers.insert(b);
                continue;
            }
            match (owner_of(id) == self.me).then(|| lookup(id)).flatten() {
                Some(loan) => {
                    self.lent.insert(
                        id,
                        Lent {
                            loan,
                            borrowers: HashSet::from([b]),
                        },
                    );
                }
                None => {
                    tracing::debug!(
                        object = id,
                        borrower = b,
                        "AddBorrowers for an object not owned here (or freed)"
                    );
                    missing.push(id);
                }
            }
        }
        missing
    }

    /// `RemoveBorrower` from `borrower`: it dropped its last handle on `id`. Returns the loan
    /// to drop when it was the last borrower.
    pub(crate) fn remove_borrower(&mut self, borrower: u64, id: u64) -> Option<L> {
        let removed = self
            .lent
            .get_mut(&id)
            .map(|l| (l.borrowers.remove(&borrower), l.borrowers.is_empty()));
        match removed {
            Some((true, true)) => self.lent.remove(&id).map(|l| l.loan),
            Some((true, false)) => None,
            _ => {
                tracing::debug!(
                    object = id,
                    borrower,
                    "RemoveBorrower from a worker that is not a borrower: ignored"
                );
                None
            }
        }
    }

    /// Worker `index` died (or its connection was lost, which counts the same): it borrows
    /// nothing any more. Returns the loans to drop.
    pub(crate) fn borrower_died(&mut self, index: u64) -> Vec<L> {
        let emptied: Vec<u64> = self
            .lent
            .iter_mut()
            .filter_map(|(id, l)| {
                (l.borrowers.remove(&index) && l.borrowers.is_empty()).then_some(*id)
            })
            .collect();
        emptied
            .into_iter()
            .filter_map(|id| self.lent.remove(&id).map(|l| l.loan))
            .collect()
    }

    /// This process leaves the cluster: every loan, to drop.
    pub(crate) fn leave(&mut self) -> Vec<L> {
        self.lent.drain().map(|(_, l)| l.loan).collect()
    }

    /// The workers that borrow `id` from this process, if any.
    pub(crate) fn borrowers(&self, id: u64) -> Option<&HashSet<u64>> {
        self.lent.get(&id).map(|l| &l.borrowers)
    }

    /// How many objects are borrowed here and lent from here (tests, listings).
    pub(crate) fn sizes(&self) -> (usize, usize) {
        (self.borrowed.len(), self.lent.len())
    }
}

/// Ray's `reference_count_test.cc` cases on the reference counter: the first through the
/// counter alone, the distributed ones (`DistributedReferenceCountTest`) on the simulated
/// cluster of `sim.rs`, step by step (`settle` runs everything that can run; `pause` holds a
/// process and the messages to it). Process 1 is the owner (or the caller) unless a case says.
///
/// Manta's protocol differs from Ray's where its documentation says (`borrow.rs`): a borrower
/// registers with the owner itself, before the value that carried the reference is used,
/// instead of being reported by its caller in the task's reply and then asked to report its
/// end (`WaitForRefRemoved`); local references are `Arc`s, not counts; a result holding
/// references is held by its executor until its owner frees it. So Ray's "the owner merges
/// the borrower's counts", "the borrower answers the owner's wait message" become "the
/// borrower's registration", "its `RemoveBorrower`", and the cases check when each object is
/// freed and who the owner counts.
#[cfg(test)]
mod tests {
    use super::super::INDEX_SHIFT;
    use super::super::sim::ops::*;
    use super::super::sim::{Chaos, Op, World, run_seeds};
    use super::*;

    /// A step-by-step world of `n` processes (no delay, no fault).
    fn world(n: u64) -> World {
        World::new(n, 1, Chaos::default())
    }

    /// A borrow handle whose liveness a test sets.
    #[derive(Debug)]
    struct Handle(bool);

    impl BorrowHandle for Handle {
        fn is_live(&self) -> bool {
            self.0
        }
    }

    fn id(owner: u64, n: u64) -> u64 {
        (owner << INDEX_SHIFT) | n
    }

    // ----- the counter alone ------------------------------------------------------------------

    // Ray: ReferenceCountTest.TestOwnerAddress — the owner of a borrowed object is the process
    // in its id (Manta puts it there instead of an address table); an id no process owns is
    // registered at once.
    #[test]
    fn test_owner_address() {
        let mut rc: ReferenceCounter<Handle, ()> = ReferenceCounter::new(2);
        let x = id(1, 5);
        let e = rc.begin_borrow(x, |e| (Handle(true), e));
        assert_eq!(
            rc.register(1, &[(x, e)]),
            Some(Out::AddBorrowers {
                owner: 1,
                objects: vec![x]
            })
        );
        assert_eq!(rc.registration(x, e), Some(Registration::Pending));
        assert_eq!(
            rc.registered(&[(x, e)], Answer::Added { missing: &[] }),
            [true]
        );
        assert_eq!(
            rc.end_borrow(x, e),
            Some(Out::RemoveBorrower {
                owner: 1,
                object_id: x
            })
        );
        let anon = 7;
        let e = rc.begin_borrow(anon, |e| (Handle(true), e));
        assert_eq!(rc.register(0, &[(anon, e)]), None);
        assert_eq!(rc.registration(anon, e), Some(Registration::Acked));
    }

    // Ray: ReferenceCountTest.TestBasic — an object lives while the owner's handles or a task
    // in flight that takes it live, and goes when both are gone.
    #[test]
    fn test_basic() {
        let mut w = world(2);
        w.exec(
            1,
            vec![
                put("id1", &[]),
                put("id2", &[]),
                submit_by_ref(2, &["id1"], vec![unwrap("id1", &[])], "r1"),
                submit_by_ref(2, &["id1", "id2"], vec![], "r2"),
                drop("id1"),
            ],
        );
        w.pause(2);
        w.settle();
        assert!(w.alive("id1"), "held by the tasks in flight");
        assert!(w.alive("id2"), "held by a task and a handle");
        w.resume(2);
        w.settle();
        assert!(!w.alive("id1"));
        assert!(w.alive("id2"), "the owner's handle");
        w.exec(1, vec![drop("id2"), drop("r1"), drop("r2")]);
        w.settle();
        assert!(!w.alive("id2") && !w.alive("r1") && !w.alive("r2"));
    }

    // Ray: ReferenceCountTest.TestUnreconstructableObjectOutOfScope — an object goes out of
    // scope when its last reference goes, be it a handle or a submitted task's.
    #[test]
    fn test_unreconstructable_object_out_of_scope() {
        let mut w = world(2);
        w.exec(1, vec![put("id", &[])]);
        w.settle();
        assert!(w.alive("id"));
        w.exec(1, vec![drop("id")]);
        w.settle();
        assert!(!w.alive("id"));
        w.exec(
            1,
            vec![
                put("id2", &[]),
                submit_by_ref(2, &["id2"], vec![], "r"),
                drop("id2"),
            ],
        );
        w.pause(2);
        w.settle();
        assert!(w.alive("id2"));
        w.resume(2);
        w.settle();
        assert!(!w.alive("id2"));
    }

    // Ray: ReferenceCountTest.TestRepeatedDeserialization (the counter's part) — a new
    // registration of an object replaces one whose last handle dropped but whose end is not
    // handled yet; that end then sends nothing, the new one's end removes the borrower.
    #[test]
    fn test_replaced_registration_ends_once() {
        let mut rc: ReferenceCounter<Handle, ()> = ReferenceCounter::new(2);
        let x = id(1, 9);
        let old = rc.begin_borrow(x, |e| (Handle(true), e));
        rc.registered(&[(x, old)], Answer::Added { missing: &[] });
        if let Some(h) = rc.borrowed_mut(x) {
            h.0 = false;
        }
        let new = rc.begin_borrow(x, |e| (Handle(true), e));
        assert_ne!(old, new);
        rc.registered(&[(x, new)], Answer::Added { missing: &[] });
        assert_eq!(rc.end_borrow(x, old), None);
        assert_eq!(
            rc.end_borrow(x, new),
            Some(Out::RemoveBorrower {
                owner: 1,
                object_id: x
            })
        );
        assert_eq!(rc.sizes(), (0, 0));
    }

    // Manta's own (no Ray counterpart: Ray's owner learns of borrowers from task replies) —
    // an owner answers `missing` for an object it no longer has, or does not own, and counts
    // a borrower once however many times it registers.
    #[test]
    fn test_add_borrowers_answers_missing() {
        let mut rc: ReferenceCounter<Handle, &'static str> = ReferenceCounter::new(1);
        let mine = id(1, 1);
        let gone = id(1, 2);
        let theirs = id(3, 1);
        let lookup = |i: u64| (i == mine).then_some("loan");
        assert_eq!(
            rc.add_borrowers(Some(2), vec![mine, gone, theirs], lookup),
            vec![gone, theirs]
        );
        assert!(rc.add_borrowers(Some(2), vec![mine], |_| None).is_empty());
        assert!(rc.add_borrowers(Some(4), vec![mine], |_| None).is_empty());
        assert_eq!(rc.add_borrowers(None, vec![mine], lookup), vec![mine]);
        assert_eq!(rc.add_borrowers(Some(1), vec![mine], lookup), vec![mine]);
        assert_eq!(rc.remove_borrower(2, mine), None, "4 still borrows");
        assert_eq!(rc.remove_borrower(2, mine), None, "not a borrower any more");
        assert_eq!(rc.borrower_died(4), vec!["loan"]);
        assert_eq!(rc.sizes(), (0, 0));
    }

    // ----- DistributedReferenceCountTest -----------------------------------------------------

    // Ray: DistributedReferenceCountTest.TestNoBorrow — a borrower gets a reference, submits
    // a task with it, waits for it, returns: nothing is left anywhere.
    #[test]
    fn test_no_borrow() {
        let mut w = world(3);
        w.exec(
            1,
            vec![
                put("inner", &[]),
                put("outer", &["inner"]),
                submit_by_ref(
                    2,
                    &["outer"],
                    vec![
                        unwrap("outer", &["inner"]),
                        submit(3, &["inner"], vec![], "r2"),
                        get("r2", &[]),
                        drop("inner"),
                    ],
                    "r1",
                ),
                drop("outer"),
                drop("inner"),
            ],
        );
        w.pause(2);
        w.settle();
        assert!(w.alive("outer") && w.alive("inner"), "the task holds them");
        w.resume(2);
        w.settle();
        assert!(!w.alive("outer") && !w.alive("inner"));
        assert!(!w.borrows(2, "inner") && !w.borrows(3, "inner"));
    }

    // Ray: DistributedReferenceCountTest.TestSimpleBorrower — the borrower returns without
    // waiting for the task it submitted: its task in flight keeps it a borrower.
    #[test]
    fn test_simple_borrower() {
        let mut w = world(3);
        w.exec(
            1,
            vec![
                put("inner", &[]),
                put("outer", &["inner"]),
                submit_by_ref(
                    2,
                    &["outer"],
                    vec![
                        unwrap("outer", &["inner"]),
                        submit(3, &["inner"], vec![], "r2"),
                        drop("inner"),
                    ],
                    "r1",
                ),
                drop("outer"),
                drop("inner"),
            ],
        );
        w.pause(3);
        w.settle();
        assert!(!w.alive("outer"), "its task is done");
        assert!(w.alive("inner"));
        assert_eq!(w.borrowers("inner"), [2]);
        assert!(w.borrows(2, "inner"));
        w.resume(3);
        w.settle();
        assert!(!w.alive("inner"));
        assert!(!w.borrows(2, "inner") && !w.borrows(3, "inner"));
    }

    // Ray: DistributedReferenceCountTest.TestSimpleBorrowerFailure — as above, then the
    // borrower dies before its task is done: the owner frees the object.
    #[test]
    fn test_simple_borrower_failure() {
        let mut w = world(3);
        w.exec(
            1,
            vec![
                put("inner", &[]),
                put("outer", &["inner"]),
                submit_by_ref(
                    2,
                    &["outer"],
                    vec![
                        unwrap("outer", &["inner"]),
                        submit(3, &["inner"], vec![], "r2"),
                        drop("inner"),
                    ],
                    "r1",
                ),
                drop("outer"),
                drop("inner"),
            ],
        );
        w.pause(3);
        w.settle();
        assert_eq!(w.borrowers("inner"), [2]);
        w.crash(2);
        w.settle();
        assert!(!w.alive("inner"), "freed once the owner heard of the death");
        w.resume(3);
        w.settle();
        assert!(!w.alive("inner") && !w.borrows(3, "inner"));
    }

    // Ray: DistributedReferenceCountTest.TestSimpleBorrowerReferenceRemoved — the borrower
    // keeps the reference past its task, then drops it; the owner frees the object when its
    // `RemoveBorrower` arrives.
    #[test]
    fn test_simple_borrower_reference_removed() {
        let mut w = world(2);
        w.exec(
            1,
            vec![
                put("inner", &[]),
                put("outer", &["inner"]),
                submit_by_ref(
                    2,
                    &["outer"],
                    vec![unwrap("outer", &["inner"]), keep(&["inner"])],
                    "r",
                ),
                drop("outer"),
                drop("inner"),
            ],
        );
        w.settle();
        assert!(!w.alive("outer") && w.alive("inner"));
        assert!(w.borrows(2, "inner"));
        w.exec(2, vec![drop_kept()]);
        w.pause(1);
        w.settle();
        assert!(!w.borrows(2, "inner"));
        assert!(w.alive("inner"), "the owner has not heard yet");
        w.resume(1);
        w.settle();
        assert!(!w.alive("inner"));
    }

    // Ray: DistributedReferenceCountTest.TestBorrowerTree — a borrower passes the reference,
    // nested in an object of its own, to a second borrower and returns without waiting.
    #[test]
    fn test_borrower_tree() {
        let mut w = world(3);
        w.exec(
            1,
            vec![
                put("inner", &[]),
                put("outer", &["inner"]),
                submit_by_ref(
                    2,
                    &["outer"],
                    vec![
                        unwrap("outer", &["inner"]),
                        put("outer2", &["inner"]),
                        submit_by_ref(
                            3,
                            &["outer2"],
                            vec![unwrap("outer2", &["inner"]), keep(&["inner"])],
                            "r2",
                        ),
                        drop("inner"),
                        drop("outer2"),
                    ],
                    "r1",
                ),
                drop("outer"),
                drop("inner"),
            ],
        );
        w.pause(3);
        w.settle();
        assert!(!w.alive("outer"));
        assert!(w.alive("outer2"), "its task in flight holds it");
        assert!(w.alive("inner"));
        assert_eq!(w.borrowers("inner"), [2]);
        w.resume(3);
        w.settle();
        assert!(!w.alive("outer2"));
        assert!(!w.borrows(2, "inner") && w.borrows(3, "inner"));
        assert_eq!(w.borrowers("inner"), [3]);
        w.exec(3, vec![drop_kept()]);
        w.settle();
        assert!(!w.alive("inner"));
    }

    // Ray: DistributedReferenceCountTest.TestNestedObjectNoBorrow — a task reads a reference
    // inside a reference and drops both before it returns.
    #[test]
    fn test_nested_object_no_borrow() {
        let mut w = world(2);
        w.exec(
            1,
            vec![
                put("inner", &[]),
                put("mid", &["inner"]),
                put("outer", &["mid"]),
                submit_by_ref(
                    2,
                    &["outer"],
                    vec![
                        unwrap("outer", &["mid"]),
                        unwrap("mid", &["inner"]),
                        drop("mid"),
                        drop("inner"),
                    ],
                    "r",
                ),
                drop("outer"),
                drop("mid"),
                drop("inner"),
            ],
        );
        w.pause(2);
        w.settle();
        assert!(w.alive("outer") && w.alive("mid") && w.alive("inner"));
        w.resume(2);
        w.settle();
        assert!(!w.alive("outer") && !w.alive("mid") && !w.alive("inner"));
        assert!(!w.borrows(2, "mid") && !w.borrows(2, "inner"));
    }

    // Ray: DistributedReferenceCountTest.TestNestedObject — as above, but the task keeps the
    // innermost reference past its end.
    #[test]
    fn test_nested_object() {
        let mut w = world(2);
        w.exec(
            1,
            vec![
                put("inner", &[]),
                put("mid", &["inner"]),
                put("outer", &["mid"]),
                submit_by_ref(
                    2,
                    &["outer"],
                    vec![
                        unwrap("outer", &["mid"]),
                        unwrap("mid", &["inner"]),
                        drop("mid"),
                        keep(&["inner"]),
                    ],
                    "r",
                ),
                drop("outer"),
                drop("mid"),
                drop("inner"),
            ],
        );
        w.settle();
        assert!(!w.alive("outer") && !w.alive("mid"));
        assert!(w.alive("inner"));
        assert_eq!(w.borrowers("inner"), [2]);
        w.exec(2, vec![drop_kept()]);
        w.settle();
        assert!(!w.alive("inner"));
    }

    // Ray: DistributedReferenceCountTest.TestNestedObjectDifferentOwners — a borrower wraps
    // the reference in an object of its own for a second borrower and waits for it; the
    // second unwraps down to the innermost reference and keeps it.
    #[test]
    fn test_nested_object_different_owners() {
        let mut w = world(3);
        w.exec(
            1,
            vec![
                put("id1", &[]),
                put("id2", &["id1"]),
                put("id3", &["id2"]),
                submit_by_ref(
                    2,
                    &["id3"],
                    vec![
                        unwrap("id3", &["id2"]),
                        put("bid", &["id2"]),
                        drop("id2"),
                        submit_by_ref(
                            3,
                            &["bid"],
                            vec![
                                unwrap("bid", &["id2"]),
                                unwrap("id2", &["id1"]),
                                drop("id2"),
                                keep(&["id1"]),
                            ],
                            "r1",
                        ),
                        get("r1", &[]),
                    ],
                    "r2",
                ),
                drop("id1"),
                drop("id2"),
                drop("id3"),
            ],
        );
        w.settle();
        assert!(!w.alive("id3") && !w.alive("id2") && !w.alive("bid"));
        assert!(w.alive("id1"));
        assert_eq!(w.borrowers("id1"), [3]);
        assert!(!w.borrows(2, "id2") && !w.borrows(2, "id1"));
        w.exec(3, vec![drop_kept()]);
        w.settle();
        assert!(!w.alive("id1"));
    }

    // Ray: DistributedReferenceCountTest.TestNestedObjectDifferentOwners2 — as above, but
    // the first borrower does not wait: its task in flight keeps its object, and so its
    // borrow of the middle one, until the second borrower is done.
    #[test]
    fn test_nested_object_different_owners2() {
        let mut w = world(3);
        w.exec(
            1,
            vec![
                put("id1", &[]),
                put("id2", &["id1"]),
                put("id3", &["id2"]),
                submit_by_ref(
                    2,
                    &["id3"],
                    vec![
                        unwrap("id3", &["id2"]),
                        put("bid", &["id2"]),
                        drop("id2"),
                        submit_by_ref(
                            3,
                            &["bid"],
                            vec![
                                unwrap("bid", &["id2"]),
                                unwrap("id2", &["id1"]),
                                drop("id2"),
                                keep(&["id1"]),
                            ],
                            "r1",
                        ),
                    ],
                    "r2",
                ),
                drop("id1"),
                drop("id2"),
                drop("id3"),
            ],
        );
        w.pause(3);
        w.settle();
        assert!(!w.alive("id3"));
        assert!(w.alive("bid") && w.alive("id2") && w.alive("id1"));
        assert_eq!(w.borrowers("id2"), [2]);
        w.resume(3);
        w.settle();
        assert!(!w.alive("bid") && !w.alive("id2"));
        assert_eq!(w.borrowers("id1"), [3]);
        w.exec(3, vec![drop_kept()]);
        w.settle();
        assert!(!w.alive("id1"));
    }

    // Ray: DistributedReferenceCountTest.TestBorrowerPingPong — the borrower passes the
    // reference on to a task that runs on the owner: the owner's own deserialisation is no
    // borrow.
    #[test]
    fn test_borrower_ping_pong() {
        let mut w = world(2);
        w.exec(
            1,
            vec![
                put("inner", &[]),
                put("outer", &["inner"]),
                submit_by_ref(
                    2,
                    &["outer"],
                    vec![
                        unwrap("outer", &["inner"]),
                        put("outer2", &["inner"]),
                        submit_by_ref(
                            1,
                            &["outer2"],
                            vec![unwrap("outer2", &["inner"]), keep(&["inner"])],
                            "r2",
                        ),
                        get("r2", &[]),
                        drop("inner"),
                    ],
                    "r1",
                ),
                drop("outer"),
                drop("inner"),
            ],
        );
        w.settle();
        assert!(w.alive("inner"), "the owner's task keeps it");
        assert!(w.borrowers("inner").is_empty());
        assert!(!w.borrows(2, "inner") && !w.alive("outer2"));
        w.exec(1, vec![drop_kept()]);
        w.settle();
        assert!(!w.alive("inner"));
    }

    // Ray: DistributedReferenceCountTest.TestDuplicateBorrower — one process gets the same
    // reference twice: one registration, the object lives until both handles are gone.
    #[test]
    fn test_duplicate_borrower() {
        let mut w = world(2);
        w.exec(
            1,
            vec![
                put("inner", &[]),
                put("outer", &["inner"]),
                submit_by_ref(
                    2,
                    &["outer"],
                    vec![unwrap("outer", &["inner"]), keep(&["inner"])],
                    "r1",
                ),
                submit_by_ref(
                    2,
                    &["outer"],
                    vec![unwrap("outer", &["inner"]), ret(&["inner"])],
                    "r2",
                ),
                drop("outer"),
                drop("inner"),
                drop("r1"),
            ],
        );
        w.settle();
        assert_eq!(w.borrowers("inner"), [2]);
        assert!(!w.alive("outer"));
        w.exec(2, vec![drop_kept()]);
        w.settle();
        assert!(w.alive("inner"), "the held result still has it");
        assert!(w.borrows(2, "inner"));
        w.exec(1, vec![drop("r2")]);
        w.settle();
        assert!(!w.alive("inner") && !w.borrows(2, "inner"));
    }

    // Ray: DistributedReferenceCountTest.TestDuplicateNestedObject — a borrower gets the same
    // reference from two different objects.
    #[test]
    fn test_duplicate_nested_object() {
        let mut w = world(2);
        w.exec(
            1,
            vec![
                put("id1", &[]),
                put("a", &["id1"]),
                put("b", &["id1"]),
                submit_by_ref(2, &["a"], vec![unwrap("a", &["id1"]), keep(&["id1"])], "r1"),
                submit_by_ref(2, &["b"], vec![unwrap("b", &["id1"]), ret(&["id1"])], "r2"),
                drop("id1"),
                drop("a"),
                drop("b"),
            ],
        );
        w.settle();
        assert!(!w.alive("a") && !w.alive("b"));
        assert_eq!(w.borrowers("id1"), [2]);
        w.exec(1, vec![drop("r2")]);
        w.settle();
        assert!(w.alive("id1"), "kept");
        w.exec(2, vec![drop_kept()]);
        w.settle();
        assert!(!w.alive("id1"));
    }

    // Ray: DistributedReferenceCountTest.TestReturnObjectIdNoBorrow — the caller drops the
    // result before it is done; the task returned an object of its executor.
    #[test]
    fn test_return_object_id_no_borrow() {
        let mut w = world(2);
        w.exec(
            1,
            vec![
                submit(2, &[], vec![put("inner", &[]), ret(&["inner"])], "r"),
                drop("r"),
            ],
        );
        w.pause(2);
        w.settle();
        w.resume(2);
        w.pause(1);
        w.settle();
        assert!(
            w.alive("inner"),
            "held in the result until the caller frees it"
        );
        w.resume(1);
        w.settle();
        assert!(!w.alive("inner"));
    }

    // Ray: DistributedReferenceCountTest.TestReturnObjectIdBorrow — the caller keeps the
    // result: the object in it lives until the caller drops it.
    #[test]
    fn test_return_object_id_borrow() {
        let mut w = world(2);
        w.exec(
            1,
            vec![submit(
                2,
                &[],
                vec![put("inner", &[]), ret(&["inner"])],
                "r",
            )],
        );
        w.settle();
        assert!(w.alive("inner"));
        w.exec(1, vec![drop("r")]);
        w.settle();
        assert!(!w.alive("inner"));
    }

    // Ray: DistributedReferenceCountTest.TestReturnObjectIdBorrowChain — the caller passes
    // the result to a task that reads it and keeps the reference in it.
    #[test]
    fn test_return_object_id_borrow_chain() {
        let mut w = world(3);
        w.exec(
            1,
            vec![
                submit(3, &[], vec![put("inner", &[]), ret(&["inner"])], "ret"),
                submit_by_ref(
                    2,
                    &["ret"],
                    vec![unwrap("ret", &["inner"]), keep(&["inner"])],
                    "ret2",
                ),
                drop("ret"),
            ],
        );
        w.settle();
        assert!(!w.alive("ret"));
        assert!(w.alive("inner"));
        assert_eq!(w.borrowers("inner"), [2]);
        w.exec(2, vec![drop_kept()]);
        w.settle();
        assert!(!w.alive("inner"));
    }

    // Ray: DistributedReferenceCountTest.TestReturnBorrowedId — a borrower returns the
    // borrowed reference in its own result: its executor's hold on the result keeps it a
    // borrower until the caller drops the result.
    #[test]
    fn test_return_borrowed_id() {
        let mut w = world(3);
        w.exec(
            1,
            vec![
                submit(3, &[], vec![put("inner", &[]), ret(&["inner"])], "ret"),
                submit_by_ref(
                    2,
                    &["ret"],
                    vec![unwrap("ret", &["inner"]), ret(&["inner"])],
                    "bret",
                ),
                drop("ret"),
            ],
        );
        w.settle();
        assert!(!w.alive("ret") && w.alive("bret"));
        assert!(w.alive("inner"));
        assert_eq!(w.borrowers("inner"), [2]);
        w.exec(1, vec![drop("bret")]);
        w.pause(3);
        w.settle();
        assert!(w.alive("inner"), "the owner has not heard yet");
        w.resume(3);
        w.settle();
        assert!(!w.alive("inner"));
    }

    // Ray: DistributedReferenceCountTest.TestReturnBorrowedIdDeserialize — as above, and the
    // caller reads the result: it borrows the reference itself.
    #[test]
    fn test_return_borrowed_id_deserialize() {
        let mut w = world(3);
        w.exec(
            1,
            vec![
                submit(3, &[], vec![put("inner", &[]), ret(&["inner"])], "ret"),
                submit_by_ref(
                    2,
                    &["ret"],
                    vec![unwrap("ret", &["inner"]), ret(&["inner"])],
                    "bret",
                ),
                drop("ret"),
                get("bret", &["inner"]),
                drop("bret"),
            ],
        );
        w.settle();
        assert!(w.alive("inner"));
        assert_eq!(w.borrowers("inner"), [1]);
        w.exec(1, vec![drop("inner")]);
        w.settle();
        assert!(!w.alive("inner"));
    }

    // Ray: DistributedReferenceCountTest.TestReturnIdChain — a task returns the result of a
    // task it submitted, which holds an object of its executor.
    #[test]
    fn test_return_id_chain() {
        let mut w = world(3);
        w.exec(
            1,
            vec![submit(
                2,
                &[],
                vec![
                    submit(3, &[], vec![put("inner", &[]), ret(&["inner"])], "nested"),
                    ret(&["nested"]),
                ],
                "ret",
            )],
        );
        w.settle();
        assert!(w.alive("nested") && w.alive("inner"));
        w.exec(1, vec![drop("ret")]);
        w.settle();
        assert!(!w.alive("nested") && !w.alive("inner"));
    }

    /// The programs of Ray's TestReturnBorrowedIdChain: a task reads the result of a task it
    /// submitted (an object of that task's executor) and returns the reference in it.
    fn return_borrowed_id_chain() -> Vec<Op> {
        vec![submit(
            2,
            &[],
            vec![
                submit(3, &[], vec![put("inner", &[]), ret(&["inner"])], "nested"),
                get("nested", &["inner"]),
                drop("nested"),
                ret(&["inner"]),
            ],
            "ret",
        )]
    }

    // Ray: DistributedReferenceCountTest.TestReturnBorrowedIdChain.
    #[test]
    fn test_return_borrowed_id_chain() {
        let mut w = world(3);
        w.exec(1, return_borrowed_id_chain());
        w.settle();
        assert!(!w.alive("nested"));
        assert!(w.alive("inner"));
        assert_eq!(w.borrowers("inner"), [2]);
        w.exec(1, vec![get("ret", &["inner"]), drop("ret")]);
        w.settle();
        assert!(w.alive("inner"));
        assert_eq!(w.borrowers("inner"), [1]);
        w.exec(1, vec![drop("inner")]);
        w.settle();
        assert!(!w.alive("inner"));
    }

    // Ray: DistributedReferenceCountTest.TestReturnBorrowedIdChainOutOfOrder — the same with
    // its messages in every order the seeds give (a borrower's registration before or after
    // the reply that carried the reference, and so on); the simulation checks that nothing
    // is freed while borrowed and everything is freed at the end.
    #[test]
    fn test_return_borrowed_id_chain_out_of_order() {
        run_seeds(200, |seed| {
            let mut w = World::new(3, seed, Chaos::delays());
            let mut driver = return_borrowed_id_chain();
            driver.extend([get("ret", &["inner"]), drop("ret"), drop("inner")]);
            w.spawn(1, driver);
            w
        });
    }

    // Ray: ReferenceCountTest.TestDelayedWaitForRefRemoved — a borrower drops the outer
    // reference while it still uses the inner one.
    #[test]
    fn test_delayed_wait_for_ref_removed() {
        let mut w = world(2);
        w.exec(
            1,
            vec![
                put("inner", &[]),
                put("outer", &["inner"]),
                submit(2, &["outer"], vec![keep(&["outer"])], "r"),
            ],
        );
        w.settle();
        w.exec(
            2,
            vec![take(&["outer"]), unwrap("outer", &["inner"]), drop("outer")],
        );
        w.settle();
        w.exec(1, vec![drop("outer")]);
        w.settle();
        assert!(!w.alive("outer"));
        assert!(w.alive("inner"));
        w.exec(1, vec![drop("inner")]);
        w.settle();
        assert!(w.alive("inner"), "the borrower still uses it");
        w.exec(2, vec![drop("inner")]);
        w.pause(1);
        w.settle();
        assert!(w.alive("inner"));
        w.resume(1);
        w.settle();
        assert!(!w.alive("inner"));
    }

    // Ray: ReferenceCountTest.TestRepeatedDeserialization — a borrower deserialises the same
    // reference again after dropping it: a new registration, ended once.
    #[test]
    fn test_repeated_deserialization() {
        let mut w = world(2);
        w.exec(
            1,
            vec![
                put("inner", &[]),
                put("mid", &["inner"]),
                put("outer", &["mid"]),
                submit(2, &["outer"], vec![keep(&["outer"])], "r"),
                drop("inner"),
                drop("mid"),
                drop("outer"),
            ],
        );
        w.settle();
        w.exec(
            2,
            vec![
                take(&["outer"]),
                unwrap("outer", &["mid"]),
                unwrap("mid", &["inner"]),
                drop("inner"),
            ],
        );
        w.settle();
        assert!(!w.borrows(2, "inner"));
        assert!(w.alive("inner"), "in mid");
        w.exec(2, vec![drop("outer")]);
        w.settle();
        assert!(!w.alive("outer"));
        assert!(w.alive("mid") && w.alive("inner"));
        w.exec(2, vec![unwrap("mid", &["inner"]), drop("mid")]);
        w.settle();
        assert!(!w.alive("mid"));
        assert_eq!(w.borrowers("inner"), [2]);
        w.exec(2, vec![drop("inner")]);
        w.settle();
        assert!(!w.alive("inner"));
    }

    // Ray: ReferenceCountTest.TestForwardNestedRefs — a borrower forwards the outer reference
    // to a second borrower, which keeps the innermost one.
    #[test]
    fn test_forward_nested_refs() {
        let mut w = world(3);
        w.exec(
            1,
            vec![
                put("inner", &[]),
                put("middle", &["inner"]),
                put("outer", &["middle"]),
                submit(2, &["outer"], vec![keep(&["outer"])], "k"),
                drop("inner"),
                drop("middle"),
                drop("outer"),
            ],
        );
        w.settle();
        w.exec(
            2,
            vec![
                take(&["outer"]),
                submit(
                    3,
                    &["outer"],
                    vec![
                        unwrap("outer", &["middle"]),
                        unwrap("middle", &["inner"]),
                        drop("middle"),
                        keep(&["inner"]),
                    ],
                    "f",
                ),
                get("f", &[]),
                drop("f"),
                drop("outer"),
            ],
        );
        w.settle();
        assert!(!w.alive("outer") && !w.alive("middle"));
        assert!(w.alive("inner"));
        assert_eq!(w.borrowers("inner"), [3]);
        w.exec(3, vec![drop_kept()]);
        w.settle();
        assert!(!w.alive("inner"));
    }
}
