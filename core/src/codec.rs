//! Encoding of values: serde with bincode 2 (fixed-int, little-endian), a memcpy fast path for
//! vectors of numbers, the choice between inline bytes and the object store, and tracking of
//! references nested in values.
//!
//! # Layout
//! Every value is encoded as bincode 2's `standard().with_fixed_int_encoding()` would: integers
//! and floats as their little-endian bytes, a sequence as a `u64` length then its elements. So a
//! `Vec<f32>` of n elements is 8 bytes of `n` followed by the raw little-endian floats.
//!
//! # Fast path
//! For `Vec<P>` with `P` one of `u8 u16 u32 u64 i8 i16 i32 i64 f32 f64` (recognised by
//! `TypeId`, on little-endian hosts) that layout is the vector's memory behind an 8-byte header,
//! so [`encode`] writes it with one `memcpy` and [`decode`] reads it back with one, skipping
//! serde's element-by-element walk. The bytes are identical to the generic path's (tested
//! below); [`View`](crate::View) relies on this layout to read such vectors in place.
//!
//! # Where the bytes go: one copy
//! [`encode`] first learns the encoded size (the fast path knows it; otherwise a counting pass
//! through bincode's `SizeWriter`, which writes nothing). A value of at most
//! `max_inline_object_bytes` is then encoded inline (`InlineBytes`: in the value itself up to
//! 22 bytes, else a `Bytes` buffer); a larger one straight into
//! a new object of exactly that size in the runtime's shared-memory store
//! ([`ObjectStore::write`](crate::store::ObjectStore::write)), so its bytes are copied once,
//! from the value into the mapping. Without a running runtime every value stays inline.
//!
//! # Nested references
//! Encoding a value that contains [`ObjectRef`](crate::ObjectRef)s or
//! [`ActorHandle`](crate::ActorHandle)s records each one (a thread-local collector is active for
//! the duration of [`encode`]; the counting pass's records are discarded so each reference is
//! held once); the resulting [`ObjectValue`] holds them strongly, so nested references keep
//! their referents alive as long as the container lives. [`decode`] runs inside a
//! borrow scope: the references it deserialises that other processes own are registered with
//! those owners before it returns (the borrower protocol, in `cluster/borrow.rs`).

use std::any::{Any, TypeId};
use std::cell::RefCell;

use bincode::enc::write::SizeWriter;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::actor::RawActorHandle;
use crate::error::Error;
use crate::id::ObjectId;
use crate::object::{InlineBytes, NestedRefs, ObjectCell, ObjectValue, Payload};
use crate::runtime;
use crate::sync::Arc;

/// A strong handle held by a container on something referenced inside it.
#[derive(Clone, Debug)]
pub(crate) enum Nested {
    Object(#[allow(dead_code)] Arc<ObjectCell>),
    /// The handle itself: the actor's cell and, in a borrower, its borrow registration.
    Actor(#[allow(dead_code)] RawActorHandle),
}

thread_local! {
    static COLLECTOR: RefCell<Option<Vec<Nested>>> = const { RefCell::new(None) };
}

fn config() -> bincode::config::Configuration<bincode::config::LittleEndian, bincode::config::Fixint>
{
    bincode::config::standard().with_fixed_int_encoding()
}

/// Size of the length header of an encoded sequence.
pub(crate) const SEQ_HEADER: usize = 8;

/// Records an object reference being serialised (and makes it resolvable by id).
pub(crate) fn note_nested(cell: &Arc<ObjectCell>) {
    let _ = runtime::with_current(|rt| cell.escape(rt));
    COLLECTOR.with(|c| {
        if let Some(v) = c.borrow_mut().as_mut() {
            v.push(Nested::Object(cell.clone()));
        }
    });
}

/// Records an actor handle being serialised.
pub(crate) fn note_nested_actor(actor: &RawActorHandle) {
    COLLECTOR.with(|c| {
        if let Some(v) = c.borrow_mut().as_mut() {
            v.push(Nested::Actor(actor.clone()));
        }
    });
}

/// Calls `$m!(P)` for each number type of the fast path.
macro_rules! for_each_pod {
    ($m:ident) => {
        $m!(u8);
        $m!(u16);
        $m!(u32);
        $m!(u64);
        $m!(i8);
        $m!(i16);
        $m!(i32);
        $m!(i64);
        $m!(f32);
        $m!(f64);
    };
}

/// The element count and raw bytes of `value` if it is a `Vec` of a fast-path number type.
fn pod_elements<T: 'static>(value: &T) -> Option<(usize, &[u8])> {
    if cfg!(target_endian = "big") {
        return None;
    }
    let any: &dyn Any = value;
    macro_rules! try_pod {
        ($p:ty) => {
            if let Some(v) = any.downcast_ref::<Vec<$p>>() {
                return Some((v.len(), bytemuck::cast_slice::<$p, u8>(v)));
            }
        };
    }
    for_each_pod!(try_pod);
    None
}

/// Encodes `value`, collecting the references nested in it, into inline bytes or, above
/// `max_inline_object_bytes`, into the object store (see the module docs).
pub fn encode<T: Serialize + 'static>(value: &T) -> Result<ObjectValue, Error> {
    if let Some((count, raw)) = pod_elements(value) {
        let data = write_payload(SEQ_HEADER + raw.len(), |buf| {
            let (header, body) = buf.split_at_mut(SEQ_HEADER);
            header.copy_from_slice(&(count as u64).to_le_bytes());
            body.copy_from_slice(raw);
            Ok(())
        })?;
        return Ok(ObjectValue {
            data,
            nested: NestedRefs::default(),
        });
    }
    let previous = COLLECTOR.with(|c| c.borrow_mut().replace(Vec::new()));
    let data = encode_serde(value);
    let nested = COLLECTOR
        .with(|c| std::mem::replace(&mut *c.borrow_mut(), previous))
        .unwrap_or_default();
    Ok(ObjectValue {
        data: data?,
        nested: NestedRefs::new(nested),
    })
}

