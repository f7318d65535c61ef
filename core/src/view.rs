//! Zero-copy typed views of vectors of numbers, read in place on the node that holds them.
//!
//! A `Vec<P>` of a number type `P` is encoded as an 8-byte little-endian length followed by
//! the elements' raw little-endian bytes (see [`codec`](crate::codec)), so on a little-endian
//! host its elements can be read where they lie. A [`View`] is that slice: it points into the
//! shared-memory store for stored objects (whose blocks are page-aligned, so the elements after
//! the header are aligned for any `P`), or into the inline bytes of a small object. Alignment is
//! checked when the view is made; a misaligned one is an [`Error::View`], never a misaligned read.
//!
//! While a view lives it holds a pin on the stored object (so it is neither spilled nor moved)
//! and a strong handle on the object itself (so dropping every `ObjectRef` first is fine: the
//! object is deleted after the view releases its pin).

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use bytes::Bytes;

use crate::codec::{self, SEQ_HEADER};
use crate::error::Error;
use crate::id::ObjectId;
use crate::object::{ObjectRef, ObjectValue, Payload};
use crate::store::{StoredObject, StoredPin};
use crate::sync::Arc;

mod sealed {
    pub trait Sealed {}
}

/// A number type whose `Vec` can be viewed in place: `u8 u16 u32 u64 i8 i16 i32 i64 f32 f64`.
///
/// Sealed: these are exactly the types whose encoding is their memory (for other types, even
/// plain-old-data structs, serde's encoding drops padding and so differs from memory).
pub trait Element: bytemuck::Pod + sealed::Sealed {}

macro_rules! element {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {}
    )*};
}
element!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

/// Where a view's bytes are held. Field order matters: the pin is released before the last
/// handle on the stored object may delete it.
enum Held {
    Inline(Bytes),
    Stored {
        pin: StoredPin,
        _object: Arc<StoredObject>,
    },
}

impl Held {
    fn bytes(&self) -> &[u8] {
        match self {
            Held::Inline(bytes) => bytes,
            Held::Stored { pin, .. } => pin,
        }
    }
}

/// A zero-copy view of an object holding a `Vec<T>`: derefs to `&[T]` pointing into the
/// object's bytes, which stay pinned in memory while the view lives.
///
/// Get one with [`ObjectRef::get_view`] or [`get_view`](crate::get_view).
pub struct View<T> {
    held: Held,
    object: ObjectId,
    len: usize,
    _elem: PhantomData<T>,
}

impl<T> fmt::Debug for View<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("View")
            .field("object", &self.object)
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len)
            .field("stored", &matches!(self.held, Held::Stored { .. }))
            .finish()
    }
}

impl<T: Element> View<T> {
    /// Pins `value` (if stored) and checks its header, length and alignment for `T`.
    pub(crate) fn new(object: ObjectId, value: &ObjectValue) -> Result<Self, Error> {
        let fail = |reason: String| Error::View {
            object,
            type_name: std::any::type_name::<T>(),
            reason,
        };
        if cfg!(target_endian = "big") {
            return Err(fail("views need a little-endian host".into()));
        }
        let local;
        let data = match &value.data {
            Payload::Remote(remote) => {
                local = remote.fetch()?;
                &local
            }
            other => other,
        };
        let held = match data {
            Payload::Inline(bytes) => Held::Inline(bytes.to_bytes()),
            Payload::Stored(stored) => Held::Stored {
                pin: stored.pin(object)?,
                _object: stored.clone(),
            },
            Payload::Remote(_) => return Err(fail("a pulled object is still remote".into())),
        };
        let len = match codec::pod_slice::<T>(object, held.bytes())? {
            Ok(elems) => elems.len(),
            Err(raw) => {
                return Err(fail(format!(
                    "its elements start at address {:p}, not aligned to {} bytes",
                    raw.as_ptr(),
                    align_of::<T>()
                )));
            }
        };
        Ok(View {
            held,
            object,
            len,
            _elem: PhantomData,
        })
    }

    /// The object viewed.
    pub fn object(&self) -> ObjectId {
        self.object
    }

    /// Whether the elements lie in the shared-memory store (rather than inline bytes).
    pub fn is_stored(&self) -> bool {
        matches!(self.held, Held::Stored { .. })
    }
}

impl<T: Element> Deref for View<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        let body = &self.held.bytes()[SEQ_HEADER..SEQ_HEADER + self.len * size_of::<T>()];
        // Length and alignment were checked in `View::new`, and the bytes never move while held.
        bytemuck::cast_slice(body)
    }
}

impl<T: Element> AsRef<[T]> for View<T> {
    fn as_ref(&self) -> &[T] {
        self
    }
}

/// Blocks until `object` is available and returns a zero-copy view of its elements (see
/// [`ObjectRef::get_view`]).
pub fn get_view<T: Element>(object: &ObjectRef<Vec<T>>) -> Result<View<T>, Error> {
    object.get_view()
}
