//! Byte sizes: human-readable rendering and parsing of `256MiB`-style sizes.

/// `1.50 GiB`-style rendering.
pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

const SIZE_EXPECTED: &str = "expected a size such as 256MiB, 1GiB, 500MB or a number of bytes";

/// `0`, `512MB`, `1GiB`, `256MiB`, `16k`, or a plain number of bytes. The error names the text
/// and what was expected.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{text:?}: {SIZE_EXPECTED}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1024,
        "mb" => 1_000_000,
        "mib" | "m" => 1024 * 1024,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1024 * 1024 * 1024,
        "tb" => 1_000_000_000_000,
        "tib" | "t" => 1024u64.pow(4),
        _ => return Err(format!("{text:?}: {SIZE_EXPECTED}")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{text:?}: too large"))
}

/// What `parse_size` expects, for callers that reject a value before parsing it.
pub fn size_expected() -> &'static str {
    SIZE_EXPECTED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size(" 500MB "), Ok(500_000_000));
        assert!(parse_size("12 parsecs").unwrap_err().contains("expected a size"));
        assert!(parse_size("99999999999TiB").unwrap_err().contains("too large"));
    }
}