/// The generic path: count, then encode in place.
fn encode_serde<T: Serialize>(value: &T) -> Result<Payload, Error> {
    let encode_error = |message: String| Error::Encode {
        type_name: std::any::type_name::<T>(),
        message,
    };
    let mut counter = SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut counter, config())
        .map_err(|e| encode_error(e.to_string()))?;
    let size = counter.bytes_written;
    // The counting pass recorded the nested references; the writing pass records them again.
    COLLECTOR.with(|c| {
        if let Some(v) = c.borrow_mut().as_mut() {
            v.clear();
        }
    });
    write_payload(size, |buf| {
        let written = bincode::serde::encode_into_slice(value, buf, config())
            .map_err(|e| encode_error(e.to_string()))?;
        if written != size {
            return Err(encode_error(format!(
                "its serialisation changed length between passes ({size} then {written} bytes)"
            )));
        }
        Ok(())
    })
}

/// `size` bytes filled by `fill`: inline up to the threshold, else in the object store.
fn write_payload(
    size: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), Error>,
) -> Result<Payload, Error> {
    if size > runtime::max_inline_object_bytes()
        && let Some(store) = runtime::object_store()
    {
        return store.write(size, fill).map(Payload::Stored);
    }
    InlineBytes::filled(size, fill).map(Payload::Inline)
}

/// Encodes `value` alone as bytes, with the object codec's serde configuration and no
/// reference tracking (a task error's typed cause).
pub(crate) fn encode_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| Error::Encode {
        type_name: std::any::type_name::<T>(),
        message: e.to_string(),
    })
}

/// Decodes bytes written by [`encode_bytes`].
pub(crate) fn decode_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    bincode::serde::decode_from_slice(bytes, config())
        .map(|(v, _)| v)
        .map_err(|e| Error::Decode {
            object: ObjectId::from_u64(0),
            type_name: std::any::type_name::<T>(),
            message: e.to_string(),
        })
}

/// Decodes bytes of object `object` as a `T`.
pub(crate) fn decode<T: DeserializeOwned + 'static>(
    object: ObjectId,
    bytes: &[u8],
) -> Result<T, Error> {
    if let Some(value) = decode_pod::<T>(object, bytes) {
        return value;
    }
    // References owned by other processes are registered with their owners when this scope
    // ends, before the value is returned.
    let _borrows = crate::remote::DecodeScope::begin();
    match bincode::serde::decode_from_slice::<T, _>(bytes, config()) {
        Ok((value, _)) => Ok(value),
        Err(e) => Err(Error::Decode {
            object,
            type_name: std::any::type_name::<T>(),
            message: e.to_string(),
        }),
    }
}

/// The fast path of [`decode`], if `T` is a `Vec` of a fast-path number type.
fn decode_pod<T: 'static>(object: ObjectId, bytes: &[u8]) -> Option<Result<T, Error>> {
    if cfg!(target_endian = "big") {
        return None;
    }
    macro_rules! try_pod {
        ($p:ty) => {
            if TypeId::of::<T>() == TypeId::of::<Vec<$p>>() {
                let vec = match pod_slice::<$p>(object, bytes) {
                    // Aligned (the store's blocks are page-aligned): one memcpy.
                    Ok(Ok(elems)) => elems.to_vec(),
                    Ok(Err(raw)) => bytemuck::pod_collect_to_vec::<u8, $p>(raw),
                    Err(e) => return Some(Err(e)),
                };
                let boxed: Box<dyn Any> = Box::new(vec);
                // Cannot fail: T is Vec<$p>, checked above.
                return boxed.downcast::<T>().ok().map(|b| Ok(*b));
            }
        };
    }
    for_each_pod!(try_pod);
    None
}

