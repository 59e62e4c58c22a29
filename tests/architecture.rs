//! The layer rule of `src/`, checked: a module imports only from the layers below it (see
//! `docs/architecture.md` and `src/lib.rs`). Reads every source file, skips comments and
//! `#[cfg(test)]` items, and collects each `crate::…` path (grouped `use crate::{a, b}` too).
//!
//! Also checked: only `catalog` makes a `LocalStore` (everything else opens a `Catalog`), and
//! the library never reaches the test harness.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may import. Rows are the layers, bottom first.
const ALLOWED: &[(&str, &[&str])] = &[
    // L0 leaves
    ("util", &[]),
    ("fsio", &["util"]),
    // L1 PostgreSQL knowledge, no I/O
    ("pg", &["util"]),
    ("protocol", &["pg", "util"]),
    // L2 network
    ("client", &["protocol", "pg", "util"]),
    // L3 storage
    ("catalog", &["pg", "fsio", "util"]),
    // L4 domain: siblings never import each other
    ("receiver", &["client", "catalog", "protocol", "pg", "fsio", "util"]),
    ("backup", &["client", "catalog", "protocol", "pg", "fsio", "util"]),
    ("restore", &["catalog", "pg", "fsio", "util"]),
    ("monitor", &["client", "pg", "util"]),
    ("retention", &["catalog", "pg", "fsio", "util"]),
    ("verify", &["catalog", "pg", "fsio", "util"]),
    ("offsite", &["catalog", "pg", "fsio", "util"]),
    // L5 configuration
    (
        "config",
        &[
            "receiver",
            "backup",
            "restore",
            "monitor",
            "retention",
            "verify",
            "offsite",
            "catalog",
            "client",
            "protocol",
            "pg",
            "fsio",
            "util",
        ],
    ),
    // L6 operations that combine domains: diagnosis and restore drills
    (
        "check",
        &[
            "config",
            "receiver",
            "backup",
            "restore",
            "monitor",
            "retention",
            "verify",
            "offsite",
            "catalog",
            "client",
            "protocol",
            "pg",
            "fsio",
            "util",
        ],
    ),
    (
        "drill",
        &[
            "config",
            "receiver",
            "backup",
            "restore",
            "monitor",
            "retention",
            "verify",
            "offsite",
            "catalog",
            "client",
            "protocol",
            "pg",
            "fsio",
            "util",
        ],
    ),
    // L7 the daemon
    (
        "service",
        &[
            "check",
            "drill",
            "config",
            "receiver",
            "backup",
            "restore",
            "monitor",
            "retention",
            "verify",
            "offsite",
            "catalog",
            "client",
            "protocol",
            "pg",
            "fsio",
            "util",
        ],
    ),
    // L8 the command line
    (
        "cli",
        &[
            "service",
            "check",
            "drill",
            "config",
            "receiver",
            "backup",
            "restore",
            "monitor",
            "retention",
            "verify",
            "offsite",
            "catalog",
            "client",
            "protocol",
            "pg",
            "fsio",
            "util",
        ],
    ),
];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source with `//` comments blanked and every `#[cfg(test)]` item removed (line numbers
/// kept: removed text becomes spaces and newlines stay).
fn production_code(src: &str) -> String {
    let mut text: Vec<char> = src.chars().collect();
    // Comments: `//` to the end of the line, outside string literals.
    let mut in_str = false;
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        if in_str {
            if c == '\\' {
                i += 2;
                continue;
            }
            if c == '"' {
                in_str = false;
            }
        } else if c == '"' && !(i > 0 && text[i - 1] == '\'' && text.get(i + 1) == Some(&'\'')) {
            in_str = true;
        } else if c == '/' && text.get(i + 1) == Some(&'/') {
            while i < text.len() && text[i] != '\n' {
                text[i] = ' ';
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    let mut s: String = text.into_iter().collect();
    // `#[cfg(test)]` items: up to the matching brace of the first `{` (or a `;` before it).
    while let Some(at) = s.find("#[cfg(test)]") {
        let rest = &s[at..];
        let open = rest.find('{');
        let semi = rest.find(';');
        let end = match (open, semi) {
            (Some(o), Some(sc)) if sc < o => at + sc + 1,
            (Some(o), _) => {
                let mut depth = 0;
                let mut end = s.len();
                for (k, ch) in rest[o..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = at + o + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, Some(sc)) => at + sc + 1,
            (None, None) => s.len(),
        };
        let blank: String = s[at..end].chars().map(|c| if c == '\n' { '\n' } else { ' ' }).collect();
        s.replace_range(at..end, &blank);
    }
    s
}

/// (line, first path segment) of every `crate::` path.
fn crate_refs(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(pos) = code[from..].find("crate::") {
        let at = from + pos;
        from = at + 7;
        // `pgark_crate::` or `some_crate::` are not ours.
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split on commas at depth 0.
            let mut depth = 0;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.extend(first_segment(&item).map(|s| (line, s)));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.extend(first_segment(&item).map(|s| (line, s)));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
        } else {
            out.extend(first_segment(rest).map(|s| (line, s)));
        }
    }
    out
}

fn first_segment(path: &str) -> Option<String> {
    let p = path.trim_start();
    let seg: String = p.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    (!seg.is_empty() && seg != "self").then_some(seg)
}

/// The top-level module a file belongs to (`None` for `lib.rs` and `main.rs`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.as_str() {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

#[test]
fn every_module_imports_only_from_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut seen_modules = std::collections::BTreeSet::new();
    for file in &files {
        let Some(module) = top_module(&src, file) else { continue };
        seen_modules.insert(module.clone());
        let Some(may) = allowed.get(module.as_str()) else {
            violations.push(format!(
                "{}: module `{module}` has no layer: add it to ALLOWED in tests/architecture.rs and to docs/architecture.md",
                file.display()
            ));
            continue;
        };
        let code = production_code(&std::fs::read_to_string(file).unwrap());
        for (line, target) in crate_refs(&code) {
            if target != module && !may.contains(&target.as_str()) {
                violations.push(format!(
                    "{}:{line}: `{module}` imports `crate::{target}`, which is not below it (allowed: {})",
                    file.strip_prefix(&src).unwrap_or(file).display(),
                    may.join(", ")
                ));
            }
        }
        if module != "catalog" && code.contains("LocalStore::new") {
            violations.push(format!(
                "{}: makes a LocalStore; open a `catalog::Catalog` instead (the one place storage is chosen)",
                file.display()
            ));
        }
        if code.contains("pgcluster") {
            violations.push(format!("{}: the library must not use the test harness", file.display()));
        }
    }
    for (module, _) in ALLOWED {
        assert!(seen_modules.contains(*module), "ALLOWED names `{module}`, which is not in src/");
    }
    assert!(violations.is_empty(), "layer violations:\n{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_grouped_and_plain_paths_but_not_comments_or_tests() {
    let code = production_code(
        "use crate::{a::x, b::{c, d}};\n// crate::hidden\nfn f() { crate::e::g(); }\n#[cfg(test)]\nmod tests { use crate::t; }\nlet s = \"http://x\"; crate::z::y();\n",
    );
    let refs: Vec<String> = crate_refs(&code).into_iter().map(|(_, s)| s).collect();
    assert_eq!(refs, ["a", "b", "e", "z"]);
}
