//! Slot publication (`scheduler/publish.rs`): a new slot waits to be published before it
//! takes work, so a job it pushes to its deque is seen by any later scan of the published
//! slots (`has_work`); and a reader never finds a published entry unset.

use loom::sync::Arc;

use crate::publish::Published;
use crate::sync::{AtomicBool, AtomicUsize, Ordering, fence, thread};

/// A slot's deque, reduced to its length.
type Deque = Arc<AtomicUsize>;

#[test]
fn a_job_pushed_by_a_new_slot_is_seen() {
    loom::model(|| {
        let slots: Arc<Published<Deque>> = Arc::new(Published::new(2));
        let pushed = Arc::new(AtomicBool::new(false));
        let deque: Deque = Arc::new(AtomicUsize::new(0));
        // The new slot's thread starts first, as `slot::spawn` starts it, and waits.
        let slot = {
            let (slots, pushed, deque) = (slots.clone(), pushed.clone(), deque.clone());
            thread::spawn(move || {
                assert!(slots.wait_published(0, || false));
                // Its task pushes a job to its own deque, then notifies (SeqCst fence).
                deque.fetch_add(1, Ordering::Release);
                fence(Ordering::SeqCst);
                pushed.store(true, Ordering::SeqCst);
            })
        };
        // A sleeper's look for work (`has_work`), concurrent with the publication.
        let reader = {
            let (slots, pushed) = (slots.clone(), pushed.clone());
            thread::spawn(move || {
                if pushed.load(Ordering::SeqCst) {
                    fence(Ordering::SeqCst);
                    assert!(
                        slots.iter().any(|d| d.load(Ordering::Acquire) > 0),
                        "a job pushed by a published slot is invisible"
                    );
                }
                for i in 0..slots.len() {
                    assert!(slots.get(i).is_some(), "slot {i} published but unset");
                }
            })
        };
        assert!(slots.publish(0, deque).is_ok());
        slot.join().unwrap();
        reader.join().unwrap();
        assert_eq!(slots.len(), 1);
    });
}

#[test]
fn entries_are_published_in_order() {
    loom::model(|| {
        let slots: Arc<Published<usize>> = Arc::new(Published::new(2));
        let reader = {
            let slots = slots.clone();
            thread::spawn(move || {
                let seen: Vec<usize> = slots.iter().copied().collect();
                assert_eq!(seen, (0..seen.len()).map(|i| 10 + i).collect::<Vec<_>>());
            })
        };
        assert!(slots.publish(0, 10).is_ok());
        assert!(slots.publish(0, 99).is_err(), "entry 0 published twice");
        assert!(slots.publish(1, 11).is_ok());
        assert!(slots.publish(2, 12).is_err(), "no room");
        reader.join().unwrap();
    });
}
