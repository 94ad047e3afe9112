//! A reader for the bincode 1 encoding that kuberaft 0.1.0 wrote (format 1 of the WAL records,
//! the snapshot file, the key-value snapshot body, commands and member records, and the peer
//! messages of 0.1.0 members), so that data directories and peers of that release still read.
//!
//! bincode 1 with its default options, as `bincode::serialize` used them: fixed-width little
//! endian integers, `bool` as one byte 0 or 1, strings and byte strings as a u64 length and the
//! bytes, `Option` as one byte 0 or 1 and the value, sequences and maps as a u64 length and the
//! items, structs and tuples as their fields in order (no length), enums as a u32 variant index
//! and the variant's content. Only those shapes are read; anything else (`deserialize_any`,
//! floats, chars, ignored fields) is an error, as nothing of ours was written with them.
//!
//! Input comes from disk and peers: every read is checked against the remaining input and
//! returns an error, never panics, and nothing is allocated from a length field beyond what the
//! remaining input can hold (a sequence or map claiming more items than bytes left is refused
//! at once: each of our items takes at least one byte).
//!
//! This room only reads; nothing writes format 1 any more. It knows no type of ours.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::Deserialize;

/// Why bytes do not read as bincode 1 of the expected type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyError(String);

impl fmt::Display for LegacyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bincode-1 data: {}", self.0)
    }
}

impl std::error::Error for LegacyError {}

impl de::Error for LegacyError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        LegacyError(msg.to_string())
    }
}

/// Reads a `T` from the start of `bytes`; bytes after it are ignored (as 0.1.0's readers did).
pub fn from_bytes<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, LegacyError> {
    let mut reader = Reader { input: bytes };
    T::deserialize(&mut reader)
}

/// Reads a `T` that must take exactly all of `bytes`, as every encoding 0.1.0 wrote did.
pub fn from_bytes_exact<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, LegacyError> {
    let mut reader = Reader { input: bytes };
    let value = T::deserialize(&mut reader)?;
    if !reader.input.is_empty() {
        return Err(LegacyError(format!("{} bytes after the value", reader.input.len())));
    }
    Ok(value)
}

struct Reader<'de> {
    input: &'de [u8],
}

impl<'de> Reader<'de> {
    fn take(&mut self, n: usize) -> Result<&'de [u8], LegacyError> {
        if n > self.input.len() {
            return Err(LegacyError(format!("needs {n} bytes, {} left", self.input.len())));
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LegacyError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, LegacyError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, LegacyError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, LegacyError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A u64 length of a string or byte string: its bytes must be there.
    fn byte_len(&mut self) -> Result<usize, LegacyError> {
        let len = self.u64()?;
        match usize::try_from(len) {
            Ok(len) if len <= self.input.len() => Ok(len),
            _ => Err(LegacyError(format!("a length of {len} bytes, {} left", self.input.len()))),
        }
    }

    /// A u64 count of sequence or map items: each takes at least one byte, so a count above the
    /// bytes left is damage (and is never used to size an allocation).
    fn item_count(&mut self) -> Result<usize, LegacyError> {
        self.byte_len()
            .map_err(|_| LegacyError(format!("a count of items larger than the {} bytes left", self.input.len())))
    }

    fn str(&mut self) -> Result<&'de str, LegacyError> {
        let len = self.byte_len()?;
        std::str::from_utf8(self.take(len)?).map_err(|e| LegacyError(format!("a string that is not UTF-8: {e}")))
    }
}

