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
