//! Percent-encoding of keys and query values. Every byte outside the URL "unreserved" set
//! (RFC 3986 §2.3: ALPHA, DIGIT, '-', '.', '_', '~') is encoded, '/' included, so a key is always
//! exactly one path segment and the server decodes it back byte for byte.

/// `a/b c` -> `a%2Fb%20c`.
pub fn encode_component(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut encoded = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push('%');
            encoded.push(char::from(HEX[usize::from(byte >> 4)]));
            encoded.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::encode_component;

    #[test]
    fn slash_and_space_are_encoded_so_a_key_stays_one_segment() {
        assert_eq!(encode_component("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn unreserved_characters_pass_through() {
        assert_eq!(encode_component("AZaz09-._~"), "AZaz09-._~");
    }

    #[test]
    fn multibyte_utf8_is_encoded_byte_by_byte() {
        assert_eq!(encode_component("é?&=%+"), "%C3%A9%3F%26%3D%25%2B");
    }
}
