//! pgark: a PostgreSQL backup service.
//!
//! The heart is a physical replication client of our own (`protocol` for the wire format,
//! `client` for sockets, TLS and authentication) feeding a WAL store (`catalog`) whose flush
//! position only fsync advances; `receiver` supervises one stream per server and `daemon` wires
//! them with the HTTP endpoint (`http`, `metrics`, `status`).

pub mod backup_commands;
pub mod basebackup;
pub mod catalog;
pub mod catalog_watch;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod direct_io;
pub mod http;
pub mod metrics;
pub mod monitor;
pub mod pg;
pub mod pgcluster;
pub mod pressure;
pub mod protocol;
pub mod receiver;
pub mod restore;
pub mod restore_commands;
pub mod status;
