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

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    *out = postcard::to_extend(value, std::mem::take(out))?;
    Ok(())
}

/// The encoding of `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_stdvec(value)?)
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
}
