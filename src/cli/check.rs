//! `pgark check`: runs `check::run` and prints one line per check (or `--json`); exit 0 when
//! nothing failed (warnings pass), 9 (`exit::DAMAGED`) when something did, 2 for bad usage or
//! a config that cannot be loaded.

use crate::check::{self, CheckResult};
use crate::cli::{exit, known_server, load_config};
use std::time::Duration;

/// `pgark check --config F [SERVER] [--json] [--timeout D]`.
pub async fn check(path: &std::path::Path, server: Option<&str>, json: bool, timeout: Duration) -> i32 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(s) = server {
        if let Err(code) = known_server(&config, s) {
            return code;
        }
    }
    let results = check::run(&config, server, timeout).await;
    if json {
        match serde_json::to_string_pretty(&results) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        }
    } else {
        print!("{}", render(&results));
    }
    if check::any_failed(&results) {
        exit::DAMAGED
    } else {
        exit::OK
    }
}

/// The human report: aligned columns, one line per check, then a summary line.
pub fn render(results: &[CheckResult]) -> String {
    let sw = results.iter().map(|r| r.server.len()).max().unwrap_or(0).max("SERVER".len());
    let cw = results.iter().map(|r| r.check.len()).max().unwrap_or(0).max("CHECK".len());
    let mut out = format!("{:<sw$}  {:<cw$}  {:<7}  DETAIL\n", "SERVER", "CHECK", "LEVEL");
    for r in results {
        out.push_str(&format!(
            "{:<sw$}  {:<cw$}  {:<7}  {}\n",
            r.server,
            r.check,
            r.level.label(),
            r.detail
        ));
    }
    let count = |l: check::Level| results.iter().filter(|r| r.level == l).count();
    out.push_str(&format!(
        "{} checks: {} ok, {} warning, {} failed\n",
        results.len(),
        count(check::Level::Ok),
        count(check::Level::Warning),
        count(check::Level::Failed)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Level;

    #[test]
    fn lines_are_aligned() {
        let r = |server: &str, check: &str, level| CheckResult {
            server: server.into(),
            check: check.into(),
            ok: level != Level::Failed,
            level,
            detail: "d".into(),
        };
        let text = render(&[r("main", "slot", Level::Ok), r("replica", "catalog_space", Level::Failed)]);
        let lines: Vec<&str> = text.lines().collect();
        let col = |l: &str| l.find(" d").or_else(|| l.find(" DETAIL")).unwrap();
        assert_eq!(col(lines[0]), col(lines[1]));
        assert_eq!(col(lines[1]), col(lines[2]));
        assert!(lines[2].contains("FAILED"));
        assert!(lines[3].contains("1 ok, 0 warning, 1 failed"), "{text}");
    }
}
