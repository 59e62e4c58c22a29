//! The harness itself (`support`): the server-log check and the port allocator do what the
//! other tests rely on.

use crate::support::*;
use std::net::TcpListener;

/// An `ERROR:` line in a cluster's server log fails the check, and a line declared with
/// `expect_log` does not.
#[test]
fn server_log_errors_fail_the_check_unless_expected() {
    let c = Cluster::init(&pg(), &[]).unwrap();
    c.start().unwrap();
    let e = c.psql("SELECT 1/0").unwrap_err();
    assert!(e.contains("division by zero"), "{e}");
    let unexpected = c.unexpected_log_errors();
    assert!(
        unexpected.iter().any(|l| l.contains("ERROR:  division by zero")),
        "the ERROR line was not found: {unexpected:?}"
    );
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.check_log()));
    assert!(caught.is_err(), "check_log accepted an undeclared ERROR line");
    // Expected: this test provokes the division by zero above.
    c.expect_log("division by zero");
    assert_eq!(c.unexpected_log_errors(), Vec::<String>::new());
    c.check_log();
}

/// Reserved ports are below the ephemeral range, never handed out twice while held, and a port
/// something else listens on is skipped.
#[test]
fn reserved_ports_are_unique_and_free() {
    let ephemeral: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let held: Vec<ports::Port> = (0..50).map(|_| ports::reserve()).collect();
    let mut numbers: Vec<u16> = held.iter().map(ports::Port::get).collect();
    assert!(numbers.iter().all(|&p| p < ephemeral), "{numbers:?} (ephemeral from {ephemeral})");
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), held.len(), "a port was handed out twice");
    for p in &held {
        // Free to bind: nothing outside the scheme holds it.
        TcpListener::bind(("127.0.0.1", p.get())).unwrap();
    }
    // A held port cannot be claimed again (not even by this process); a released one can,
    // unless something else listens on it.
    let port = held[0].get();
    assert!(ports::claim(port).is_none(), "{port} claimed twice");
    drop(held);
    let squatter = TcpListener::bind(("127.0.0.1", port)).unwrap();
    assert!(ports::claim(port).is_none(), "{port} is in use but was claimed");
    drop(squatter);
    assert!(ports::claim(port).is_some(), "{port} is free again");
}
