//! ARCHITECTURE.md kept true: its crate, Redis key and stream tables must name exactly the
//! workspace's crates, the `Keys` methods and the `Stream` variants. A key added without its
//! row, or a row naming a key that no longer exists, fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The lines of the markdown section `## <title>` (up to the next `## `).
fn section<'a>(doc: &'a str, title: &str) -> Vec<&'a str> {
    let head = format!("## {title}");
    let mut lines = doc.lines().skip_while(|l| l.trim_end() != head);
    assert!(lines.next().is_some(), "ARCHITECTURE.md has no section {head:?}");
    lines.take_while(|l| !l.starts_with("## ")).collect()
}

/// The first cell of every table row of a section that starts with code, without its backticks.
fn first_cells(rows: &[&str]) -> Vec<String> {
    rows.iter()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('|').nth(1))
        .map(|c| c.trim().trim_matches('`').to_string())
        .collect()
}

/// `name` of every `pub fn name(&self` in `source`.
fn methods(source: &str) -> BTreeSet<String> {
    source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub fn "))
        .filter(|rest| rest.contains("(&self"))
        .filter_map(|rest| rest.find('(').map(|i| rest[..i].to_string()))
        .collect()
}

fn diff(what: &str, code: &BTreeSet<String>, doc: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for m in code.difference(doc) {
        problems.push(format!("{what} {m} is missing from ARCHITECTURE.md"));
    }
    for m in doc.difference(code) {
        problems.push(format!("ARCHITECTURE.md names {what} {m}, which does not exist"));
    }
    problems
}

fn key_problems(doc: &str, keys_rs: &str) -> Vec<String> {
    let code: BTreeSet<String> = methods(keys_rs).into_iter().filter(|m| m != "namespace").collect();
    let mut problems = Vec::new();
    let mut listed = BTreeSet::new();
    for c in first_cells(&section(doc, "Redis keys")) {
        match c.strip_prefix("Keys::") {
            Some(m) if !listed.insert(m.to_string()) => problems.push(format!("Keys::{m} has two rows")),
            Some(_) => {}
            None => problems.push(format!("a Redis keys row names {c:?}, not a Keys method")),
        }
    }
    problems.extend(diff("Keys::", &code, &listed));
    problems
}

fn stream_problems(doc: &str, streams_rs: &str) -> Vec<String> {
    let body = streams_rs
        .split("pub enum Stream {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("common/src/streams.rs has `pub enum Stream {`");
    let code: BTreeSet<String> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && l.ends_with(','))
        .map(|l| format!("Stream::{}", l.trim_end_matches(',')))
        .collect();
    let doc_set: BTreeSet<String> = first_cells(&section(doc, "Streams")).into_iter().collect();
    diff("stream", &code, &doc_set)
}

fn crate_problems(doc: &str, cargo_toml: &str) -> Vec<String> {
    let members = cargo_toml
        .lines()
        .find(|l| l.starts_with("members"))
        .and_then(|l| l.split('[').nth(1))
        .expect("Cargo.toml has `members = [...]` on one line")
        .trim_end_matches(']');
    let code: BTreeSet<String> = members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(|m| format!("{m}/"))
        .collect();
    let table: BTreeSet<String> = first_cells(&section(doc, "Crates")).into_iter().collect();
    let mut problems = diff("crate", &code, &table);
    let map: BTreeSet<String> = section(doc, "Code map")
        .iter()
        .filter_map(|l| l.strip_prefix("### `"))
        .map(|l| l.trim_end_matches('`').to_string())
        .filter(|d| d != "deploy/")
        .collect();
    problems.extend(diff("code map section for crate", &code, &map));
    problems
}

#[test]
fn the_doc_names_every_key_stream_and_crate_and_nothing_else() {
    let doc = read("ARCHITECTURE.md");
    let mut problems = key_problems(&doc, &read("common/src/keys.rs"));
    problems.extend(stream_problems(&doc, &read("common/src/streams.rs")));
    problems.extend(crate_problems(&doc, &read("Cargo.toml")));
    assert!(problems.is_empty(), "ARCHITECTURE.md is out of date:\n{}", problems.join("\n"));
}

#[test]
fn a_key_added_without_its_row_or_a_row_without_its_key_is_found() {
    let doc = read("ARCHITECTURE.md");
    let keys = read("common/src/keys.rs");
    let added = keys.replacen("impl Keys {", "impl Keys {\n    pub fn brand_new(&self) -> String { String::new() }", 1);
    let p = key_problems(&doc, &added);
    assert!(p.iter().any(|p| p.contains("brand_new is missing")), "{p:?}");
    let renamed = doc.replacen("| `Keys::motion_batch` |", "| `Keys::gone_now` |", 1);
    let p = key_problems(&renamed, &keys);
    assert!(p.iter().any(|p| p.contains("gone_now, which does not exist")), "{p:?}");
    assert!(p.iter().any(|p| p.contains("motion_batch is missing")), "{p:?}");
    let streams = read("common/src/streams.rs").replacen("    System,", "    System,\n    Extra,", 1);
    assert!(stream_problems(&doc, &streams).iter().any(|p| p.contains("Stream::Extra")));
    let cargo = read("Cargo.toml").replacen("members = [\"common\",", "members = [\"common\", \"newcrate\",", 1);
    assert!(crate_problems(&doc, &cargo).iter().any(|p| p.contains("newcrate/")));
}
