//! Filesystem primitives shared by the catalog and by restore's writes into PostgreSQL data
//! directories: the crash-safety sequences (`durable`) and direct I/O (`direct`). Imports only
//! `util`.

pub mod direct;
pub mod durable;
