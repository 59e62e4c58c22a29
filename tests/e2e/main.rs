//! End-to-end tests against real PostgreSQL clusters and the real `pgark` binary.

mod audit;
mod auth;
mod backup;
mod cli;
mod common;
mod crash;
mod disk;
mod durability;
mod faultproxy;
mod faults;
mod invariants;
mod malformed;
mod monitoring;
mod network;
mod pgcluster;
mod prometheus;
mod restore;
mod streaming;
mod timelines;
