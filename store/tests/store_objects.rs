//! The object state machine through the public API: create → seal → get → release → delete,
//! every error of issue 3, typed views, and both page kinds of arena.

use std::time::Duration;

use manta_store::{
    CopyKind, ObjectKey, PageKind, PageRequest, Store, StoreConfig, StoreError, UNIT,
};

fn key(n: u128) -> ObjectKey {
    ObjectKey::from_u128(n)
}

/// A small 4 KiB-page store, not pre-faulted, with a short create timeout.
fn small_store(capacity: usize) -> Store {
    let config = StoreConfig {
        pages: PageRequest::Small,
        prefault: false,
        create_timeout: Duration::from_millis(200),
        ..StoreConfig::with_capacity(capacity)
    };
    Store::new(config).expect("store")
}

#[test]
fn create_write_seal_get_is_byte_exact_and_zero_copy() {
    let store = small_store(8 << 20);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut created = store.create(key(1), data.len()).expect("create");
    created.as_mut_slice().copy_from_slice(&data);
    let sealed = created.seal().expect("seal");
    assert_eq!((sealed.key(), sealed.len()), (key(1), data.len()));

    let a = store.get(key(1)).expect("get");
    let b = store.get(key(1)).expect("second get");
    assert_eq!(&a[..], &data[..]);
    // Zero-copy: both views are the same bytes of the arena, not copies.
    assert_eq!(a.as_ptr(), b.as_ptr());
    assert_eq!(a.location().offset % UNIT as u64, 0);
}

#[test]
fn unsealed_objects_are_invisible_and_dropping_the_writer_aborts() {
    let store = small_store(4 << 20);
    let created = store.create(key(2), 100_000).expect("create");
    assert!(matches!(store.get(key(2)), Err(StoreError::NotSealed { key: k }) if k == key(2)));
    assert!(matches!(
        store.delete(key(2)),
        Err(StoreError::NotSealed { .. })
    ));
    drop(created);
    assert!(!store.contains(key(2)));
    assert_eq!(
        store.stats().used,
        0,
        "the aborted object's block is free again"
    );
}

#[test]
fn double_seal_by_key_is_an_error() {
    // In-process, `Created::seal` consumes the handle, so sealing twice does not compile; a
    // detached writer seals by key, where a second seal is a clear error.
    let store = small_store(4 << 20);
    let created = store.create(key(3), 4096).expect("create");
    let loc = created.detach();
    assert_eq!(loc.len, 4096);
    store.seal(key(3)).expect("first seal");
    assert!(matches!(store.seal(key(3)), Err(StoreError::AlreadySealed { key: k }) if k == key(3)));
}

#[test]
fn get_of_an_unknown_id_is_not_found() {
    let store = small_store(4 << 20);
    let err = store.get(key(404)).expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound { key: k } if k == key(404)));
    assert!(
        err.to_string().contains(&key(404).to_string()),
        "the error names the id: {err}"
    );
}

#[test]
fn release_of_an_unpinned_object_is_an_error() {
    let store = small_store(4 << 20);
    store.put(key(5), vec![1u8; 5000]).expect("put");
    assert!(matches!(store.release(key(5)), Err(StoreError::NotPinned { key: k }) if k == key(5)));
    let loc = store.pin(key(5)).expect("pin");
    assert_eq!(loc.len, 5000);
    store.release(key(5)).expect("release of a pin");
    assert!(matches!(
        store.release(key(5)),
        Err(StoreError::NotPinned { .. })
    ));
}

#[test]
fn zero_size_and_larger_than_arena_are_clear_errors() {
    let store = small_store(4 << 20);
    assert!(matches!(store.create(key(6), 0), Err(StoreError::ZeroSize { key: k }) if k == key(6)));
    let err = store.create(key(7), (4 << 20) + 1).expect_err("too large");
    assert!(
        matches!(err, StoreError::TooLarge { key: k, size, capacity } if k == key(7) && size == (4 << 20) + 1 && capacity == 4 << 20),
        "{err}"
    );
    assert!(matches!(
        store.create(key(6), 10).map(|c| c.seal()),
        Ok(Ok(_))
    ));
    assert!(matches!(
        store.create(key(6), 10),
        Err(StoreError::AlreadyExists { .. })
    ));
}

