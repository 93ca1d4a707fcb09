//! [`SharedBytes`]: a byte string that a decoded payload shares with the frame it came in.

use std::cell::Cell;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Bytes that are not copied when they arrive: an argument, result or stream item of this type
/// (or a field of one) decoded from a bincode [`Payload`](crate::Payload) points into the frame
/// it came in, where `Vec<u8>` or `serde_bytes::ByteBuf` would allocate and copy.
///
/// Cloning one costs a reference count, and so does sending it: the actor that hands out the
/// same bytes many times (a stream of chunks of a file in memory, say) allocates nothing per
/// item. It keeps the whole frame alive as long as it lives; [`SharedBytes::copy_from_slice`]
/// makes one that owns just its bytes.
///
/// On the wire it is serde's byte string (bincode: a length and the bytes; JSON: an array of
/// numbers), the same as `serde_bytes::ByteBuf`, so the two can take each other's place.
///
/// ```
/// use trebuchet::{Encoding, Payload, SharedBytes};
///
/// let payload = Payload::encode(&SharedBytes::from(vec![1, 2, 3]), Encoding::Bincode)?;
/// let bytes: SharedBytes = payload.decode()?;
/// assert_eq!(&bytes[..], &[1, 2, 3]);
/// # Ok::<(), trebuchet::protocol::PayloadError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedBytes(Bytes);

impl SharedBytes {
    /// Bytes that share `bytes` (no copy).
    pub const fn new(bytes: Bytes) -> Self {
        SharedBytes(bytes)
    }

    /// Bytes that own a copy of `data` (and keep nothing else alive).
    pub fn copy_from_slice(data: &[u8]) -> Self {
        SharedBytes(Bytes::copy_from_slice(data))
    }

    /// The bytes as [`bytes::Bytes`].
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Bytes> for SharedBytes {
    fn from(bytes: Bytes) -> Self {
        SharedBytes(bytes)
    }
}

impl From<Vec<u8>> for SharedBytes {
    fn from(bytes: Vec<u8>) -> Self {
        SharedBytes(bytes.into())
    }
}

impl From<&'static [u8]> for SharedBytes {
    fn from(bytes: &'static [u8]) -> Self {
        SharedBytes(Bytes::from_static(bytes))
    }
}

impl From<SharedBytes> for Bytes {
    fn from(bytes: SharedBytes) -> Self {
        bytes.0
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Serialize for SharedBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(SharedBytesVisitor)
    }
}

struct SharedBytesVisitor;

impl<'de> Visitor<'de> for SharedBytesVisitor {
    type Value = SharedBytes;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, data: &'de [u8]) -> Result<SharedBytes, E> {
        Ok(SharedBytes(share_or_copy(data)))
    }

    fn visit_bytes<E: de::Error>(self, data: &[u8]) -> Result<SharedBytes, E> {
        Ok(SharedBytes::copy_from_slice(data))
    }

    fn visit_byte_buf<E: de::Error>(self, data: Vec<u8>) -> Result<SharedBytes, E> {
        Ok(SharedBytes::from(data))
    }

    fn visit_str<E: de::Error>(self, data: &str) -> Result<SharedBytes, E> {
        Ok(SharedBytes::copy_from_slice(data.as_bytes()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SharedBytes, A::Error> {
        let mut data = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element::<u8>()? {
            data.push(byte);
        }
        Ok(SharedBytes::from(data))
    }
}

thread_local! {
    /// The bytes a [`Payload`](crate::Payload) is being decoded from on this thread, if any
    /// (see [`decoding_from`]).
    static SOURCE: Cell<*const Bytes> = const { Cell::new(std::ptr::null()) };
}

/// Runs `decode`, which reads from `source`, so that [`SharedBytes`] it decodes share `source`
/// instead of copying out of it.
///
/// serde gives a visitor a slice of the input, not the `Bytes` it is part of: this leaves a
/// pointer to `source` where the visitor can find it, for as long as `decode` runs.
pub(crate) fn decoding_from<R>(source: &Bytes, decode: impl FnOnce() -> R) -> R {
    /// Puts back what was there before (a decode may nest in another), also on a panic.
    struct Restore(*const Bytes);
    impl Drop for Restore {
        fn drop(&mut self) {
            SOURCE.with(|cell| cell.set(self.0));
        }
    }
    let _restore = Restore(SOURCE.with(|cell| cell.replace(source)));
    decode()
}

/// `data` as a slice of the bytes being decoded from when it lies inside them, else a copy.
fn share_or_copy(data: &[u8]) -> Bytes {
    SOURCE.with(|cell| {
        let source = cell.get();
        if !source.is_null() {
            // SAFETY: `decoding_from` sets the pointer from a reference that outlives the call
            // it makes, and puts the previous value back before that reference can end.
            let source = unsafe { &*source };
            let (start, end) = (
                source.as_ptr() as usize,
                source.as_ptr() as usize + source.len(),
            );
            let at = data.as_ptr() as usize;
            if start <= at && at + data.len() <= end {
                let offset = at - start;
                return source.slice(offset..offset + data.len());
            }
        }
        Bytes::copy_from_slice(data)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Encoding, Payload};

    #[test]
    fn a_bincode_payload_is_shared_not_copied() {
        let payload =
            Payload::encode(&(7u32, SharedBytes::from(vec![9; 100])), Encoding::Bincode).unwrap();
        let (number, bytes): (u32, SharedBytes) = payload.decode().unwrap();
        assert_eq!((number, &bytes[..]), (7, &[9; 100][..]));
        let frame = payload.as_bytes().as_ptr_range();
        assert!(
            frame.contains(&bytes.as_ptr()),
            "the bytes point into the payload"
        );
    }

    #[test]
    fn outside_a_payload_decode_the_bytes_are_copied() {
        let encoded = bincode::serde::encode_to_vec(
            SharedBytes::from(vec![1, 2]),
            crate::protocol::bincode_config(),
        )
        .unwrap();
        let (bytes, _): (SharedBytes, usize) =
            bincode::serde::decode_from_slice(&encoded, crate::protocol::bincode_config()).unwrap();
        assert_eq!(&bytes[..], &[1, 2]);
        assert!(!encoded.as_ptr_range().contains(&bytes.as_ptr()));
    }

    #[test]
    fn json_and_bincode_read_what_byte_buf_writes_and_back() {
        let data = vec![0u8, 1, 254, 255];
        for encoding in [Encoding::Json, Encoding::Bincode] {
            let from_buf =
                Payload::encode(&serde_bytes::ByteBuf::from(data.clone()), encoding).unwrap();
            let ours = Payload::encode(&SharedBytes::from(data.clone()), encoding).unwrap();
            assert_eq!(from_buf.as_bytes(), ours.as_bytes(), "{encoding:?}");
            assert_eq!(&ours.decode::<SharedBytes>().unwrap()[..], &data[..]);
            assert_eq!(
                ours.decode::<serde_bytes::ByteBuf>().unwrap().into_vec(),
                data
            );
        }
    }

    #[test]
    fn nested_decodes_restore_the_outer_source() {
        let inner = Bytes::from_static(b"inner");
        let outer = Bytes::from(vec![1u8, 2, 3]);
        decoding_from(&outer, || {
            decoding_from(&inner, || {
                assert_eq!(share_or_copy(&inner[1..3]).as_ptr(), inner[1..].as_ptr());
            });
            assert_eq!(share_or_copy(&outer[..2]).as_ptr(), outer.as_ptr());
            assert_ne!(share_or_copy(&inner[..2]).as_ptr(), inner.as_ptr());
        });
    }
}
