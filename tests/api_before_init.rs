//! The API used before `init` (alone in its file, so its process has never had a runtime).

use manta::Error;

#[manta::remote]
fn one() -> u8 {
    1
}

#[manta::actor]
struct Thing;

#[manta::actor]
impl Thing {
    fn new() -> Self {
        Thing
    }
    fn ping(&self) -> u8 {
        1
    }
}

#[test]
fn every_call_before_init_says_so() {
    assert!(!manta::is_initialized());
    assert!(matches!(one::remote().get(), Err(Error::NotInitialized)));
    assert!(matches!(
        Thing::remote().ping().get(),
        Err(Error::NotInitialized)
    ));
    let err = manta::put(vec![1u8, 2, 3]).unwrap_err();
    assert!(matches!(err.error, Error::NotInitialized));
    assert_eq!(err.value, vec![1, 2, 3], "the value is handed back");
    assert!(matches!(manta::status(), Err(Error::NotInitialized)));
    assert!(matches!(
        manta::get_actor::<Thing>("x"),
        Err(Error::NotInitialized)
    ));
    assert!(
        err.error.to_string().contains("manta::init()"),
        "the message says what to do"
    );
    // Then init works, twice is refused, and shutdown is idempotent.
    manta::init().unwrap();
    assert!(matches!(manta::init(), Err(Error::AlreadyInitialized)));
    assert_eq!(one::remote().get().unwrap(), 1);
    manta::shutdown();
    manta::shutdown();
}
