//! Standard base64 (RFC 4648 §4, with padding), the encoding of values in list answers
//! (`KvItem::value`). Small enough to own rather than add a dependency for.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn encode_base64(bytes: &[u8]) -> String {
    let mut encoded = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b0 = chunk[0];
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let triple = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        for position in 0..4 {
            // A chunk of n bytes fills n + 1 characters; the rest are padding.
            if position <= chunk.len() {
                let sextet = (triple >> (18 - 6 * position)) & 0x3f;
                encoded.push(char::from(ALPHABET[sextet as usize]));
            } else {
                encoded.push('=');
            }
        }
    }
    encoded
}

/// `None` unless `text` is padded standard base64.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let input = text.as_bytes();
    if !input.len().is_multiple_of(4) {
        return None;
    }
    let mut decoded = Vec::with_capacity(input.len() / 4 * 3);
    let chunk_count = input.len() / 4;
    for (chunk_index, chunk) in input.chunks(4).enumerate() {
        let padding = chunk.iter().rev().take_while(|byte| **byte == b'=').count();
        // Padding only at the very end, at most two characters.
        if padding > 2 || (padding > 0 && chunk_index + 1 != chunk_count) {
            return None;
        }
        let mut triple: u32 = 0;
        for &byte in &chunk[..4 - padding] {
            triple = (triple << 6) | sextet(byte)?;
        }
        triple <<= 6 * padding as u32;
        let [_, b0, b1, b2] = triple.to_be_bytes();
        decoded.push(b0);
        if padding < 2 {
            decoded.push(b1);
        }
        if padding < 1 {
            decoded.push(b2);
        }
    }
    Some(decoded)
}

fn sextet(byte: u8) -> Option<u32> {
    let value = match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(value))
}

#[cfg(test)]
mod tests {
    use super::{decode_base64, encode_base64};

    #[test]
    fn rfc4648_test_vectors_round_trip() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(encode_base64(plain.as_bytes()), encoded);
            assert_eq!(decode_base64(encoded).as_deref(), Some(plain.as_bytes()));
        }
    }

    #[test]
    fn every_byte_value_survives() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_base64(&encode_base64(&bytes)), Some(bytes));
    }

    #[test]
    fn malformed_input_is_rejected() {
        for bad in ["Zg", "Zg=", "Z===", "Zg==Zg==", "Zm9*", "Zm=v"] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
    }
}
