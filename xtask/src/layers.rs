//! `cargo xtask layers`: the structure rules of docs/architecture.md, checked on the source.
//!
//! - The agent's top-level modules import only from their own layer or the layers below
//!   ([`AGENT_LAYERS`]), and form no import cycle inside a layer.
//! - The kernel programs' files (`ebpf/src/probes`) form no import cycle.
//! - No function outside tests is longer than [`MAX_FUNCTION_LINES`] lines.
//!
//! A small scanner rather than a Rust parser: comments, strings and `#[cfg(test)]` items are
//! blanked out, then `crate::` / `super::` paths and `fn` bodies are read off the rest. It is
//! unit-tested below on the constructs the code base uses.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// The agent's layers, bottom first. A module may import from its own layer and those below.
/// docs/architecture.md explains each; a new top-level module must be placed here.
pub const AGENT_LAYERS: &[(&str, &[&str])] = &[
    (
        "OS access",
        &["procfs", "bpf_sys", "clock", "syscall_names"],
    ),
    ("probes", &["probes"]),
    ("metadata", &["metadata"]),
    ("model", &["model"]),
    ("collector", &["collector"]),
    ("configuration", &["cli", "config", "logging"]),
    ("consumers", &["health", "exporters", "check", "viz"]),
    ("front", &["api", "control", "record", "top"]),
    ("process", &["agent", "fuzzing"]),
];

/// Longest function allowed outside tests (split by meaning before this).
pub const MAX_FUNCTION_LINES: usize = 100;

/// Runs every rule on the repository at `root`; an error lists every violation.
pub fn check(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    problems.extend(agent_layer_violations(&root.join("agent/src"))?);
    problems.extend(probe_cycles(&root.join("ebpf/src/probes"))?);
    for dir in ["agent/src", "ebpf/src", "common/src"] {
        for file in rust_files(&root.join(dir))? {
            let source = read(&file)?;
            for (name, line, lines) in long_functions(&source) {
                problems.push(format!(
                    "{}:{line}: fn {name} is {lines} lines (at most {MAX_FUNCTION_LINES})",
                    relative(root, &file)
                ));
            }
        }
    }
    if problems.is_empty() {
        println!("layers: agent modules follow docs/architecture.md, no probe import cycle, no function over {MAX_FUNCTION_LINES} lines");
        return Ok(());
    }
    for problem in &problems {
        eprintln!("layers: {problem}");
    }
    bail!(
        "{} structure rule(s) broken (docs/architecture.md)",
        problems.len()
    )
}

fn relative(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string()
}

fn read(file: &Path) -> Result<String> {
    fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The top-level module a file of `src` belongs to (`None` for lib.rs and main.rs).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

fn layer_of(module: &str) -> Option<usize> {
    AGENT_LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// Imports of the agent's modules that go up a layer, modules in no layer, and import cycles
/// (inside a layer).
fn agent_layer_violations(src: &Path) -> Result<Vec<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src)? {
        let Some(module) = top_module(src, &file) else {
            continue;
        };
        let code = without_tests(&blank_comments_and_strings(&read(&file)?));
        let targets = edges.entry(module.clone()).or_default();
        for target in crate_paths(&code) {
            if target != module {
                targets.insert(target);
            }
        }
    }
    let mut problems = Vec::new();
    for (module, targets) in &edges {
        let Some(layer) = layer_of(module) else {
            problems.push(format!(
                "agent module `{module}` is in no layer: add it to AGENT_LAYERS (xtask/src/layers.rs) and docs/architecture.md"
            ));
            continue;
        };
        for target in targets {
            match layer_of(target) {
                Some(target_layer) if target_layer > layer => problems.push(format!(
                    "`{module}` ({}) imports `{target}` ({}), a layer above it",
                    AGENT_LAYERS[layer].0, AGENT_LAYERS[target_layer].0
                )),
                _ => {}
            }
        }
    }
    for cycle in cycles(&edges) {
        problems.push(format!("agent: import cycle {}", cycle.join(" -> ")));
    }
    Ok(problems)
}

