//! Filesystem primitives shared by the catalog and by restore's writes into PostgreSQL data
//! directories: the crash-safety sequences (`durable`), direct I/O (`direct`), page-cache writes
//! that go to disk in pieces (`write_behind`) and unnamed scratch files (`scratch`). Imports
//! only `util`.

pub mod direct;
pub mod durable;
pub mod scratch;
pub mod write_behind;
