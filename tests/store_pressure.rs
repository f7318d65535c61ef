//! A store under pressure: spilling and restoring keep every object, and a store whose
//! objects are all pinned refuses a put with the value handed back.

mod common;

use std::time::Duration;

const MIB: usize = 1 << 20;

fn object(i: u64) -> Vec<u64> {
    (0..MIB as u64).map(|j| j.wrapping_mul(i + 1) ^ i).collect()
}

#[test]
fn putting_three_times_the_store_keeps_every_object_byte_exact() {
    let _rt = common::start(
        manta::Config::default()
            .num_cpus(2.0)
            .object_store_memory(64 * MIB),
    );
    // 24 objects of 8 MiB: 3× the store.
    let refs: Vec<_> = (0..24).map(|i| manta::put(object(i)).unwrap()).collect();
    let s = manta::status().unwrap().object_store.unwrap();
    assert!(s.spills > 0 && s.spilled_objects > 0, "{s:?}");
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(r.get().unwrap(), object(i as u64), "object {i}");
    }
    let s = manta::status().unwrap().object_store.unwrap();
    assert!(s.restores > 0, "{s:?}");
    // And views of restored objects are correct too.
    for (i, r) in refs.iter().enumerate().step_by(5) {
        assert_eq!(&*r.get_view().unwrap(), &object(i as u64)[..]);
    }
    drop(refs);
    let s = manta::status().unwrap().object_store.unwrap();
    assert_eq!((s.objects, s.spilled_objects, s.used), (0, 0, 0), "{s:?}");
}

#[manta::remote]
fn big_result() -> Vec<u8> {
    vec![9; 24 * MIB]
}

#[test]
fn a_full_store_hands_the_value_back_and_fails_task_results() {
    let _rt = common::start(
        manta::Config::default()
            .num_cpus(2.0)
            .object_store_memory(32 * MIB)
            .object_store_put_timeout(Duration::from_millis(200)),
    );
    let held: Vec<_> = (0..3u64).map(|i| manta::put(object(i)).unwrap()).collect();
    // Views pin every object: nothing can be spilled.
    let views: Vec<_> = held.iter().map(|r| r.get_view().unwrap()).collect();

    let value = vec![7u8; 20 * MIB];
    let err = manta::put(value).unwrap_err();
    assert_eq!(
        err.value,
        vec![7u8; 20 * MIB],
        "the value is handed back intact"
    );
    match &err.error {
        manta::Error::ObjectStoreFull {
            object,
            size,
            capacity,
            pinned,
            ..
        } => {
            assert_ne!(object.as_u64(), 0);
            assert_eq!(*size, 20 * MIB + 8);
            assert!(*capacity >= 32 * MIB);
            assert!(*pinned >= 24 * MIB, "{pinned}");
        }
        other => panic!("expected ObjectStoreFull, got {other}"),
    }

    let r = big_result::remote();
    match r.get() {
        Err(manta::Error::ObjectStoreFull { object, .. }) => assert_eq!(object, r.id()),
        other => panic!("expected the task's result to fail with ObjectStoreFull: {other:?}"),
    }

    // Unpinned, the same put succeeds (the others are spilled to make room).
    drop(views);
    let ok = manta::put(err.value).unwrap();
    assert_eq!(ok.get().unwrap().len(), 20 * MIB);
    for (i, r) in held.iter().enumerate() {
        assert_eq!(r.get().unwrap(), object(i as u64));
    }
}
