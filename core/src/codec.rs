//! Encoding of values: serde with bincode 2, plus tracking of references nested in values.
//!
//! Encoding a value that contains [`ObjectRef`](crate::ObjectRef)s or
//! [`ActorHandle`](crate::ActorHandle)s records each one (a thread-local collector is active for
//! the duration of [`encode`]); the resulting [`ObjectValue`] holds them strongly, so nested
//! references keep their referents alive as long as the container lives.

use std::cell::RefCell;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::actor::ActorCell;
use crate::error::Error;
use crate::id::ObjectId;
use crate::object::{ObjectCell, ObjectValue};
use crate::runtime;
use crate::sync::Arc;

/// A strong handle held by a container on something referenced inside it.
#[derive(Clone, Debug)]
pub(crate) enum Nested {
    Object(#[allow(dead_code)] Arc<ObjectCell>),
    Actor(#[allow(dead_code)] Arc<ActorCell>),
}

thread_local! {
    static COLLECTOR: RefCell<Option<Vec<Nested>>> = const { RefCell::new(None) };
}

fn config() -> bincode::config::Configuration<bincode::config::LittleEndian, bincode::config::Fixint>
{
    bincode::config::standard().with_fixed_int_encoding()
}

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
pub(crate) fn note_nested_actor(actor: &Arc<ActorCell>) {
    COLLECTOR.with(|c| {
        if let Some(v) = c.borrow_mut().as_mut() {
            v.push(Nested::Actor(actor.clone()));
        }
    });
}

/// Encodes `value`, collecting the references nested in it.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<ObjectValue, Error> {
    let previous = COLLECTOR.with(|c| c.borrow_mut().replace(Vec::new()));
    let bytes = bincode::serde::encode_to_vec(value, config());
    let nested = COLLECTOR
        .with(|c| std::mem::replace(&mut *c.borrow_mut(), previous))
        .unwrap_or_default();
    match bytes {
        Ok(bytes) => Ok(ObjectValue {
            bytes: Bytes::from(bytes),
            nested: nested.into_boxed_slice(),
        }),
        Err(e) => Err(Error::Encode {
            type_name: std::any::type_name::<T>(),
            message: e.to_string(),
        }),
    }
}

/// Decodes bytes of object `object` as a `T`.
pub(crate) fn decode<T: DeserializeOwned>(object: ObjectId, bytes: &[u8]) -> Result<T, Error> {
    match bincode::serde::decode_from_slice::<T, _>(bytes, config()) {
        Ok((value, _)) => Ok(value),
        Err(e) => Err(Error::Decode {
            object,
            type_name: std::any::type_name::<T>(),
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_type_mismatch() {
        let v = encode(&vec![1u32, 2, 3]).unwrap();
        assert!(v.nested.is_empty());
        let back: Vec<u32> = decode(ObjectId::from_u64(1), &v.bytes).unwrap();
        assert_eq!(back, vec![1, 2, 3]);
        let err = decode::<String>(ObjectId::from_u64(1), &[0xff, 0xff]).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err}");
    }
}
