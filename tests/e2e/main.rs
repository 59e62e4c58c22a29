//! End-to-end tests against real PostgreSQL clusters and the real `pgark` binary.

mod auth;
mod backup;
mod cli;
mod common;
mod durability;
mod malformed;
mod monitoring;
mod prometheus;
mod restore;
mod streaming;
mod timelines;
