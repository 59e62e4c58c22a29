//! The `hooks` section: operator commands run at backup, drill and verify events, at the top
//! level and overridden key by key under `servers.<name>.hooks`. Validated here; run by
//! `service::hooks`.

use super::raw::RawHooks;
use super::values::parse_duration;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a hook may run before its process group is killed.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// One `hooks` section as written (top level or one server's). A command given as an empty
/// string is "no hook" (a server uses that to switch off a top-level hook).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookCommands {
    pub pre_backup: Option<String>,
    pub post_backup: Option<String>,
    pub post_drill: Option<String>,
    pub on_verify_failure: Option<String>,
    pub timeout: Option<Duration>,
}

/// Every `hooks` section of the config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HooksConfig {
    pub global: HookCommands,
    pub servers: BTreeMap<String, HookCommands>,
}

/// The hooks in effect for one server: its own keys over the top-level ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSet {
    pub pre_backup: Option<String>,
    pub post_backup: Option<String>,
    pub post_drill: Option<String>,
    pub on_verify_failure: Option<String>,
    pub timeout: Duration,
}

impl HooksConfig {
    pub fn for_server(&self, server: &str) -> HookSet {
        let g = &self.global;
        let s = self.servers.get(server).cloned().unwrap_or_default();
        let pick = |own: Option<String>, top: &Option<String>| own.or_else(|| top.clone()).filter(|c| !c.trim().is_empty());
        HookSet {
            pre_backup: pick(s.pre_backup, &g.pre_backup),
            post_backup: pick(s.post_backup, &g.post_backup),
            post_drill: pick(s.post_drill, &g.post_drill),
            on_verify_failure: pick(s.on_verify_failure, &g.on_verify_failure),
            timeout: s.timeout.or(g.timeout).unwrap_or(DEFAULT_HOOK_TIMEOUT),
        }
    }
}

/// Validates one `hooks` section; `prefix` is its key (`hooks` or `servers.<name>.hooks`).
pub fn parse(prefix: &str, raw: Option<RawHooks>) -> Result<HookCommands, String> {
    let Some(r) = raw else { return Ok(HookCommands::default()) };
    let timeout = match r.timeout.as_deref() {
        None => None,
        Some(t) => {
            let d = parse_duration(Some(t), DEFAULT_HOOK_TIMEOUT).map_err(|m| format!("{prefix}.timeout: {m}"))?;
            if d < Duration::from_secs(1) {
                return Err(format!("{prefix}.timeout: {t:?}: must be at least 1s"));
            }
            Some(d)
        }
    };
    for (key, v) in [
        ("pre_backup", &r.pre_backup),
        ("post_backup", &r.post_backup),
        ("post_drill", &r.post_drill),
        ("on_verify_failure", &r.on_verify_failure),
    ] {
        if v.as_deref().is_some_and(|c| c.contains('\0')) {
            return Err(format!("{prefix}.{key}: the command contains a NUL byte"));
        }
    }
    Ok(HookCommands {
        pre_backup: r.pre_backup,
        post_backup: r.post_backup,
        post_drill: r.post_drill,
        on_verify_failure: r.on_verify_failure,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/pgark.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn top_level_and_per_server_hooks() {
        let c = parse(
            "catalog: /x\nhooks:\n  pre_backup: /bin/pre\n  post_backup: /bin/post\n  timeout: 2m\nservers:\n  a:\n    conninfo: host=/tmp\n    hooks:\n      post_backup: ''\n      timeout: 5s\n  b:\n    conninfo: host=/tmp port=5433\n",
        )
        .unwrap();
        let a = c.hooks.for_server("a");
        assert_eq!((a.pre_backup.as_deref(), a.post_backup.as_deref()), (Some("/bin/pre"), None));
        assert_eq!(a.timeout, Duration::from_secs(5));
        let b = c.hooks.for_server("b");
        assert_eq!(b.post_backup.as_deref(), Some("/bin/post"));
        assert_eq!(b.timeout, Duration::from_secs(120));
        assert!(!c.hooks.servers.contains_key("b"));
        // No hooks at all: nothing runs, the default timeout holds.
        let none = parse("catalog: /x\nservers:\n  a:\n    conninfo: host=/tmp\n").unwrap();
        assert_eq!(none.hooks.for_server("a").pre_backup, None);
        assert_eq!(none.hooks.for_server("a").timeout, super::DEFAULT_HOOK_TIMEOUT);
    }

    #[test]
    fn bad_hooks_name_the_key() {
        for (text, needle) in [
            (
                "catalog: /x\nhooks:\n  timeout: soon\nservers:\n  a:\n    conninfo: host=/tmp\n",
                "hooks.timeout",
            ),
            (
                "catalog: /x\nhooks:\n  timeout: 10ms\nservers:\n  a:\n    conninfo: host=/tmp\n",
                "hooks.timeout",
            ),
            (
                "catalog: /x\nservers:\n  a:\n    conninfo: host=/tmp\n    hooks:\n      timeout: never\n",
                "servers.a.hooks.timeout",
            ),
            (
                "catalog: /x\nhooks:\n  pre_bakup: x\nservers:\n  a:\n    conninfo: host=/tmp\n",
                "pre_bakup",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "error for {text:?} should mention {needle:?}: {e}");
        }
    }
}