#[test]
fn delete_only_when_unreferenced() {
    let store = small_store(4 << 20);
    store.put(key(8), vec![9u8; 200_000]).expect("put");
    let pin = store.get(key(8)).expect("get");
    assert!(matches!(
        store.delete(key(8)),
        Err(StoreError::StillPinned { pins: 1, .. })
    ));
    drop(pin);
    store.delete(key(8)).expect("delete");
    assert!(!store.contains(key(8)));
    assert_eq!(store.stats().used, 0);
    assert!(matches!(
        store.delete(key(8)),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn typed_views_are_aligned_slices_of_the_arena() {
    let store = small_store(4 << 20);
    let floats: Vec<f32> = (0..50_000).map(|i| i as f32 * 0.5).collect();
    store
        .put(key(9), bytemuck::cast_slice::<f32, u8>(&floats))
        .expect("put");
    let view = store.get_view::<f32>(key(9)).expect("view");
    assert_eq!(&view[..], &floats[..]);
    let as_u64 = store
        .get_view::<u64>(key(9))
        .expect("200000 bytes is 25000 u64s");
    assert_eq!(as_u64.len(), 25_000);
    store.put(key(10), vec![0u8; 6]).expect("put");
    assert!(matches!(
        store.get_view::<f32>(key(10)),
        Err(StoreError::BadView {
            len: 6,
            elem: 4,
            ..
        })
    ));
}

#[test]
fn full_store_waits_then_hands_the_value_back() {
    let store = small_store(1 << 20);
    let pinned = {
        store
            .put(key(11), vec![1u8; 1 << 20])
            .expect("fills the arena");
        store.get(key(11)).expect("pin it: nothing can be spilled")
    };
    let value = vec![2u8; 4096];
    let started = std::time::Instant::now();
    let err = store.put(key(12), value).expect_err("no room");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "it waited for space"
    );
    assert!(
        matches!(err.error, StoreError::ObjectStoreFull { key: k, size: 4096, .. } if k == key(12))
    );
    assert_eq!(
        err.into_value(),
        vec![2u8; 4096],
        "the caller gets its value back"
    );
    drop(pinned);
}

#[test]
fn a_release_wakes_a_waiting_create() {
    let store = Store::new(StoreConfig {
        pages: PageRequest::Small,
        prefault: false,
        create_timeout: Duration::from_secs(10),
        ..StoreConfig::with_capacity(1 << 20)
    })
    .expect("store");
    store
        .put(key(13), vec![1u8; 1 << 20])
        .expect("fills the arena");
    let pin = store.get(key(13)).expect("pin");
    std::thread::scope(|s| {
        let waiter = s.spawn(|| store.put(key(14), vec![3u8; 8192]).map(|s| s.len()));
        std::thread::sleep(Duration::from_millis(100));
        drop(pin); // now key 13 can be spilled: the waiting put proceeds
        let put = waiter.join().expect("thread");
        assert!(matches!(put, Ok(8192)), "{put:?}");
    });
    assert!(store.is_spilled(key(13)));
    assert_eq!(
        &store.get(key(13)).expect("restored")[..],
        &vec![1u8; 1 << 20][..]
    );
}

#[test]
fn secondary_copies_are_evicted_before_primaries_are_spilled() {
    let store = small_store(1 << 20);
    store
        .create_with(key(20), 256 << 10, CopyKind::Primary)
        .expect("create")
        .seal()
        .expect("seal");
    let mut sec = store
        .create_with(key(21), 256 << 10, CopyKind::Secondary)
        .expect("create");
    sec.write(&[7u8; 16]);
    sec.seal().expect("seal");
    // 512 KiB used of 1 MiB; 520 KiB more does not fit: the secondary goes, the primary stays
    // (and use ends at 776 KiB, under the 80% spill threshold).
    store.put(key(22), vec![5u8; 520 << 10]).expect("put");
    assert!(!store.contains(key(21)), "secondary evicted");
    assert!(
        store.contains(key(20)) && !store.is_spilled(key(20)),
        "primary untouched"
    );
    assert_eq!(store.stats().evictions, 1);
}

/// Free 2 MiB huge pages in the pool now.
fn free_huge_pages() -> usize {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn four_kib_arena_when_forced() {
    let store = Store::new(StoreConfig {
        pages: PageRequest::Small,
        prefault: true,
        ..StoreConfig::with_capacity(16 << 20)
    })
    .expect("store");
    assert_eq!(store.stats().page_kind, PageKind::Small4KiB);
    assert!(store.arena().prefault_time().is_some());
    store.put(key(30), vec![4u8; 3 << 20]).expect("put");
    assert!(store.get(key(30)).expect("get").iter().all(|&b| b == 4));
}

#[test]
fn huge_page_arena_when_the_pool_has_pages_else_fallback() {
    let capacity = 32 << 20;
    let store = Store::new(StoreConfig {
        pages: PageRequest::Auto,
        prefault: true,
        ..StoreConfig::with_capacity(capacity)
    })
    .expect("store");
    let kind = store.stats().page_kind;
    eprintln!(
        "arena of {capacity} bytes on {kind} ({} free 2 MiB pages after)",
        free_huge_pages()
    );
    if std::env::var_os("MANTA_STORE_REQUIRE_HUGEPAGES").is_some() {
        assert_eq!(
            kind,
            PageKind::Huge2MiB,
            "the test script reserved huge pages"
        );
    }
    store.put(key(31), vec![6u8; 5 << 20]).expect("put");
    assert!(store.get(key(31)).expect("get").iter().all(|&b| b == 6));

    // An arena larger than the pool's free pages must fall back to 4 KiB pages, not fail.
    let too_many = (free_huge_pages() + 1) * (2 << 20);
    let fallback = Store::new(StoreConfig {
        pages: PageRequest::Auto,
        prefault: false,
        ..StoreConfig::with_capacity(too_many)
    })
    .expect("store");
    assert_eq!(fallback.stats().page_kind, PageKind::Small4KiB);
}

/// Free 1 GiB huge pages in the pool now (0 where the kernel or CPU has none).
fn free_gigantic_pages() -> usize {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn gigantic_page_arena_when_the_pool_has_them() {
    let required = std::env::var_os("MANTA_STORE_REQUIRE_GIGANTIC_PAGES").is_some();
    let free = free_gigantic_pages();
    if free == 0 {
        assert!(
            !required,
            "MANTA_STORE_REQUIRE_GIGANTIC_PAGES is set but no 1 GiB page is free"
        );
        eprintln!(
            "skipped: no free 1 GiB huge page (as root: echo 1 > \
             /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages; scripts/setup does it \
             where the kernel allows)"
        );
        return;
    }
    let capacity = 1 << 30;
    let store = Store::new(StoreConfig {
        pages: PageRequest::Auto,
        prefault: false,
        ..StoreConfig::with_capacity(capacity)
    })
    .expect("store");
    let kind = store.stats().page_kind;
    eprintln!("arena of {capacity} bytes on {kind} ({free} free 1 GiB pages before)");
    // Another process may have taken the free page meanwhile; with the requirement set (the
    // test script reserved it for this test) that is a failure.
    if kind != PageKind::Huge1GiB {
        assert!(!required, "a free 1 GiB page, yet the arena is on {kind}");
        eprintln!("skipped: the free 1 GiB page was taken before this arena was mapped");
        return;
    }
    assert_eq!(store.stats().capacity, capacity);
    assert_eq!(store.arena().len(), capacity);
    store.put(key(40), vec![9u8; 5 << 20]).expect("put");
    store
        .put(key(41), vec![8u8; 700 << 20])
        .expect("a 700 MiB object");
    assert!(store.get(key(40)).expect("get").iter().all(|&b| b == 9));
    assert!(store.get(key(41)).expect("get").iter().all(|&b| b == 8));
    drop(store);
    assert_eq!(free_gigantic_pages(), free, "the page returns to the pool");
}

#[test]
fn a_shared_pin_owns_its_store_and_holds_the_object_in_place() {
    let store = std::sync::Arc::new(small_store(8 << 20));
    store.put(key(7), vec![3u8; 200_000]).expect("put");
    let pin = store.get_shared(key(7)).expect("get_shared");
    let borrowed = store.get(key(7)).expect("get");
    assert_eq!(pin.as_ptr(), borrowed.as_ptr(), "the same bytes, no copy");
    drop(borrowed);
    assert!(matches!(
        store.delete(key(7)),
        Err(StoreError::StillPinned { pins: 1, .. })
    ));
    let weak = std::sync::Arc::downgrade(&store);
    drop(store);
    assert!(pin.iter().all(|&b| b == 3), "the pin keeps the store alive");
    let store = weak.upgrade().expect("still alive");
    drop(pin);
    store.delete(key(7)).expect("unpinned: deletable");
}

#[test]
fn create_near_the_callers_region_counts_where_blocks_land() {
    let store = small_store(8 << 20);
    let stats = store.stats();
    let region = store
        .local_region()
        .expect("the calling thread runs on a node holding a region");
    assert!(region < stats.numa_nodes, "{region} of {stats:?}");
    store
        .create_near(key(1), 200_000, CopyKind::Primary, Some(region))
        .expect("create near")
        .seal()
        .expect("seal");
    store
        .create(key(2), 200_000)
        .expect("create")
        .seal()
        .expect("seal");
    let stats = store.stats();
    // Only the create that asked for a region is counted; it had room there.
    assert_eq!((stats.numa_near, stats.numa_far), (1, 0), "{stats:?}");
}

#[test]
fn configured_numa_nodes_bind_the_arena_and_a_bad_node_leaves_it_whole() {
    if !std::path::Path::new("/sys/devices/system/node/node0").exists() {
        eprintln!("skipped: this kernel shows no NUMA node 0");
        return;
    }
    // The launcher's list, one node: the arena is one span bound to it (both builds).
    let config = StoreConfig {
        pages: PageRequest::Small,
        prefault: true,
        numa_nodes: Some(vec![0]),
        ..StoreConfig::with_capacity(4 << 20)
    };
    let store = Store::new(config).expect("store");
    assert_eq!(store.region_nodes(), [0]);
    assert_eq!(store.stats().numa_nodes, 1);
    assert_eq!(store.local_region(), Some(0));
    let created = store.create(key(1), 1000).expect("create");
    created.seal().expect("seal");
    // A node no machine has: mbind refuses, the arena stays one unbound span, nothing fails.
    let config = StoreConfig {
        pages: PageRequest::Small,
        prefault: false,
        numa_nodes: Some(vec![60_000]),
        ..StoreConfig::with_capacity(4 << 20)
    };
    let store = Store::new(config).expect("store");
    assert!(store.region_nodes().is_empty());
    let created = store.create(key(2), 1000).expect("create");
    created.seal().expect("seal");
}