/// Import cycles between the files of the kernel programs' probes directory.
fn probe_cycles(dir: &Path) -> Result<Vec<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(dir)? {
        let Some(stem) = file.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if stem == "mod" {
            continue;
        }
        let code = without_tests(&blank_comments_and_strings(&read(&file)?));
        let mut targets: BTreeSet<String> = paths_after(&code, "super::").into_iter().collect();
        targets.extend(paths_after(&code, "crate::probes::"));
        targets.remove(stem);
        edges.insert(stem.to_string(), targets);
    }
    Ok(cycles(&edges)
        .into_iter()
        .map(|cycle| format!("ebpf/src/probes: import cycle {}", cycle.join(" -> ")))
        .collect())
}

/// One cycle per strongly connected component of more than one node (Tarjan would do; the
/// graphs are a dozen nodes, so a reachability check is simpler).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut pending = vec![from.to_string()];
        while let Some(node) = pending.pop() {
            for next in edges.get(&node).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    pending.push(next.clone());
                }
            }
        }
        seen
    };
    let mut reported = BTreeSet::new();
    let mut found = Vec::new();
    for node in edges.keys() {
        if reported.contains(node) {
            continue;
        }
        let from = reach(node);
        if !from.contains(node) {
            continue;
        }
        let component: Vec<String> = from
            .iter()
            .filter(|other| reach(other).contains(node))
            .cloned()
            .collect();
        reported.extend(component.iter().cloned());
        found.push(component);
    }
    found
}

/// Replaces comments and the contents of string and char literals with spaces (newlines kept,
/// so line numbers stay right).
fn blank_comments_and_strings(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || (next == Some('#') && !is_ident(chars.get(i.wrapping_sub(1)))))
            && !is_ident(chars.get(i.wrapping_sub(1)))
        {
            // Raw string: r"..." or r#"..."#.
            let mut hashes = 0;
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            out.push('"');
            i = j + 1;
            while i < chars.len() {
                if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
                    out.push('"');
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if let Some(&inner) = chars.get(i) {
                    out.push(blank(inner));
                }
                i += 1;
            }
            out.push('"');
            i += 1;
        } else if c == '\'' && (chars.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A char literal ('x' or an escape); otherwise a lifetime, kept as is.
            out.push('\'');
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                out.push(' ');
                i += 1;
            }
            out.push('\'');
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// Blanks out every item marked `#[cfg(test)]` (the attribute up to the end of the item: its
/// matching closing brace or semicolon). Expects comments and strings already blanked.
fn without_tests(code: &str) -> String {
    let mut out: Vec<char> = code.chars().collect();
    let marker: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut i = 0;
    while i + marker.len() <= out.len() {
        if out[i..i + marker.len()] != marker[..] {
            i += 1;
            continue;
        }
        let start = i;
        let mut j = i + marker.len();
        let mut depth = 0usize;
        while j < out.len() {
            match out[j] {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                ';' if depth == 0 => break,
                _ => {}
            }
            j += 1;
        }
        let end = (j + 1).min(out.len());
        for c in &mut out[start..end] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        i = end;
    }
    out.into_iter().collect()
}

/// The top-level modules named by `crate::` paths, `crate::{a, b::c}` groups included.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    for (index, _) in code.match_indices("crate::") {
        if is_ident(code[..index].chars().last().as_ref()) {
            continue;
        }
        let rest = &code[index + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item = String::new();
            let mut at_start = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        at_start = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && at_start {
                    if c.is_alphanumeric() || c == '_' {
                        item.push(c);
                    } else if !item.is_empty() {
                        modules.insert(std::mem::take(&mut item));
                        at_start = false;
                    }
                }
            }
            if !item.is_empty() {
                modules.insert(item);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                modules.insert(name);
            }
        }
    }
    modules
}

/// Identifiers right after `prefix` (for `super::x` and `crate::probes::x`), groups included.
fn paths_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (index, _) in code.match_indices(prefix) {
        if is_ident(code[..index].chars().last().as_ref()) {
            continue;
        }
        let rest = &code[index + prefix.len()..];
        let rewritten = format!("crate::{rest}");
        names.extend(crate_paths(&rewritten));
    }
    names
}

