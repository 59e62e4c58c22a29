//! Off-site copies: the uploader that copies each server's WAL and backups from the local
//! catalog into every configured repository (object storage), and the lag it reports. The local
//! catalog stays the hot tier: a synchronous acknowledgement still means "fsynced locally", and
//! a repository trails it by the seconds the uploader needs.

pub mod copy;
pub mod lag;
pub mod upload;

pub use upload::{FlushedFn, Progress, ServerProgress, Settings, Source, Uploader, DEFAULT_WORKERS};
