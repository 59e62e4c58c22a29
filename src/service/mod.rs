//! The daemon: wiring and supervision (`daemon`), the periodic tasks (`monitor_task`,
//! `catalog_watch`, `scheduler` with `retention_task`, `verify_task`, `drill_task`; `offsite_task`, the uploaders), the one
//! place where domain events become status-board updates and metrics (`telemetry`, `status`,
//! `metrics`), the HTTP endpoint (`http`), systemd's notify protocol and watchdog (`systemd`),
//! and the operator's hook commands (`hooks`).

pub mod catalog_watch;
pub mod daemon;
pub mod drill_task;
pub mod hooks;
pub mod http;
pub mod metrics;
pub mod monitor_task;
pub mod offsite_task;
pub mod retention_task;
pub mod scheduler;
pub mod status;
pub mod systemd;
pub mod telemetry;
pub mod verify_task;
