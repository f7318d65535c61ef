//! Newtype identifiers. Ids are never bare integers outside this module.
//!
//! Within one runtime every id is unique: each kind draws from its own counter. The cluster work
//! will widen [`ObjectId`] to carry its owner's worker id, as Ray's ids embed the task that
//! created them; nothing outside this module depends on the representation.

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
