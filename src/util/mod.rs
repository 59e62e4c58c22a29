//! Leaf helpers with no knowledge of PostgreSQL or the catalog: time, units, hex, small I/O
//! adapters, OS facts, and the progress-reporting trait. Imports nothing from the crate.

pub mod cancel_fd;
pub mod crc32c_combine;
pub mod hex;
pub mod io;
pub mod memory;
pub mod os;
pub mod progress;
pub mod thread_priority;
pub mod time;
pub mod units;
