//! colo-tests: checks that cut across the crates and the documents, in `tests/tests/`. Each
//! test reads a document under `docs/` and the code it describes (colo-core, colo-runtime,
//! colo-sim) and fails when they disagree: numbered invariants the code cites, the annotated
//! config file an operator copies, the checker and canary names, the wire protocol version.
//! Scenario tests live beside the crate they drive (`core/tests`, `runtime/tests`,
//! `sim/tests`); this crate holds only what needs more than one of them.

use std::path::{Path, PathBuf};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the repository")
        .to_path_buf()
}

/// The text of a file under the repository root.
pub fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every `.rs` file under `dir` (relative to the repository root), sorted, with its text.
pub fn rust_sources(dir: &str) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![repo_root().join(dir)];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push((path, text));
            }
        }
    }
    out.sort();
    out
}

/// The numbers `n` of every "invariant n" in `text` (case-insensitive).
pub fn cited_invariants(text: &str) -> Vec<u32> {
    let lower = text.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut rest = lower.as_str();
    while let Some(at) = rest.find("invariant ") {
        rest = &rest[at + "invariant ".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse() {
            out.push(n);
        }
    }
    out
}

/// The numbers of the list items `n. **Name**` in the section titled `heading` of `doc`.
pub fn numbered_items(doc: &str, heading: &str) -> Vec<u32> {
    let Some(start) = doc.find(heading) else {
        return Vec::new();
    };
    let section = &doc[start + heading.len()..];
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|line| {
            let (n, _) = line.split_once(". **")?;
            n.trim().parse().ok()
        })
        .collect()
}

/// The contents of every fenced block of `lang` in `doc` (```lang ... ```).
pub fn fenced_blocks(doc: &str, lang: &str) -> Vec<String> {
    let open = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(at) = rest.find(&open) {
        rest = &rest[at + open.len()..];
        let end = rest.find("\n```").unwrap_or(rest.len());
        out.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cited_invariants_reads_numbers_after_the_word() {
        assert_eq!(
            cited_invariants("see architecture.md Invariant 1 and (invariant 6, no loss)"),
            vec![1, 6]
        );
        assert!(cited_invariants("the invariant kept: none").is_empty());
    }

    #[test]
    fn numbered_items_stop_at_the_next_section() {
        let doc = "## A\n1. **x** y\n2. **z**\n## B\n3. **w**\n";
        assert_eq!(numbered_items(doc, "## A"), vec![1, 2]);
    }

    #[test]
    fn fenced_blocks_returns_each_block_of_the_language() {
        let doc = "```toml\na = 1\n```\n```sh\nx\n```\n```toml\nb = 2\n```\n";
        assert_eq!(fenced_blocks(doc, "toml"), vec!["a = 1", "b = 2"]);
    }
}
