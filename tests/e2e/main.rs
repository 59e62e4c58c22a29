//! End-to-end tests against real PostgreSQL clusters and the real `pgark` binary. Shared helpers
//! live in `support` (see its module doc); test modules import from there only.

mod support;

mod audit;
mod auth;
mod backup;
mod check;
mod cli;
mod crash;
mod demo;
mod disk;
mod drill;
mod durability;
mod harness;
mod hooks;
mod incremental;
mod malformed;
mod monitoring;
mod network;
mod objectstore;
mod prometheus;
mod repository;
mod restore;
mod retention;
mod streaming;
mod systemd;
mod timelines;
mod verify;
