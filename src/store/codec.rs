//! The binary encoding of everything kuberaft writes to disk or sends to a peer since 0.2:
//! postcard 1 (serde; varint integers, a documented and stable wire format). Each format that
//! uses it carries its own version in front (a record kind, a file magic, a format number or a
//! leading byte), so that a later change of encoding can be told apart; what 0.1.0 wrote with
//! bincode 1 is read by `store::legacy`.
//!
//! Decoding reads from a slice, so it never allocates more than the input could hold, and
//! returns an error for damaged or trailing input, never a panic. This room knows no format's
//! framing and no type of ours.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a value could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecError(String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

impl From<postcard::Error> for CodecError {
    fn from(e: postcard::Error) -> Self {
        CodecError(e.to_string())
    }
}

impl From<super::legacy::LegacyError> for CodecError {
    fn from(e: super::legacy::LegacyError) -> Self {
        CodecError(e.to_string())
    }
}

impl CodecError {
    pub fn new(detail: impl Into<String>) -> CodecError {
        CodecError(detail.into())
    }
}

/// Appends the encoding of `value` to `out`, growing `out` once by what it takes (a size pass
/// first: a buffer grown by doubling copies a large value again at each step, and each step of a
/// megabyte or more is fresh memory to fault in).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.reserve_exact(encoded_len(value));
    Ok(postcard::serialize_with_flavor(value, Append(out))?)
}

/// postcard's output appended to a `Vec`, each piece copied whole (its own `to_extend` copies
/// byte by byte), a large one by `append_bytes`.
struct Append<'a>(&'a mut Vec<u8>);

/// Below this, a copy is a copy.
const LARGE_COPY_BYTES: usize = 4096;
/// Pieces of a backward copy: small enough that the system's `memcpy` loads each whole before
/// it stores it.
const BACKWARD_PIECE_BYTES: usize = 256;

/// Appends `data` to `out`. A large value lands a few bytes past where it sat in its page (after
/// a length or a header, both buffers page-aligned), and a forward copy whose destination runs
/// 1 to 63 bytes ahead of its source modulo 4 KiB stalls on every load (each seems to depend on
/// the store just before it: "4K aliasing"): measured on this machine's CPUs (AMD EPYC, glibc's
/// `rep movsb`), 64 KiB took 22-23 µs instead of 1.4. Such a copy goes backward instead, in
/// pieces (1.9 µs).
fn append_bytes(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(data.len());
    let to = (out.as_ptr() as usize).wrapping_add(out.len());
    let ahead = to.wrapping_sub(data.as_ptr() as usize) % 4096;
    if data.len() >= LARGE_COPY_BYTES && (1..64).contains(&ahead) {
        append_backward(out, data);
    } else {
        out.extend_from_slice(data);
    }
}

fn append_backward(out: &mut Vec<u8>, data: &[u8]) {
    let start = out.len();
    out.resize(start + data.len(), 0);
    for (to, from) in out[start..].rchunks_mut(BACKWARD_PIECE_BYTES).zip(data.rchunks(BACKWARD_PIECE_BYTES)) {
        to.copy_from_slice(from);
    }
}

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        append_bytes(self.0, data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The encoding of `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// How many bytes `encode` makes of `value`, without making them.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default()).unwrap_or(0)
}

/// Reads a `T` that takes all of `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = decode_prefix(bytes)?;
    if !rest.is_empty() {
        return Err(CodecError(format!("{} bytes after the value", rest.len())));
    }
    Ok(value)
}

/// Reads a `T` from the start of `bytes`; returns it and the bytes after it.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), CodecError> {
    Ok(postcard::take_from_bytes(bytes)?)
}

/// `#[serde(with = "crate::store::codec::bytes")]` on a `Vec<u8>` field: encoded and decoded as
/// bytes, in one piece, where serde's default for a `Vec<u8>` is a sequence, one call per byte
/// (a 64 KiB value cost each member tens of thousands of calls to decode, and its proposer as
/// many to encode). postcard writes bytes exactly as it writes a sequence of `u8` (the length,
/// then each byte as itself), so what was written before reads the same; a human-readable format
/// (JSON) keeps the sequence.
pub mod bytes {
    use std::fmt;

    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::{Deserialize, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            value.serialize(serializer)
        } else {
            serializer.serialize_bytes(value)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        if deserializer.is_human_readable() {
            Vec::<u8>::deserialize(deserializer)
        } else {
            deserializer.deserialize_byte_buf(ByteBuf)
        }
    }

    struct ByteBuf;

    impl<'de> Visitor<'de> for ByteBuf {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }

        /// A format that has no bytes of its own hands them over as a sequence.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element()? {
                out.push(byte);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn values_round_trip_and_damage_is_an_error() {
        let value: BTreeMap<String, Vec<u64>> = [("a".to_string(), vec![1, 300, u64::MAX])].into();
        let bytes = encode(&value).unwrap();
        assert_eq!(encoded_len(&value), bytes.len());
        assert_eq!(decode::<BTreeMap<String, Vec<u64>>>(&bytes), Ok(value.clone()));
        let mut out = vec![9];
        encode_into(&value, &mut out).unwrap();
        assert_eq!(out[1..], bytes[..]);
        for cut in 0..bytes.len() {
            assert!(decode::<BTreeMap<String, Vec<u64>>>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode::<BTreeMap<String, Vec<u64>>>(&trailing).is_err());
        assert!(decode_prefix::<BTreeMap<String, Vec<u64>>>(&trailing).is_ok());
        // A count of 2^63 items in ten bytes is refused, not allocated.
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0];
        assert!(decode::<Vec<u64>>(&huge).is_err());
        assert!(decode::<String>(&huge).is_err());
    }

    /// Large pieces are appended whole and in order, the backward copy too, at every distance
    /// from their source (`append_bytes`).
    #[test]
    fn large_pieces_are_appended_whole_at_any_distance() {
        let source: Vec<u8> = (0..80_000u32).map(|i| (i % 251) as u8).collect();
        for len in [0, 1, 255, 256, 4095, 4096, 4097, 65_536 + 17] {
            let data = &source[3..3 + len];
            let mut backward = vec![9, 8, 7];
            append_backward(&mut backward, data);
            assert_eq!(backward[..3], [9, 8, 7]);
            assert_eq!(&backward[3..], data, "backward, {len} bytes");
            // The destination 11 bytes ahead of the source modulo 4 KiB, and elsewhere.
            for ahead in [11usize, 0, 100] {
                let mut out = Vec::with_capacity(len + 8192);
                out.extend_from_slice(&[1, 2]);
                let to = out.as_ptr() as usize + out.len();
                let skip = (to.wrapping_sub(ahead).wrapping_sub(source.as_ptr() as usize)) % 4096;
                let data = &source[skip..skip + len];
                append_bytes(&mut out, data);
                assert_eq!(out[..2], [1, 2]);
                assert_eq!(&out[2..], data, "{len} bytes, {ahead} ahead");
            }
        }
        // Through the codec: a large value reads back as it was.
        let value = (5u8, ::bytes::Bytes::from(source.clone()));
        assert_eq!(decode::<(u8, ::bytes::Bytes)>(&encode(&value).unwrap()).unwrap(), value);
    }
}
