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