/// `(name, first line, length in lines)` of every function whose body is longer than
/// [`MAX_FUNCTION_LINES`], tests excluded.
fn long_functions(source: &str) -> Vec<(String, usize, usize)> {
    let code = without_tests(&blank_comments_and_strings(source));
    let chars: Vec<char> = code.chars().collect();
    let line_at = |index: usize| chars[..index].iter().filter(|c| **c == '\n').count() + 1;
    let mut found = Vec::new();
    let mut i = 0;
    while i + 3 < chars.len() {
        let keyword = chars[i] == 'f'
            && chars[i + 1] == 'n'
            && chars[i + 2].is_whitespace()
            && !is_ident(i.checked_sub(1).map(|p| &chars[p]));
        if !keyword {
            i += 1;
            continue;
        }
        let mut j = i + 2;
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        let name: String = chars[j..]
            .iter()
            .take_while(|c| c.is_alphanumeric() || **c == '_')
            .collect();
        if name.is_empty() {
            i += 2;
            continue;
        }
        // The body: the first `{` outside the signature's parentheses and angle brackets,
        // unless a `;` (a declaration without a body) comes first.
        let mut k = j + name.len();
        let mut parens = 0i32;
        let mut body = None;
        while k < chars.len() {
            match chars[k] {
                '(' | '[' => parens += 1,
                ')' | ']' => parens -= 1,
                ';' if parens == 0 => break,
                '{' if parens == 0 => {
                    body = Some(k);
                    break;
                }
                _ => {}
            }
            k += 1;
        }
        let Some(open) = body else {
            i = k;
            continue;
        };
        let mut depth = 0usize;
        let mut close = open;
        for (offset, c) in chars[open..].iter().enumerate() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + offset;
                        break;
                    }
                }
                _ => {}
            }
        }
        let (first, last) = (line_at(i), line_at(close));
        let lines = last - first + 1;
        if lines > MAX_FUNCTION_LINES {
            found.push((name, first, lines));
        }
        // Nested functions are looked at too (they are inside this one's body).
        i = j;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_strings_are_blanked_lines_kept() {
        let source = "let a = \"crate::x {\"; // crate::y\n/* crate::z */ let c = '{'; 'a: loop {}\nr#\"crate::w\"#";
        let blanked = blank_comments_and_strings(source);
        assert_eq!(blanked.lines().count(), source.lines().count());
        assert!(crate_paths(&blanked).is_empty(), "{blanked}");
        assert!(blanked.contains("'a: loop {}"), "{blanked}");
        assert_eq!(blanked.matches('{').count(), 1, "{blanked}");
    }

    #[test]
    fn crate_paths_read_groups_and_inline_paths() {
        let code = "use crate::{model::{a, b}, collector::ask};\nfn f() { crate::health::x(); my_crate::no(); }";
        let found: Vec<String> = crate_paths(code).into_iter().collect();
        assert_eq!(found, ["collector", "health", "model"]);
    }

    #[test]
    fn test_items_are_ignored() {
        let code = "use crate::a;\n#[cfg(test)]\nmod tests {\n use crate::b; fn x() { }\n}\n#[cfg(test)]\nuse crate::c;\nuse crate::d;";
        let found: Vec<String> = crate_paths(&without_tests(code)).into_iter().collect();
        assert_eq!(found, ["a", "d"]);
    }

    #[test]
    fn long_functions_are_measured_from_fn_to_closing_brace() {
        let body = "    x();\n".repeat(MAX_FUNCTION_LINES);
        let source = format!(
            "fn short() {{ }}\npub(crate) fn long<T: Fn(u32)>(t: [u8; 2]) -> Result<(), ()> where T: Copy {{\n{body}}}\ntrait A {{ fn decl(&self); }}\n"
        );
        let found = long_functions(&source);
        assert_eq!(found, [("long".to_string(), 2, MAX_FUNCTION_LINES + 2)]);
        assert!(long_functions(&format!("#[cfg(test)]\nmod tests {{ {source} }}")).is_empty());
    }

    #[test]
    fn cycles_are_found_and_acyclic_graphs_pass() {
        let graph = |pairs: &[(&str, &str)]| {
            let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (from, to) in pairs {
                edges
                    .entry(from.to_string())
                    .or_default()
                    .insert(to.to_string());
            }
            edges
        };
        assert!(cycles(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());
        assert_eq!(
            cycles(&graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])),
            [vec!["a".to_string(), "b".to_string(), "c".to_string()]]
        );
    }

    #[test]
    fn every_layer_module_is_named_once() {
        let mut seen = BTreeSet::new();
        for (_, modules) in AGENT_LAYERS {
            for module in *modules {
                assert!(seen.insert(*module), "{module} is in two layers");
            }
        }
    }
}
