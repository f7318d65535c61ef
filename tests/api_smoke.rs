//! Quick smoke of the facade (fuller cases live in the area-prefixed test files).
use std::time::Duration;

#[manta::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[test]
fn smoke() {
    manta::init().unwrap();
    let x = add::remote(1, 2);
    let y = add::remote(&x, 10);
    assert_eq!(y.get_timeout(Duration::from_secs(10)).unwrap(), 13);
    manta::shutdown();
}
