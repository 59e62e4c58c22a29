//! The disk-fault shim (`faultfs.c`, LD_PRELOAD) as the tests use it: built once per test run
//! with the system C compiler, then put in front of the real pgark binary with
//! `PGARK_FAULTS` rules; its log tells which faults fired and whether a descriptor whose fsync
//! failed was fsynced again.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The shim library, compiled on first use.
pub fn shim() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pgark-faultfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("libpgarkfault.so");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/faultfs.c");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let st = std::process::Command::new(&cc)
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl")
            .status()
            .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?} to build the fault shim: {e}"));
        assert!(st.success(), "building the fault shim failed");
        out
    })
}

/// Environment for a pgark process with `rules` injected, logging to `log`.
pub fn fault_env(rules: &str, log: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), shim().display().to_string()),
        ("PGARK_FAULTS".into(), rules.into()),
        ("PGARK_FAULT_LOG".into(), log.display().to_string()),
    ]
}

/// What the shim's log says.
pub struct FaultLog {
    pub text: String,
}

impl FaultLog {
    pub fn read(path: &Path) -> FaultLog {
        FaultLog {
            text: std::fs::read_to_string(path).unwrap_or_default(),
        }
    }

    /// Faults injected.
    pub fn injected(&self) -> usize {
        self.text.lines().filter(|l| l.starts_with("INJECT ")).count()
    }

    /// Descriptors fsynced again after their fsync failed (must be none).
    pub fn refsyncs(&self) -> Vec<&str> {
        self.text.lines().filter(|l| l.starts_with("REFSYNC ")).collect()
    }

    /// Paths fsynced (with `PGARK_FAULT_TRACE=fsync`).
    pub fn fsynced(&self) -> Vec<&str> {
        self.text.lines().filter_map(|l| l.strip_prefix("FSYNC ")).map(str::trim).collect()
    }
}
