//! `pgark demo`, the README's first command: it must run on its own and end by proving a
//! point-in-time restore (the restored copy holds exactly the rows up to the restore point).

use std::process::Command;

#[test]
fn the_demo_ends_with_a_point_in_time_restore_that_holds_exactly_the_rows_before_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgark"))
        .args(["demo", "--duration", "8", "--metrics-listen", "127.0.0.1:0"])
        .output()
        .expect("run pgark demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgark demo failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("== base backup "), "no backup was taken:\n{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("the restored copy holds exactly the"))
        .unwrap_or_else(|| panic!("no restore result:\n{stdout}\n{stderr}"));
    assert!(line.contains("none of the 5000 after it"), "{line}");
    // Its scratch directory is gone.
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("== removing "))
        .and_then(|l| l.split(' ').next())
        .expect("the demo names what it removes");
    assert!(!std::path::Path::new(dir).exists(), "{dir} is left behind");
}
