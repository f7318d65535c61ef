//! The typed handles through which objects are written and read.
//!
//! Roles are types: a [`Created`] handle is the one writer of an object and can only be sealed
//! once (`seal` consumes it); a [`Sealed`] receipt names a finished object; a [`Pinned`] guard
//! is a zero-copy read view that keeps the object in place while it lives; a [`View`] is a
//! pinned view typed as plain-old-data; a [`SharedPin`] is a [`Pinned`] that owns an `Arc` of
//! its store instead of borrowing it, for readers whose views outlive a stack frame (core's
//! typed views).

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use crate::error::StoreError;
use crate::key::{Location, ObjectKey};
use crate::store::Store;

/// The writable handle of an object being created: exactly one exists per created object.
///
/// Dropping it without [`Created::seal`] aborts the object (its space is freed and the key
/// forgotten), so an object whose writer panicked never becomes visible half-written.
pub struct Created<'s> {
    store: StoreRef<'s>,
    key: ObjectKey,
    offset: usize,
    len: usize,
    armed: bool,
}

impl fmt::Debug for Created<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Created")
            .field("key", &self.key)
            .field("len", &self.len)
            .finish()
    }
}

impl<'s> Created<'s> {
    pub(crate) fn new(store: &'s Store, key: ObjectKey, offset: usize, len: usize) -> Self {
        Created {
            store: StoreRef::Borrowed(store),
            key,
            offset,
            len,
            armed: true,
        }
    }

    /// Takes over the writing with an `Arc` of the store (which must be this handle's store),
    /// so the handle can outlive the borrow.
    pub(crate) fn into_owned(mut self, store: Arc<Store>) -> CreatedOwned {
        debug_assert!(std::ptr::eq(&*self.store, &*store));
        self.armed = false;
        Created {
            store: StoreRef::Owned(store),
            key: self.key,
            offset: self.offset,
            len: self.len,
            armed: true,
        }
    }

    /// The object's key.
    pub fn key(&self) -> ObjectKey {
        self.key
    }

    /// The object's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: the store refuses zero-size objects.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the object lies in the arena.
    pub fn location(&self) -> Location {
        Location {
            offset: self.offset as u64,
            len: self.len as u64,
        }
    }

    /// The object's bytes, to be filled in place (zero-copy construction).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the allocator gave this block to this object alone, and the object is in state
        // Created, which no reader, spiller or evictor touches (store.rs, step 1); this handle is
        // its only writer and `&mut self` makes this borrow the only one. offset + len lies
        // inside the arena, which outlives this handle (borrowed for 's, or kept by the `Arc`).
        unsafe { std::slice::from_raw_parts_mut(self.store.arena_ptr(self.offset), self.len) }
    }

    /// Copies `data` to the start of the object; `data` must not be longer than the object.
    pub fn write(&mut self, data: &[u8]) {
        self.as_mut_slice()[..data.len()].copy_from_slice(data);
    }

    /// Makes the object immutable and visible to readers. Consumes the handle: an object
    /// cannot be sealed twice.
    pub fn seal(mut self) -> Result<Sealed, StoreError> {
        self.armed = false;
        self.store.seal(self.key)?;
        Ok(Sealed {
            key: self.key,
            len: self.len,
        })
    }

    /// Hands the writing to another process (which attached the arena writable and will call
    /// [`Store::seal`] by key when done). Until then `delete` of the key aborts the object.
    pub fn detach(mut self) -> Location {
        self.armed = false;
        self.store.mark_detached(self.key);
        self.location()
    }
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.store.abort_created(self.key);
        }
    }
}

/// A [`Created`] handle that owns an `Arc` of its store instead of borrowing it, for writers
/// that fill an object across `await` points (bytes arriving from the network straight into
/// the mapping). Made by [`Store::create_owned`]; the same rules as [`Created`] hold.
pub type CreatedOwned = Created<'static>;

/// How a [`Created`] handle reaches its store: borrowed, or owned by `Arc`.
enum StoreRef<'s> {
    Borrowed(&'s Store),
    Owned(Arc<Store>),
}

impl Deref for StoreRef<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        match self {
            StoreRef::Borrowed(s) => s,
            StoreRef::Owned(s) => s,
        }
    }
}

/// The receipt of a sealed object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    key: ObjectKey,
    len: usize,
}

impl Sealed {
    /// The object's key.
    pub fn key(&self) -> ObjectKey {
        self.key
    }

    /// The object's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: the store refuses zero-size objects.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A pinned, zero-copy view of a sealed object. While it lives the object stays in the arena
/// at the same place: it is not evicted, spilled or deleted. Dropping it releases the pin.
pub struct Pinned<'s> {
    store: &'s Store,
    key: ObjectKey,
    offset: usize,
    len: usize,
}

