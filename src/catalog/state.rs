//! The per-server state file `<catalog>/<server>/server.state`: who this catalog belongs to.
//!
//! Layout: 8-byte magic `PGARKST\0`, u32 format version, u32 CRC-32C of the payload, u32 payload
//! length (all little-endian), then a JSON payload. It is replaced atomically. The WAL files on
//! disk are the truth about positions; the LSN here is a hint for status when the daemon is down.

use super::store::ObjectStore;
use crate::pg::{Lsn, TimelineId};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"PGARKST\0";
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerState {
    /// The server's `system_identifier`; WAL from any other cluster is refused.
    pub system_identifier: u64,
    pub wal_segment_size: u64,
    pub server_version_num: u32,
    pub timeline: TimelineId,
    pub flushed_lsn: Lsn,
    /// Unix seconds of the last update.
    pub updated_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{key}: {source}")]
    Io { key: String, source: std::io::Error },
    #[error("{key} is damaged: {what}; move it aside to let pgark recreate it from the server (the WAL files stay valid)")]
    Corrupt { key: String, what: String },
}

pub fn key(server: &str) -> String {
    format!("{server}/server.state")
}

pub fn encode(state: &ServerState) -> Vec<u8> {
    let payload = serde_json::to_vec(state).expect("ServerState always serializes");
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

pub fn decode(key: &str, bytes: &[u8]) -> Result<ServerState, StateError> {
    let corrupt = |what: String| StateError::Corrupt {
        key: key.to_string(),
        what,
    };
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(corrupt("it does not start with the pgark state header".into()));
    }
    let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let (version, crc, len) = (word(8), word(12), word(16) as usize);
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {version}, this pgark reads version {FORMAT_VERSION}"
        )));
    }
    let payload = bytes
        .get(HEADER..HEADER + len)
        .ok_or_else(|| corrupt(format!("payload is shorter than the {len} bytes announced")))?;
    if crc32c::crc32c(payload) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    serde_json::from_slice(payload).map_err(|e| corrupt(format!("payload: {e}")))
}

pub fn load(store: &dyn ObjectStore, server: &str) -> Result<Option<ServerState>, StateError> {
    let k = key(server);
    match store.get(&k).map_err(|e| StateError::Io { key: k.clone(), source: e })? {
        None => Ok(None),
        Some(b) => decode(&k, &b).map(Some),
    }
}

pub fn save(store: &dyn ObjectStore, server: &str, state: &ServerState) -> Result<(), StateError> {
    let k = key(server);
    store.put(&k, &encode(state)).map_err(|e| StateError::Io { key: k, source: e })
}

/// The server is not the one this catalog belongs to.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("refusing server: its system identifier is {server} but catalog {catalog_dir} holds WAL of system {catalog}; catalogs are never mixed (use a new server name or catalog for a new cluster)")]
    SystemIdMismatch { server: u64, catalog: u64, catalog_dir: String },
    #[error("refusing server: its wal_segment_size is {server} bytes but the catalog holds {catalog}-byte segments")]
    SegmentSizeMismatch { server: u64, catalog: u64 },
    #[error(transparent)]
    State(#[from] StateError),
}

/// Checks a connected server against the catalog's record of it, recording it on first contact
/// (catalogs are never mixed). Returns the state as saved, with the version updated.
pub fn verify_or_record(
    store: &dyn ObjectStore,
    server: &str,
    catalog_dir: &str,
    system_identifier: u64,
    wal_segment_size: u64,
    server_version_num: u32,
    timeline: TimelineId,
) -> Result<ServerState, IdentityError> {
    let known = load(store, server)?;
    if let Some(st) = &known {
        if st.system_identifier != system_identifier {
            return Err(IdentityError::SystemIdMismatch {
                server: system_identifier,
                catalog: st.system_identifier,
                catalog_dir: catalog_dir.to_string(),
            });
        }
        if st.wal_segment_size != wal_segment_size {
            return Err(IdentityError::SegmentSizeMismatch {
                server: wal_segment_size,
                catalog: st.wal_segment_size,
            });
        }
    }
    let mut st = known.unwrap_or(ServerState {
        system_identifier,
        wal_segment_size,
        server_version_num,
        timeline,
        flushed_lsn: Lsn::INVALID,
        updated_at: crate::util::time::unix_now(),
    });
    st.server_version_num = server_version_num;
    save(store, server, &st)?;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ServerState {
        ServerState {
            system_identifier: 7711452828354326745,
            wal_segment_size: 16 << 20,
            server_version_num: 150018,
            timeline: TimelineId(2),
            flushed_lsn: Lsn(0x3000028),
            updated_at: 1,
        }
    }

    #[test]
    fn round_trip() {
        assert_eq!(decode("k", &encode(&sample())).unwrap(), sample());
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let good = encode(&sample());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode("k", &bad).is_err(), "flip at byte {i} went unnoticed");
        }
        assert!(decode("k", &good[..good.len() - 1]).is_err());
        let msg = decode("main/server.state", b"garbage-garbage-garbage").unwrap_err().to_string();
        assert!(msg.contains("main/server.state"), "{msg}");
    }
}
