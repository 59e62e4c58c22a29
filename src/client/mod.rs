//! Sockets and sessions over `protocol`: connection strings, TLS, authentication, simple queries
//! and the replication commands a physical WAL receiver issues.

pub mod connection;
pub mod conninfo;
pub mod replication;
pub mod tls;
pub mod transport;

pub use connection::{ClientError, Connection};
pub use conninfo::{ConnInfo, SslMode};
