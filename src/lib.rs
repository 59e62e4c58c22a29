//! pgark: a PostgreSQL backup service.
//!
//! The crate is a stack of layers; a module imports only from layers below it (checked by
//! `tests/architecture.rs`, see `docs/architecture.md` for the module map):
//!
//! ```text
//! L8  cli        one file per command; the one place exit codes live
//! L7  service    daemon, scheduler, uploaders, HTTP, metrics, status board, telemetry
//! L6  check · drill  operations that combine domains (diagnosis, restore drills)
//! L5  config     YAML -> Config (and opening repositories), from the domain modules' settings types
//! L4  receiver · backup · restore · monitor · retention · verify · offsite   (siblings; they never import each other)
//! L3  catalog    the only code that builds catalog paths; storage behind `ObjectStore`
//! L2  client     sockets, TLS, authentication, replication commands
//! L1  protocol   the wire format, sans I/O          pg   PostgreSQL value types
//! L0  fsio       crash-safe and direct file I/O      util time, units, hex, progress
//! ```
//!
//! The heart is the physical replication client (`protocol` + `client`) feeding the WAL store
//! (`catalog::wal_store`), whose flush position only fsync advances.

pub mod backup;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod drill;
pub mod fsio;
pub mod monitor;
pub mod offsite;
pub mod pg;
pub mod protocol;
pub mod receiver;
pub mod restore;
pub mod retention;
pub mod service;
pub mod util;
pub mod verify;
