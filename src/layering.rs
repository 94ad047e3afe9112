//! The house's one-way dependencies, checked: every `crate::<room>` reference in `src/` must
//! follow [`ALLOWED`]. A new room, or a new arrow between rooms, is added to the table on
//! purpose (and to DESIGN.md §1), never by accident.

use std::path::Path;

/// Each room (a folder or file under `src/`) and the rooms it may use, bottom up.
const ALLOWED: &[(&str, &[&str])] = &[
    ("base", &[]),
    ("check", &[]),
    ("raft", &["base"]),
    ("store", &["base", "raft"]),
    ("http", &["base"]),
    ("client", &["base"]),
    ("node", &["base", "raft", "store", "http"]),
    ("api", &["base", "http", "node", "store", "client"]),
    ("process", &["base", "raft", "store", "http", "node", "api"]),
    ("operator", &["base", "client"]),
    ("bench", &["base", "client"]),
    ("cli", &["base", "client", "operator", "process", "bench"]),
];

/// The room a path under `src/` belongs to (`None` for the crate roots `lib.rs`, `main.rs`
/// and this file).
fn room_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("src/")?;
    let first = rest.split('/').next()?;
    if rest.contains('/') {
        Some(first)
    } else {
        first.strip_suffix(".rs").filter(|name| !matches!(*name, "lib" | "main" | "layering"))
    }
}

/// The rooms that `text` names through `crate::<room>` or `use crate::{<room>, ...}`, outside
/// comments.
fn rooms_named(text: &str) -> Vec<String> {
    let mut named = Vec::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a::X, b}`: the first name of each item.
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    named.push(ident(item.trim_start()).to_string());
                }
            } else {
                named.push(ident(rest).to_string());
            }
        }
    }
    named.retain(|n| !n.is_empty());
    named
}

fn ident(text: &str) -> &str {
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len());
    &text[..end]
}

/// Every reference in `files` (path, text) that the table does not allow, said plainly; and
/// every room missing from the table.
fn violations(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in files {
        let Some(room) = room_of(path) else { continue };
        let Some((_, allowed)) = ALLOWED.iter().find(|(name, _)| *name == room) else {
            found.push(format!("{path}: room '{room}' is not in the layering table"));
            continue;
        };
        for target in rooms_named(text) {
            let known = ALLOWED.iter().any(|(name, _)| *name == target);
            if known && target != room && !allowed.contains(&target.as_str()) {
                found.push(format!("{path}: '{room}' may not use '{target}' (allowed: {allowed:?})"));
            }
        }
    }
    found
}

fn read_tree(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read src").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_tree(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("under the root").to_string_lossy().replace('\\', "/");
            out.push((relative, std::fs::read_to_string(&path).expect("read a source file")));
        }
    }
}

#[test]
fn every_import_in_src_follows_the_layering_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    read_tree(&root.join("src"), root, &mut files);
    assert!(files.len() > 50, "read only {} files", files.len());
    let found = violations(&files);
    assert!(found.is_empty(), "imports against the layering (DESIGN.md §1):\n{}", found.join("\n"));
    // Every room in the table exists, so the table cannot drift from the tree.
    for (room, _) in ALLOWED {
        assert!(
            files.iter().any(|(path, _)| room_of(path) == Some(*room)),
            "room '{room}' is in the table but not in src/"
        );
    }
}

#[test]
fn an_operator_that_imports_the_node_breaks_the_layering() {
    let file = |path: &str, text: &str| vec![(path.to_string(), text.to_string())];
    assert!(violations(&file("src/operator/reconcile.rs", "use crate::client::Client;\nuse crate::base::ids::fnv1a;"))
        .is_empty());
    let direct = violations(&file("src/operator/reconcile.rs", "use crate::node::NodeHandle;"));
    assert_eq!(direct.len(), 1, "{direct:?}");
    assert!(direct[0].contains("'operator' may not use 'node'"), "{direct:?}");
    assert_eq!(violations(&file("src/operator/mod.rs", "use crate::{client::Client, node};")).len(), 1);
    assert_eq!(violations(&file("src/operator/mod.rs", "let x = crate::store::KvStore::new();")).len(), 1);
    // Comments do not count; a new room must be added to the table.
    assert!(violations(&file("src/operator/mod.rs", "//! like `crate::node` does")).is_empty());
    assert_eq!(violations(&file("src/newroom/mod.rs", "")).len(), 1);
    // The core uses nothing above the bottom room.
    assert_eq!(violations(&file("src/raft/raft.rs", "use crate::store::Storage;")).len(), 1);
}
