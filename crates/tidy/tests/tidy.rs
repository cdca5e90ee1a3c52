//! The house rules, checked over the whole repository on every `cargo test`.
//!
//! Each test is one rule and names every place that breaks it as `path:line: what`, so a
//! failure says what to fix. The rules:
//! - every Rust file opens with a `//!` line saying what it is for;
//! - `unsafe` appears only in the files ARCHITECTURE.md lists under "Where unsafe lives";
//! - no test is ignored: no `#[ignore]`, no ```` ```ignore ```` doctest, and no end-to-end test
//!   skips, except through the one switch that says skipping is intended
//!   (`EMBER_TEST_UNPRIVILEGED=1`, for tests that need root);
//! - every crate under `crates/` has its section in ARCHITECTURE.md's code map;
//! - every dependency is declared once, in the root's `[workspace.dependencies]` (the
//!   workspace's own crates included), kept in order, and each crate names its dependencies
//!   with `workspace = true` (adding features if it needs more). `fuzz/` is a workspace of its
//!   own, built by `cargo fuzz` with its own lock file, so its manifest is not held to this.

// A test's helpers: what they cannot read fails the test.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use ember_tidy::{code_only, has_word};

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `path` relative to the root, as written in ARCHITECTURE.md (`crates/vm/src/linux/child.rs`).
fn relative(path: &Path) -> String {
    let relative = path.strip_prefix(root()).unwrap_or(path);
    relative.to_string_lossy().replace('\\', "/")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every file under `dir` whose name ends with `extension`, in a stable order, leaving out build
/// output (`target`), hidden directories (`.git`, `.venv`) and Python's caches.
fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !(name == "target"
                    || name.starts_with('.')
                    || name == "__pycache__"
                    || name == "node_modules")
                {
                    pending.push(path);
                }
            } else if name.ends_with(extension) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The crates of the workspace: each directory under `crates/` with a `Cargo.toml`.
fn crates() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Fails with every violation of `rule`, one per line.
fn check(rule: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "{rule}:\n  {}",
        violations.join("\n  ")
    );
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

#[test]
fn every_rust_file_opens_with_a_doc_line() {
    let violations = files(&root(), ".rs")
        .iter()
        .filter(|path| !read(path).starts_with("//!"))
        .map(|path| {
            format!(
                "{}:1: does not open with a `//!` line saying what it is for",
                relative(path)
            )
        })
        .collect();
    check("every .rs file opens with `//!`", violations);
}

/// The files ARCHITECTURE.md lists under its "Where unsafe lives" heading, with the line of each
/// entry: the first `path` of each `- ` item, up to the next heading.
fn unsafe_allowed() -> Vec<(String, usize)> {
    let text = read(&root().join("ARCHITECTURE.md"));
    let mut lines = text.lines().enumerate();
    let found = lines
        .by_ref()
        .any(|(_, line)| line.starts_with('#') && line.contains("Where unsafe lives"));
    assert!(
        found,
        "ARCHITECTURE.md has no \"Where unsafe lives\" heading"
    );
    lines
        .take_while(|(_, line)| !line.starts_with('#'))
        .filter_map(|(index, line)| {
            let item = line.strip_prefix("- `")?;
            let path = &item[..item.find('`')?];
            Some((path.to_owned(), index + 1))
        })
        .collect()
}

#[test]
fn unsafe_lives_only_where_architecture_md_says() {
    let allowed = unsafe_allowed();
    assert!(
        !allowed.is_empty(),
        "ARCHITECTURE.md's \"Where unsafe lives\" lists no file"
    );
    let mut violations = Vec::new();
    let mut used = Vec::new();
    for path in files(&root(), ".rs") {
        let name = relative(&path);
        let code = code_only(&read(&path));
        let lines: Vec<usize> = code
            .lines()
            .enumerate()
            .filter(|(_, line)| has_word(line, "unsafe"))
            .map(|(index, _)| index + 1)
            .collect();
        if lines.is_empty() {
            continue;
        }
        if allowed.iter().any(|(listed, _)| *listed == name) {
            used.push(name);
            continue;
        }
        for line in lines {
            violations.push(format!(
                "{name}:{line}: `unsafe` outside the files ARCHITECTURE.md lists under \"Where unsafe lives\""
            ));
        }
    }
    for (listed, line) in &allowed {
        if !used.contains(listed) {
            violations.push(format!(
                "ARCHITECTURE.md:{line}: lists `{listed}`, which holds no `unsafe` (or does not exist)"
            ));
        }
    }
    check("`unsafe` only where ARCHITECTURE.md says", violations);
}