impl fmt::Debug for Pinned<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pinned")
            .field("key", &self.key)
            .field("len", &self.len)
            .finish()
    }
}

impl<'s> Pinned<'s> {
    /// Wraps a pin the store has just taken on `key`.
    pub(crate) fn new(store: &'s Store, key: ObjectKey, offset: usize, len: usize) -> Self {
        Pinned {
            store,
            key,
            offset,
            len,
        }
    }

    /// The object's key.
    pub fn key(&self) -> ObjectKey {
        self.key
    }

    /// Where the object lies in the arena (to tell a process that attached it).
    pub fn location(&self) -> Location {
        Location {
            offset: self.offset as u64,
            len: self.len as u64,
        }
    }

    /// Keeps the pin past this guard (e.g. on behalf of another process reading the object);
    /// release it with [`Store::release`].
    pub fn leak(self) -> Location {
        let loc = self.location();
        std::mem::forget(self);
        loc
    }

    /// The object as a slice of `T`, with no copy. Fails if the length is not a whole number of
    /// `T`s; alignment always holds (blocks are 4 KiB aligned).
    pub fn cast<T: bytemuck::Pod>(&self) -> Result<&[T], StoreError> {
        bytemuck::try_cast_slice(self).map_err(|_| StoreError::BadView {
            key: self.key,
            len: self.len,
            type_name: std::any::type_name::<T>(),
            elem: size_of::<T>(),
        })
    }
}

impl Deref for Pinned<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: this guard holds a pin on a sealed object: while pins > 0 the store neither
        // frees nor spills nor evicts its block, and sealed bytes are never written
        // (store.rs, steps 2–3). offset + len lies inside the arena, which outlives 's.
        unsafe { std::slice::from_raw_parts(self.store.arena_ptr(self.offset), self.len) }
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        self.store.unpin(self.key);
    }
}

/// A pinned view of a sealed object as a slice of plain-old-data `T` (no copy).
pub struct View<'s, T> {
    pin: Pinned<'s>,
    _elem: PhantomData<T>,
}

impl<T> fmt::Debug for View<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("View")
            .field("key", &self.pin.key)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<'s, T: bytemuck::Pod> View<'s, T> {
    /// Checks that `pin`'s bytes are a whole number of `T`s.
    pub(crate) fn new(pin: Pinned<'s>) -> Result<Self, StoreError> {
        pin.cast::<T>()?;
        Ok(View {
            pin,
            _elem: PhantomData,
        })
    }

    /// The pin underneath.
    pub fn pinned(&self) -> &Pinned<'s> {
        &self.pin
    }
}

impl<T: bytemuck::Pod> Deref for View<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // Checked in `View::new`: length divides, and blocks are 4 KiB aligned.
        bytemuck::cast_slice(&self.pin)
    }
}

/// A pinned, zero-copy view like [`Pinned`] that holds its store by `Arc` rather than by
/// borrow, so it can be stored in a value with no lifetime. Same guarantees: while it lives the
/// object is neither freed, spilled, evicted nor deleted. Dropping it releases the pin.
pub struct SharedPin {
    store: Arc<Store>,
    key: ObjectKey,
    offset: usize,
    len: usize,
}

impl fmt::Debug for SharedPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedPin")
            .field("key", &self.key)
            .field("len", &self.len)
            .finish()
    }
}

impl SharedPin {
    /// Takes over the pin held by `pin` (which must be a guard on `store`).
    pub(crate) fn new(store: Arc<Store>, pin: Pinned<'_>) -> Self {
        debug_assert!(std::ptr::eq(pin.store, &*store));
        let key = pin.key;
        let Location { offset, len } = pin.leak();
        SharedPin {
            store,
            key,
            offset: offset as usize,
            len: len as usize,
        }
    }

    /// The object's key.
    pub fn key(&self) -> ObjectKey {
        self.key
    }

    /// Where the object lies in the arena (to tell a process that attached it: the pin keeps
    /// it there while this guard lives).
    pub fn location(&self) -> Location {
        Location {
            offset: self.offset as u64,
            len: self.len as u64,
        }
    }
}

impl Deref for SharedPin {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: as for `Pinned`: this guard owns a pin on a sealed object (taken over from a
        // `Pinned` in `SharedPin::new` and released only in drop), so its block is neither freed
        // nor spilled nor evicted and its bytes never change (store.rs, steps 2–3). The `Arc`
        // keeps the store, hence the arena mapping, alive at least as long as this guard.
        unsafe { std::slice::from_raw_parts(self.store.arena_ptr(self.offset), self.len) }
    }
}

impl Drop for SharedPin {
    fn drop(&mut self) {
        self.store.unpin(self.key);
    }
}
