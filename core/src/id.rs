//! Newtype identifiers.
//!
//! Within one runtime every id is unique: each kind draws from its own counter. In a cluster an
//! object's or actor's id carries its owner, as Ray's ids embed the task that created them: the
//! top 16 bits are the creating process's [`WorkerId`] (0 outside any cluster), read with
//! [`ObjectId::owner`] and [`ActorId::owner`].

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[doc = $doc:literal])* $name:ident, $prefix:literal) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(u64);

        impl $name {
            /// The raw value, for wire formats and listings.
            pub fn as_u64(self) -> u64 {
                self.0
            }
            /// Rebuilds an id from [`Self::as_u64`].
            pub fn from_u64(raw: u64) -> Self {
                Self(raw)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:x}"), self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

id_type!(
    /// Identifies an object: a task result or a `put` value.
    ObjectId,
    "obj-"
);
id_type!(
    /// Identifies one submitted task (retries keep the id).
    TaskId,
    "task-"
);
id_type!(
    /// Identifies an actor for its whole life, restarts included.
    ActorId,
    "actor-"
);
id_type!(
    /// A process of a cluster (driver or worker): the index the GCS gave it when it registered.
    WorkerId,
    "worker-"
);
id_type!(
    /// A node of a cluster: the id the GCS gave its raylet.
    NodeId,
    "node-"
);
id_type!(
    /// A job: one driver's run, with the worker processes started for it.
    JobId,
    "job-"
);

/// Bits of an object or actor id below its owner's worker index.
pub(crate) const OWNER_SHIFT: u32 = 48;

impl WorkerId {
    /// The largest index that fits in the top bits of an id.
    pub(crate) const MAX: u64 = (1 << (64 - OWNER_SHIFT)) - 1;

    /// The first id of the objects and actors this process creates.
    pub(crate) fn first_id(self) -> u64 {
        (self.0 << OWNER_SHIFT) | 1
    }
}

impl ObjectId {
    /// The process that owns the object (created it; [`WorkerId`] 0 outside any cluster).
    pub fn owner(self) -> WorkerId {
        WorkerId(self.0 >> OWNER_SHIFT)
    }
}

impl ActorId {
    /// The process that owns the actor (created it; [`WorkerId`] 0 outside any cluster).
    pub fn owner(self) -> WorkerId {
        WorkerId(self.0 >> OWNER_SHIFT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_names_its_owner() {
        let w = WorkerId::from_u64(7);
        let first = w.first_id();
        assert_eq!(ObjectId::from_u64(first).owner(), w);
        assert_eq!(ActorId::from_u64(first + 41).owner(), w);
        assert_eq!(ObjectId::from_u64(5).owner(), WorkerId::from_u64(0));
        let last = WorkerId::from_u64(WorkerId::MAX);
        assert_eq!(ObjectId::from_u64(last.first_id()).owner(), last);
        assert_eq!(w.to_string(), "worker-7");
    }
}