/// The lines of `code` (comments and literals blanked) that open an attribute naming `ignore`:
/// `#[ignore]`, `#[ignore = "why"]`, `#[cfg_attr(…, ignore)]`.
fn ignore_attributes(code: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    for (at, _) in code.match_indices('#') {
        let rest = code[at + 1..].trim_start();
        let Some(rest) = rest.strip_prefix('[') else {
            continue;
        };
        let mut depth = 1;
        let end = rest.char_indices().find_map(|(i, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            (depth == 0).then_some(i)
        });
        if has_word(&rest[..end.unwrap_or(rest.len())], "ignore") {
            lines.push(line_of(code, at));
        }
    }
    lines
}

/// The lines of `source` whose doc comment opens a code block marked `ignore`, a doctest that
/// never runs.
fn ignored_doctests(source: &str) -> Vec<usize> {
    source
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            let line = line.trim_start();
            let Some(doc) = line
                .strip_prefix("///")
                .or_else(|| line.strip_prefix("//!"))
            else {
                return false;
            };
            let Some(info) = doc.trim_start().strip_prefix("```") else {
                return false;
            };
            info.split(|c: char| c == ',' || c.is_whitespace())
                .any(|word| word == "ignore")
        })
        .map(|(index, _)| index + 1)
        .collect()
}

#[test]
fn no_rust_test_is_ignored() {
    let mut violations = Vec::new();
    for path in files(&root(), ".rs") {
        let source = read(&path);
        for line in ignore_attributes(&code_only(&source)) {
            violations.push(format!(
                "{}:{line}: an ignored test: make it run, or delete it",
                relative(&path)
            ));
        }
        for line in ignored_doctests(&source) {
            violations.push(format!(
                "{}:{line}: an ignored doctest: make it run, or delete it",
                relative(&path)
            ));
        }
    }
    check("no #[ignore]", violations);
}

/// What skips a pytest test, or expects it to fail, without running it to the end.
const PYTEST_SKIPS: &[&str] = &[
    "mark.skip",
    ".skip(",
    "importorskip",
    "xfail",
    "SkipTest",
    "unittest.skip",
];

#[test]
fn no_end_to_end_test_skips_silently() {
    let mut violations = Vec::new();
    for path in files(&root().join("tests"), ".py") {
        let source = read(&path);
        let mut previous = "";
        for (index, line) in source.lines().enumerate() {
            let code = line.trim_start();
            if code.is_empty() || code.starts_with('#') {
                continue;
            }
            // The one sanctioned skip: a test that needs root, on a run that says with
            // EMBER_TEST_UNPRIVILEGED=1 that skipping it is intended (a `pytest.skip(` right under
            // the `if` that asks). Anything else would let a test pass without running.
            let asked_for = code.starts_with("pytest.skip(")
                && previous.starts_with("if ")
                && previous.contains("EMBER_TEST_UNPRIVILEGED");
            if !asked_for && PYTEST_SKIPS.iter().any(|skip| code.contains(skip)) {
                violations.push(format!(
                    "{}:{}: a test that skips or expects failure: make it fail loudly, or run it (see conftest.py)",
                    relative(&path),
                    index + 1
                ));
            }
            previous = code;
        }
    }
    check("no silent skips in the end-to-end tests", violations);
}

#[test]
fn every_crate_has_a_section_in_architecture_md() {
    let text = read(&root().join("ARCHITECTURE.md"));
    let sections: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter_map(|(index, line)| {
            Some((
                index + 1,
                line.strip_prefix("### `crates/")?.strip_suffix('`')?,
            ))
        })
        .collect();
    let crates = crates();
    let mut violations: Vec<String> = crates
        .iter()
        .filter(|name| !sections.iter().any(|(_, section)| section == name))
        .map(|name| format!("crates/{name}/Cargo.toml:1: no \"### `crates/{name}`\" section in ARCHITECTURE.md's code map"))
        .collect();
    for (line, section) in sections {
        if !crates.iter().any(|name| name == section) {
            violations.push(format!(
                "ARCHITECTURE.md:{line}: a section for `crates/{section}`, which is not a crate"
            ));
        }
    }
    check("a code-map section per crate", violations);
}

