//! Zero-copy reads: `get_view` of a stored vector points into the shared mapping.

mod common;

const MIB: usize = 1 << 20;

fn start(store: usize) -> common::Runtime {
    common::start(
        manta::Config::default()
            .num_cpus(2.0)
            .object_store_memory(store),
    )
}

#[test]
fn views_of_a_large_object_share_one_mapping() {
    let _rt = start(1100 * MIB);
    // 1 GiB of f32s, including the 8-byte length header (1 GiB - 8 bytes of elements).
    let n = ((1 << 30) - 8) / 4;
    let r = manta::put(vec![0.25f32; n]).unwrap();
    let a = r.get_view().unwrap();
    let b = manta::get_view(&r).unwrap();
    assert!(a.is_stored());
    assert_eq!(a.len(), n);
    assert_eq!(
        a.as_ptr(),
        b.as_ptr(),
        "two views read the same bytes: nothing was copied"
    );
    assert_eq!((a[0], a[n - 1]), (0.25, 0.25));
    assert_eq!(a.as_ptr() as usize % align_of::<f32>(), 0);
}

#[test]
fn a_view_of_a_256_mib_object_is_the_store_s_bytes() {
    let _rt = start(300 * MIB);
    let n = 32 * MIB; // 256 MiB of u64
    let r = manta::put((0..n as u64).collect::<Vec<u64>>()).unwrap();
    let first = r.get_view().unwrap();
    let second = r.get_view().unwrap();
    assert_eq!(first.as_ptr(), second.as_ptr());
    assert_eq!(first[12345], 12345);
    assert_eq!(second.last(), Some(&(n as u64 - 1)));
    let s = manta::status().unwrap().object_store.unwrap();
    assert_eq!(s.objects, 1);
}

#[test]
fn inline_objects_and_task_results_can_be_viewed() {
    let _rt = start(64 * MIB);
    let small = manta::put(vec![1i32, -2, 3]).unwrap();
    let v = small.get_view().unwrap();
    assert!(!v.is_stored());
    assert_eq!(&*v, &[1, -2, 3]);
    let empty = manta::put(Vec::<f64>::new()).unwrap();
    assert!(empty.get_view().unwrap().is_empty());

    let r = double::remote(vec![1.5f64; MIB]);
    let view = r.get_view().unwrap();
    assert!(view.is_stored());
    assert!(view.iter().all(|&x| x == 3.0));
    assert_eq!(view.iter().sum::<f64>(), 3.0 * MIB as f64);
}

#[manta::remote]
fn double(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| 2.0 * x).collect()
}
