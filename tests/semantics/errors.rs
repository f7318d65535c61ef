//! Errors keep their type (issue 11, item 14): a remote function returning `Err(MyError)`, or
//! panicking with `panic_any(MyError)`, lets the caller downcast the task error to `MyError`,
//! in every mode (in a cluster it crosses processes serialised with its type name).

use std::fmt;
use std::time::Duration;

use manta::Error;
use serde::{Deserialize, Serialize};

use crate::harness::{Case, Ctx};

pub(crate) const CASES: &[Case] = &[
    Case::new("errors::returned_err_is_a_typed_task_error", returned_err),
    Case::new(
        "errors::panic_any_payload_keeps_its_type",
        panic_any_payload,
    ),
    Case::new(
        "errors::a_dependent_fails_with_the_typed_error",
        dependent_of_typed_error,
    ),
];

const LONG: Duration = Duration::from_secs(30);

/// A user's error type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Shortage {
    pub(crate) item: String,
    pub(crate) missing: u32,
}

impl fmt::Display for Shortage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "short of {} {}", self.missing, self.item)
    }
}

impl std::error::Error for Shortage {}

/// Another, used only as a panic payload: registered by hand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Meltdown {
    pub(crate) core: u8,
}

impl fmt::Display for Meltdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "core {} melted", self.core)
    }
}

manta::register_error!(Meltdown);

/// Not serialisable, not registered: keeps only a generic message.
#[derive(Debug)]
struct Opaque;

#[manta::remote]
fn take(item: String, have: u32, want: u32) -> Result<u32, Shortage> {
    if have >= want {
        Ok(have - want)
    } else {
        Err(Shortage {
            item,
            missing: want - have,
        })
    }
}

#[manta::remote]
fn take_twice(have: u32) -> Result<u32, Shortage> {
    // A nested fallible call: its error comes back typed inside the task too.
    match take::remote("bolts".to_string(), have, 5).get() {
        Ok(left) => Ok(left),
        Err(Error::Task(e)) => Err(e.cause::<Shortage>().expect("typed inside the task")),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[manta::remote]
fn melt(core: u8) -> u64 {
    std::panic::panic_any(Meltdown { core })
}

#[manta::remote]
fn opaque_panic() -> u64 {
    std::panic::panic_any(Opaque)
}

#[manta::remote]
fn plus_one(x: u32) -> u32 {
    x + 1
}

fn expect_task_error(r: Result<impl fmt::Debug, Error>, what: &str) -> manta::TaskError {
    match r {
        Err(Error::Task(e)) => e,
        other => panic!("{what}: expected a task error, got {other:?}"),
    }
}

fn returned_err(_: &Ctx) {
    assert_eq!(
        take::remote("nuts".to_string(), 9, 4)
            .get_timeout(LONG)
            .unwrap(),
        5
    );
    let e = expect_task_error(
        take::remote("nuts".to_string(), 1, 4).get_timeout(LONG),
        "Err",
    );
    assert!(e.is_returned_error() && !e.is_panic(), "{e:?}");
    let want = Shortage {
        item: "nuts".into(),
        missing: 3,
    };
    assert_eq!(e.downcast_ref::<Shortage>(), Some(&want), "{e:?}");
    assert_eq!(e.cause::<Shortage>(), Some(want.clone()));
    assert!(e.downcast_ref::<Meltdown>().is_none(), "another type");
    assert!(e.to_string().contains("short of 3 nuts"), "{e}");
    // Nested: a task gets its child's typed error and returns it.
    let e = expect_task_error(take_twice::remote(2).get_timeout(LONG), "nested");
    assert_eq!(
        e.downcast_ref::<Shortage>(),
        Some(&Shortage {
            item: "bolts".into(),
            missing: 3
        })
    );
}

fn panic_any_payload(_: &Ctx) {
    let e = expect_task_error(melt::remote(7).get_timeout(LONG), "panic_any");
    assert!(e.is_panic());
    assert_eq!(
        e.downcast_ref::<Meltdown>(),
        Some(&Meltdown { core: 7 }),
        "{e:?}"
    );
    assert_eq!(e.message(), "core 7 melted");
    assert!(e.cause_type_name().is_some_and(|n| n.ends_with("Meltdown")));
    // A payload of an unregistered type keeps a generic message, and no cause.
    let e = expect_task_error(opaque_panic::remote().get_timeout(LONG), "opaque");
    assert!(e.downcast_ref::<Meltdown>().is_none());
    assert!(e.cause_type_name().is_none());
    assert!(e.message().contains("non-string panic payload"), "{e}");
}

/// A task whose argument failed with a typed error fails with that same error.
fn dependent_of_typed_error(_: &Ctx) {
    let dep = plus_one::remote(take::remote("nuts".to_string(), 1, 4));
    let e = expect_task_error(dep.get_timeout(LONG), "dependent");
    assert_eq!(
        e.downcast_ref::<Shortage>(),
        Some(&Shortage {
            item: "nuts".into(),
            missing: 3
        })
    );
}