/// A crate's `Cargo.toml`: the crate's folder name, the file, its text, and the parsed document.
struct Manifest {
    name: String,
    path: PathBuf,
    text: String,
    manifest: toml_edit::Document<String>,
}

/// The manifest of every crate under `crates/`.
fn manifests() -> Vec<Manifest> {
    crates()
        .into_iter()
        .map(|name| {
            let path = root().join("crates").join(&name).join("Cargo.toml");
            let text = read(&path);
            let manifest = toml_edit::Document::parse(text.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", relative(&path)));
            Manifest {
                name,
                path,
                text,
                manifest,
            }
        })
        .collect()
}

/// The 1-based line of `key` in the manifest `text`, if it has one.
fn key_line(text: &str, table: &dyn toml_edit::TableLike, key: &str) -> usize {
    let span = table.get_key_value(key).and_then(|(key, _)| key.span());
    span.map_or(0, |span| line_of(text, span.start))
}

#[test]
fn workspace_dependencies_are_in_order() {
    let text = read(&root().join("Cargo.toml"));
    let manifest = toml_edit::Document::parse(text.as_str()).unwrap();
    let deps = manifest["workspace"]["dependencies"]
        .as_table_like()
        .unwrap();
    // The workspace's own crates (path dependencies) first, then the registry's, each by name.
    let order = |name: &str, item: &toml_edit::Item| {
        let path = item.as_table_like().is_some_and(|t| t.contains_key("path"));
        (!path, name.to_owned())
    };
    let mut violations = Vec::new();
    let mut previous: Option<(bool, String)> = None;
    for (name, item) in deps.iter() {
        let this = order(name, item);
        if let Some(before) = previous.as_ref().filter(|before| **before > this) {
            violations.push(format!(
                "Cargo.toml:{}: `{name}` comes after `{}`: the workspace's crates first, then the \
                 registry's, each in alphabetical order",
                key_line(&text, deps, name),
                before.1
            ));
        }
        previous = Some(this);
    }
    check("[workspace.dependencies] in order", violations);
}

#[test]
fn every_dependency_is_declared_by_the_workspace() {
    let mut violations = Vec::new();
    for Manifest {
        path,
        text,
        manifest,
        ..
    } in manifests()
    {
        // The dependency tables: for every target, and for some (`[target.'cfg(…)'.dependencies]`).
        let mut tables: Vec<&dyn toml_edit::TableLike> = Vec::new();
        let mut scopes: Vec<&dyn toml_edit::TableLike> = vec![manifest.as_table()];
        if let Some(targets) = manifest.get("target").and_then(|t| t.as_table_like()) {
            scopes.extend(
                targets
                    .iter()
                    .filter_map(|(_, target)| target.as_table_like()),
            );
        }
        for scope in scopes {
            for kind in ["dependencies", "dev-dependencies", "build-dependencies"] {
                tables.extend(scope.get(kind).and_then(|t| t.as_table_like()));
            }
        }
        for table in tables {
            for (dep, item) in table.iter() {
                let inherited = item
                    .as_table_like()
                    .and_then(|t| t.get("workspace"))
                    .and_then(|w| w.as_bool());
                if inherited != Some(true) {
                    violations.push(format!(
                        "{}:{}: `{dep}` is declared here; declare it in the root's \
                         [workspace.dependencies] and write `{dep}.workspace = true`",
                        relative(&path),
                        key_line(&text, table, dep)
                    ));
                }
            }
        }
    }
    check("dependencies declared once, by the workspace", violations);
}

/// The host and the agent share only `ember-protocol` (ARCHITECTURE.md, `crates/protocol`): no
/// crate links the agent into its build, so a microVM backend can ship the agent alone. A test
/// may use it (`[dev-dependencies]`), as `runtimes` does to run the real Runtime API.
#[test]
fn no_crate_links_the_agent() {
    let mut violations = Vec::new();
    for Manifest {
        name,
        path,
        text,
        manifest,
    } in manifests()
    {
        for kind in ["dependencies", "build-dependencies"] {
            let Some(table) = manifest.get(kind).and_then(|t| t.as_table_like()) else {
                continue;
            };
            if table.contains_key("ember-agent") {
                violations.push(format!(
                    "{}:{}: `{name}` links the agent; speak to it through `ember-protocol`",
                    relative(&path),
                    key_line(&text, table, "ember-agent")
                ));
            }
        }
    }
    check(
        "only the protocol crate is shared with the agent",
        violations,
    );
}
