//! Parsers for the config's value types: durations, sizes, compression, names. Each error says
//! what was expected; the caller prefixes the key.

use crate::catalog::{Compression, DEFAULT_ZSTD_LEVEL};
use std::time::Duration;

pub fn describe_yaml_error(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(l) if !msg.contains("line") => format!("{msg} (line {}, column {})", l.line(), l.column()),
        _ => msg,
    }
}

/// Server names become directory names and metric labels: keep them plain.
pub fn validate_server_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "server name {name:?}: expected 1 to 63 characters from A-Z, a-z, 0-9, _ and - (not starting with -)"
        ))
    }
}

pub fn parse_duration(text: Option<&str>, default: Duration) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t.trim()).map_err(|_| format!("{t:?}: expected a duration such as 10s, 500ms or 1m")),
    }
}

/// A YAML number or string as text (sizes and thresholds may be written either way).
pub fn yaml_scalar(v: &serde_yaml::Value) -> Result<String, String> {
    match v {
        serde_yaml::Value::Number(n) => Ok(n.to_string()),
        serde_yaml::Value::String(s) => Ok(s.clone()),
        other => Err(format!(
            "{}: expected a size such as 256MiB, 1GiB, 500MB or a number of bytes",
            serde_yaml::to_string(other).unwrap_or_default().trim()
        )),
    }
}

/// `0`, `512MB`, `1GiB`, `256MiB`, or a plain number of bytes, written as a YAML number or string.
pub fn parse_size(v: &serde_yaml::Value) -> Result<u64, String> {
    yaml_scalar(v).and_then(|t| crate::util::units::parse_size(&t))
}

pub fn parse_compression(v: Option<&serde_yaml::Value>) -> Result<Compression, String> {
    use serde_yaml::Value;
    let expected = "expected none, zstd, or zstd:LEVEL with LEVEL from 1 to 19";
    match v {
        None => Ok(Compression::Zstd(DEFAULT_ZSTD_LEVEL)),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd(DEFAULT_ZSTD_LEVEL)),
            other => match other.strip_prefix("zstd:").and_then(|l| l.parse::<i32>().ok()) {
                Some(l) if (1..=19).contains(&l) => Ok(Compression::Zstd(l)),
                _ => Err(format!("{other:?}: {expected}")),
            },
        },
        Some(Value::Bool(false)) => Ok(Compression::None),
        Some(other) => Err(format!("{}: {expected}", serde_yaml::to_string(other).unwrap_or_default().trim())),
    }
}