/// The elements of an encoded `Vec<P>`: `Ok(Ok(slice))` in place when aligned for `P`,
/// `Ok(Err(raw bytes))` when not, `Err` when the length header does not fit the bytes.
pub(crate) fn pod_slice<P: bytemuck::Pod>(
    object: ObjectId,
    bytes: &[u8],
) -> Result<Result<&[P], &[u8]>, Error> {
    let bad = |message: String| Error::Decode {
        object,
        type_name: std::any::type_name::<Vec<P>>(),
        message,
    };
    let Some((header, body)) = bytes.split_first_chunk::<SEQ_HEADER>() else {
        return Err(bad(format!(
            "{} bytes is too short for a vector",
            bytes.len()
        )));
    };
    let count = u64::from_le_bytes(*header);
    let len = usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(size_of::<P>()))
        .filter(|&len| len <= body.len())
        .ok_or_else(|| {
            bad(format!(
                "its length says {count} elements, but only {} bytes follow",
                body.len()
            ))
        })?;
    let raw = &body[..len];
    Ok(bytemuck::try_cast_slice::<u8, P>(raw).map_err(|_| raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(v: &ObjectValue) -> &[u8] {
        match &v.data {
            Payload::Inline(b) => b,
            _ => panic!("no runtime: values stay inline"),
        }
    }

    #[test]
    fn round_trip_and_type_mismatch() {
        let v = encode(&vec![1u32, 2, 3]).unwrap();
        assert!(v.nested.is_empty());
        let back: Vec<u32> = decode(ObjectId::from_u64(1), inline(&v)).unwrap();
        assert_eq!(back, vec![1, 2, 3]);
        let err = decode::<String>(ObjectId::from_u64(1), &[0xff, 0xff]).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err}");
    }

    /// Encodings of up to `InlineBytes::SMALL` bytes live in the value itself, longer ones in
    /// a shared buffer; both read back the same, and `to_bytes` copies a small one out.
    #[test]
    fn small_encodings_live_in_the_value() {
        for n in [0usize, 1, 13, 14, 15, 40] {
            // A `Vec<u8>` of n elements encodes as an 8-byte count and n bytes.
            let value: Vec<u8> = (0..n as u8).collect();
            let v = encode(&value).unwrap();
            let Payload::Inline(bytes) = &v.data else {
                panic!("no runtime: values stay inline")
            };
            let small = matches!(bytes, InlineBytes::Small { .. });
            assert_eq!(small, SEQ_HEADER + n <= InlineBytes::SMALL, "{n} elements");
            assert_eq!(bytes.len(), SEQ_HEADER + n);
            assert_eq!(&bytes.to_bytes()[..], &bytes[..]);
            let back: Vec<u8> = decode(ObjectId::from_u64(1), bytes).unwrap();
            assert_eq!(back, value);
        }
        let s = encode(&"short".to_string()).unwrap();
        assert!(matches!(
            &s.data,
            Payload::Inline(InlineBytes::Small { .. })
        ));
        let back: String = decode(ObjectId::from_u64(1), inline(&s)).unwrap();
        assert_eq!(back, "short");
    }

    /// The fast path and serde's generic path produce identical bytes, and each decodes the
    /// other's.
    #[test]
    fn fast_path_matches_generic_layout() {
        fn check<P>(values: Vec<P>)
        where
            P: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + 'static,
        {
            let fast = encode(&values).unwrap();
            let generic = bincode::serde::encode_to_vec(&values, config()).unwrap();
            assert_eq!(
                inline(&fast),
                &generic[..],
                "{}",
                std::any::type_name::<P>()
            );
            let via_fast: Vec<P> = decode(ObjectId::from_u64(1), &generic).unwrap();
            assert_eq!(via_fast, values);
            let via_serde: Vec<P> = bincode::serde::decode_from_slice(inline(&fast), config())
                .unwrap()
                .0;
            assert_eq!(via_serde, values);
        }
        check::<u8>(vec![0, 1, 255]);
        check::<u16>(vec![0, 1, u16::MAX]);
        check::<u32>(vec![7, u32::MAX]);
        check::<u64>(vec![u64::MAX, 3]);
        check::<i8>(vec![-1, 5]);
        check::<i16>(vec![i16::MIN, 2]);
        check::<i32>(vec![-7, i32::MAX]);
        check::<i64>(vec![i64::MIN, 0, 9]);
        check::<f32>(vec![1.5, -0.0, f32::INFINITY]);
        check::<f64>(vec![std::f64::consts::PI, f64::MIN_POSITIVE]);
        check::<u8>(Vec::new());
    }

    #[test]
    fn fast_decode_rejects_a_short_body_and_reads_unaligned_bytes() {
        let err = decode::<Vec<u32>>(ObjectId::from_u64(1), &[9, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(matches!(err, Err(Error::Decode { .. })), "{err:?}");
        let encoded = inline(&encode(&vec![1u64, 2, 3]).unwrap()).to_vec();
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&encoded);
        let back: Vec<u64> = decode(ObjectId::from_u64(1), &shifted[1..]).unwrap();
        assert_eq!(back, vec![1, 2, 3]);
    }
}