fn unsupported<T>(what: &str) -> Result<T, LegacyError> {
    Err(LegacyError(format!("{what} is not part of any kuberaft 0.1.0 format")))
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = LegacyError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, LegacyError> {
        unsupported("a self-describing value")
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        match self.u8()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            other => Err(LegacyError(format!("{other} is not a bool"))),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        visitor.visit_i8(i8::from_le_bytes(self.array()?))
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        visitor.visit_i16(i16::from_le_bytes(self.array()?))
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        visitor.visit_i32(i32::from_le_bytes(self.array()?))
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        visitor.visit_i64(i64::from_le_bytes(self.array()?))
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        visitor.visit_u8(self.u8()?)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        visitor.visit_u16(u16::from_le_bytes(self.array()?))
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        visitor.visit_u32(self.u32()?)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        visitor.visit_u64(self.u64()?)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, _: V) -> Result<V::Value, LegacyError> {
        unsupported("a float")
    }
    fn deserialize_f64<V: Visitor<'de>>(self, _: V) -> Result<V::Value, LegacyError> {
        unsupported("a float")
    }
    fn deserialize_char<V: Visitor<'de>>(self, _: V) -> Result<V::Value, LegacyError> {
        unsupported("a char")
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        visitor.visit_borrowed_str(self.str()?)
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        self.deserialize_str(visitor)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        let len = self.byte_len()?;
        visitor.visit_borrowed_bytes(self.take(len)?)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        match self.u8()? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            other => Err(LegacyError(format!("{other} is not an Option tag"))),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        visitor.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, LegacyError> {
        visitor.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, LegacyError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        let len = self.item_count()?;
        visitor.visit_seq(Items { reader: self, left: len })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, LegacyError> {
        visitor.visit_seq(Items { reader: self, left: len })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, LegacyError> {
        self.deserialize_tuple(len, visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LegacyError> {
        let len = self.item_count()?;
        visitor.visit_map(Items { reader: self, left: len })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, LegacyError> {
        self.deserialize_tuple(fields.len(), visitor)
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, LegacyError> {
        visitor.visit_enum(self)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, LegacyError> {
        unsupported("a field name")
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, LegacyError> {
        unsupported("an ignored value")
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The items of a sequence, tuple, struct or map, `left` of them still to read.
struct Items<'a, 'de> {
    reader: &'a mut Reader<'de>,
    left: usize,
}

impl<'de> Items<'_, 'de> {
    /// The next item (a map's key), or `None` after the last.
    fn next<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, LegacyError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.reader).map(Some)
    }

    /// Never more than the bytes left: a hint sizes the collection's first allocation.
    fn hint(&self) -> Option<usize> {
        Some(self.left.min(self.reader.input.len()))
    }
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de> {
    type Error = LegacyError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, LegacyError> {
        self.next(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint()
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, 'de> {
    type Error = LegacyError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, LegacyError> {
        self.next(seed)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, LegacyError> {
        seed.deserialize(&mut *self.reader)
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint()
    }
}

impl<'de> de::EnumAccess<'de> for &mut Reader<'de> {
    type Error = LegacyError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), LegacyError> {
        let index = self.u32()?;
        let value = seed.deserialize(IntoDeserializer::<LegacyError>::into_deserializer(index))?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Reader<'de> {
    type Error = LegacyError;

    fn unit_variant(self) -> Result<(), LegacyError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, LegacyError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, LegacyError> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, LegacyError> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use bytes::Bytes;

    use super::*;
    use crate::raft::{ConfChange, ConfChangeKind, Entry, EntryPayload, HardState, Message, MessageBody};
    use crate::store::command::{Command, MemberInfo};

    /// Little-endian bytes of a u64, as bincode 1 writes lengths and u64s.
    fn le(n: u64) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn integers_bools_and_options() {
        assert_eq!(from_bytes_exact::<u8>(&[7]), Ok(7));
        assert_eq!(from_bytes_exact::<u32>(&[1, 2, 0, 0]), Ok(0x0201));
        assert_eq!(from_bytes_exact::<u64>(&le(u64::MAX)), Ok(u64::MAX));
        assert_eq!(from_bytes_exact::<i64>(&le(-5i64 as u64)), Ok(-5));
        assert_eq!(from_bytes_exact::<bool>(&[1]), Ok(true));
        assert_eq!(from_bytes_exact::<bool>(&[0]), Ok(false));
        assert!(from_bytes_exact::<bool>(&[2]).is_err());
        assert_eq!(from_bytes_exact::<Option<u64>>(&[0]), Ok(None));
        assert_eq!(from_bytes_exact::<Option<u64>>(&cat(&[&[1], &le(9)])), Ok(Some(9)));
        assert!(from_bytes_exact::<Option<u64>>(&[2]).is_err());
    }

    #[test]
    fn strings_bytes_sequences_and_maps() {
        assert_eq!(from_bytes_exact::<String>(&cat(&[&le(3), b"abc"])), Ok("abc".to_string()));
        assert!(from_bytes_exact::<String>(&cat(&[&le(2), &[0xff, 0xfe]])).is_err(), "not UTF-8");
        assert_eq!(from_bytes_exact::<Bytes>(&cat(&[&le(2), &[0, 0xff]])), Ok(Bytes::from_static(&[0, 0xff])));
        assert_eq!(from_bytes_exact::<Vec<u64>>(&cat(&[&le(2), &le(5), &le(6)])), Ok(vec![5, 6]));
        let set: BTreeSet<u64> = [3, 4].into();
        assert_eq!(from_bytes_exact::<BTreeSet<u64>>(&cat(&[&le(2), &le(3), &le(4)])), Ok(set));
        let map: BTreeMap<String, u64> = [("k".to_string(), 1)].into();
        assert_eq!(from_bytes_exact::<BTreeMap<String, u64>>(&cat(&[&le(1), &le(1), b"k", &le(1)])), Ok(map));
        assert_eq!(from_bytes_exact::<(u8, u32)>(&[1, 2, 0, 0, 0]), Ok((1, 2)));
    }

    #[test]
    fn structs_and_enums_as_kuberaft_0_1_0_wrote_them() {
        // HardState { term: 2, vote: Some(7), commit: 5 }.
        let hs = cat(&[&le(2), &[1], &le(7), &le(5)]);
        assert_eq!(from_bytes_exact::<HardState>(&hs), Ok(HardState { term: 2, vote: Some(7), commit: 5 }));
        // Command::Delete (variant 1) { key: "beta", prev_revision: None }.
        let delete = cat(&[&[1, 0, 0, 0], &le(4), b"beta", &[0]]);
        assert_eq!(
            from_bytes_exact::<Command>(&delete),
            Ok(Command::Delete { key: "beta".into(), prev_revision: None })
        );
        // Command::Put (variant 0) { key, value, prev_revision: Some(0) }.
        let put = cat(&[&[0, 0, 0, 0], &le(1), b"k", &le(2), b"v!", &[1], &le(0)]);
        assert_eq!(
            from_bytes_exact::<Command>(&put),
            Ok(Command::Put { key: "k".into(), value: Bytes::from_static(b"v!"), prev_revision: Some(0) })
        );
        assert!(from_bytes_exact::<Command>(&[9, 0, 0, 0]).is_err(), "no variant 9");
        // An entry carrying a membership change: EntryPayload::ConfChange is variant 2,
        // ConfChangeKind::AddLearner variant 0.
        let info = MemberInfo { id: 0x0102, name: "n".into(), peer_url: "p".into(), client_url: "c".into() };
        let context = cat(&[&le(0x0102), &le(1), b"n", &le(1), b"p", &le(1), b"c"]);
        assert_eq!(from_bytes_exact::<MemberInfo>(&context), Ok(info));
        let entry =
            cat(&[&le(10), &le(2), &[2, 0, 0, 0], &[0, 0, 0, 0], &le(0x0102), &le(context.len() as u64), &context]);
        let expected = Entry {
            index: 10,
            term: 2,
            payload: EntryPayload::ConfChange(ConfChange {
                kind: ConfChangeKind::AddLearner,
                node_id: 0x0102,
                context: Bytes::from(context.clone()),
            }),
        };
        assert_eq!(from_bytes_exact::<Entry>(&entry), Ok(expected));
        // A unit variant: EntryPayload::Noop (variant 0).
        let noop = cat(&[&le(1), &le(1), &[0, 0, 0, 0]]);
        assert_eq!(from_bytes_exact::<Entry>(&noop).map(|e| e.payload), Ok(EntryPayload::Noop));
        // A batch of one heartbeat (MessageBody::Heartbeat is variant 2).
        let batch = cat(&[&le(1), &le(1), &le(2), &le(3), &[2, 0, 0, 0], &le(4), &le(5)]);
        let heartbeat = Message { from: 1, to: 2, term: 3, body: MessageBody::Heartbeat { commit: 4, read_seq: 5 } };
        assert_eq!(from_bytes_exact::<Vec<Message>>(&batch), Ok(vec![heartbeat]));
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error() {
        let delete = cat(&[&[1, 0, 0, 0], &le(4), b"beta", &[0]]);
        for cut in 0..delete.len() {
            assert!(from_bytes::<Command>(&delete[..cut]).is_err(), "cut at {cut}");
        }
        assert!(from_bytes_exact::<u64>(&cat(&[&le(1), &[0]])).is_err(), "trailing byte");
        assert_eq!(from_bytes::<u64>(&cat(&[&le(1), &[0]])), Ok(1), "ignored where allowed");
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..40)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            // Never a panic; whatever decodes is fine.
            let _ = from_bytes::<Vec<Message>>(&bytes);
            let _ = from_bytes::<Entry>(&bytes);
            let _ = from_bytes::<Command>(&bytes);
        }
    }

    #[test]
    fn a_huge_length_is_refused_before_any_allocation() {
        // A sequence, a map, a string and a byte string that each claim about 2^62 items or bytes.
        let huge = le(1 << 62);
        assert!(from_bytes::<Vec<u64>>(&huge).unwrap_err().to_string().contains("count of items"));
        assert!(from_bytes::<BTreeMap<u64, u64>>(&huge).is_err());
        assert!(from_bytes::<String>(&huge).unwrap_err().to_string().contains("length of"));
        assert!(from_bytes::<Bytes>(&huge).is_err());
        // One item too many for the bytes left is refused too.
        assert!(from_bytes::<Vec<u8>>(&cat(&[&le(3), &[1, 2]])).is_err());
        assert_eq!(from_bytes::<Vec<u8>>(&cat(&[&le(2), &[1, 2]])), Ok(vec![1, 2]));
    }
}
