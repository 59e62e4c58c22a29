//! Whether a server waits for pgark's acknowledgements: as configured (`synchronous`), and as the
//! server itself says (`synchronous_standby_names` and `pg_stat_replication.sync_state`, read by
//! the monitor every `monitor_interval`).
//!
//! Why both:
//! - A server that names pgark in `synchronous_standby_names` waits at every commit for pgark's
//!   flush position. With `synchronous: false`, pgark would fsync only at segment ends and on the
//!   status interval (10 s by default): every commit of that server would wait for seconds. Once
//!   the server is seen to name pgark, the receiver fsyncs and reports at every pause, as with
//!   `synchronous: true` (and the daemon says so in its log: the config should say it too).
//! - Synchronous first (`pacing`) slows asynchronous WAL down to keep the acknowledgement latency
//!   of the servers whose commits wait for pgark. A server configured `synchronous: true` that
//!   does not name pgark in `synchronous_standby_names` has no commit waiting: it is paced like
//!   the others instead of holding them back. A named one is never paced, even while
//!   `pg_stat_replication` says `potential` or `async`: a standby catching up after a reconnect
//!   is not `sync` until it has caught up (and a primary whose only synchronous standby it is
//!   waits meanwhile), and without `pg_read_all_stats` the server hides `sync_state` altogether.
//!
//! Until the monitor has answered (or when it cannot), the configuration decides. A failed
//! monitoring round keeps what was last seen: a server that waited for pgark is assumed to still
//! wait.

use std::sync::atomic::{AtomicU8, Ordering};

/// What the server says, as last seen by the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Seen {
    Unknown = 0,
    /// Not in `synchronous_standby_names`: no commit waits for pgark.
    NotNamed = 1,
    /// Named, but not seen as the synchronous standby now (`potential`, catching up, not
    /// connected, or `sync_state` hidden from a role without `pg_read_all_stats`): a commit
    /// may wait for pgark now or at any moment.
    Named = 2,
    /// `sync` or `quorum`: commits wait for pgark now.
    Synchronous = 3,
}

impl Seen {
    /// From the monitor's facts.
    pub fn from_server(named_in_synchronous_standby_names: bool, sync_state: Option<&str>) -> Seen {
        match sync_state {
            Some("sync" | "quorum") => Seen::Synchronous,
            _ if named_in_synchronous_standby_names => Seen::Named,
            _ => Seen::NotNamed,
        }
    }

    fn from_u8(v: u8) -> Seen {
        match v {
            1 => Seen::NotNamed,
            2 => Seen::Named,
            3 => Seen::Synchronous,
            _ => Seen::Unknown,
        }
    }
}

/// One server's role, shared by its receiver (which reads it at every message) and its monitor
/// (which updates it).
#[derive(Debug)]
pub struct SyncRole {
    configured: bool,
    seen: AtomicU8,
}

impl SyncRole {
    pub const fn new(configured: bool) -> SyncRole {
        SyncRole {
            configured,
            seen: AtomicU8::new(Seen::Unknown as u8),
        }
    }

    pub fn configured(&self) -> bool {
        self.configured
    }

    pub fn seen(&self) -> Seen {
        Seen::from_u8(self.seen.load(Ordering::Relaxed))
    }

    /// Records what the server says; returns the previous value when it changed.
    pub fn observe(&self, seen: Seen) -> Option<Seen> {
        let before = Seen::from_u8(self.seen.swap(seen as u8, Ordering::Relaxed));
        (before != seen).then_some(before)
    }

    /// Fsync at every pause and report at once: configured so, or the server may wait for pgark.
    pub fn acknowledges_each_commit(&self) -> bool {
        self.configured || self.seen() >= Seen::Named
    }

    /// A commit may wait for pgark: its acknowledgement latency is what pacing holds, and its
    /// WAL is never paced.
    pub fn on_commit_path(&self) -> bool {
        match self.seen() {
            Seen::Unknown => self.configured,
            Seen::Named | Seen::Synchronous => true,
            Seen::NotNamed => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_decides_once_it_has_answered() {
        let r = SyncRole::new(false);
        assert!(!r.acknowledges_each_commit() && !r.on_commit_path(), "the configuration until then");
        assert_eq!(r.observe(Seen::from_server(true, Some("sync"))), Some(Seen::Unknown));
        assert!(
            r.acknowledges_each_commit() && r.on_commit_path(),
            "named and sync: fsync per commit"
        );
        assert_eq!(r.observe(Seen::from_server(true, Some("sync"))), None, "no change");
        r.observe(Seen::from_server(true, Some("potential")));
        assert!(r.acknowledges_each_commit(), "potential: a commit may wait at any moment");
        assert!(r.on_commit_path(), "potential or catching up: never paced");
        r.observe(Seen::from_server(true, None));
        assert!(r.on_commit_path(), "sync_state hidden (no pg_read_all_stats): named decides");
        r.observe(Seen::from_server(false, Some("async")));
        assert!(!r.acknowledges_each_commit());

        let r = SyncRole::new(true);
        assert!(r.acknowledges_each_commit() && r.on_commit_path());
        r.observe(Seen::from_server(true, Some("async")));
        assert!(r.on_commit_path(), "named, catching up after a reconnect: not paced");
        r.observe(Seen::from_server(false, Some("async")));
        assert!(r.acknowledges_each_commit(), "configured synchronous stays durable at every pause");
        assert!(!r.on_commit_path(), "not named: does not hold the others back");
        r.observe(Seen::from_server(true, Some("quorum")));
        assert!(r.on_commit_path());
        assert_eq!(Seen::from_server(true, None), Seen::Named, "not connected: named still counts");
    }
}
