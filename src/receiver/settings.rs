//! What one receiver needs to know about its server (built by `config` from the YAML).

use crate::catalog::Compression;
use crate::client::conninfo::ConnInfo;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    /// The server's name in the config (its directory in the catalog).
    pub name: String,
    pub conninfo: ConnInfo,
    pub slot: String,
    /// Create the slot when it does not exist.
    pub create_slot: bool,
    /// Acknowledge a flush only after fsync, as a synchronous standby (see `stream`).
    pub synchronous: bool,
    pub status_interval: Duration,
    /// Silence of the server after which the connection is treated as dead.
    pub receiver_timeout: Duration,
    /// How completed segments are stored.
    pub compression: Compression,
}
