//! The daemon: wiring and supervision (`daemon`), the periodic tasks (`monitor_task`,
//! `catalog_watch`, `scheduler`), the one place where domain events become status-board updates
//! and metrics (`telemetry`, `status`, `metrics`), and the HTTP endpoint (`http`).

pub mod catalog_watch;
pub mod daemon;
pub mod http;
pub mod metrics;
pub mod monitor_task;
pub mod scheduler;
pub mod status;
pub mod telemetry;
pub mod verify_task;
