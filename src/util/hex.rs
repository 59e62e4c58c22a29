//! Lower-case hexadecimal encoding of digests and checksums.

/// `[0xab, 0x01]` → `"ab01"`.
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `"ab01"` → `[0xab, 0x01]`; `None` for an odd length or a non-hex digit.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        assert_eq!(super::to_hex(&[0xab, 0x01]), "ab01");
        assert_eq!(super::from_hex("ab01"), Some(vec![0xab, 0x01]));
        assert_eq!(super::from_hex("abc"), None);
        assert_eq!(super::from_hex("zz"), None);
    }
}
