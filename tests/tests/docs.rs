//! The docs never show a token going through a program's arguments.
//!
//! A command's arguments are readable by every user of the machine
//! (`/proc/PID/cmdline`, `ps`), so `curl -H "$(tokenctl header NAME)" URL`
//! hands the token to all of them for as long as curl runs. Every example
//! in the README, `docs/`, the clients' docs and the man page uses a form
//! that keeps it off argv instead: `tokenctl header NAME | curl -H @- URL`,
//! `-d @-`, or `tokenctl exec` (docs/SECURITY.md).

use std::path::{Path, PathBuf};

/// What puts a token into a command's arguments: tokenctl's output
/// substituted into a command line, or a variable holding a token spelled
/// out in a header argument.
const FORBIDDEN: &[&str] = &[
    "$(tokenctl token",
    "$(tokenctl header",
    "`tokenctl token",
    "`tokenctl header",
    "Authorization: Bearer $",
];

/// The workspace's root (this crate is `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Every Markdown file of the project, outside build output and installed
/// packages.
fn markdown_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let skip = ["target", "node_modules", ".git"];
    for entry in std::fs::read_dir(dir).expect("a readable directory") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !skip.contains(&name) && !name.starts_with('.') {
                markdown_files(&path, found);
            }
        } else if name.ends_with(".md") {
            found.push(path);
        }
    }
}

/// The places in `text` where a forbidden form appears, as `file:line: line`.
/// In Markdown, a backquoted `tokenctl token` in prose is the command's
/// name, not a command substitution: only code blocks are held to the
/// backquote forms.
fn violations(file: &Path, text: &str, markdown: bool) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_code = !markdown;
    for (i, line) in text.lines().enumerate() {
        if markdown && line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let hit = FORBIDDEN.iter().any(|f| {
            let backquote = f.starts_with('`');
            line.contains(f) && (in_code || !backquote)
        });
        if hit {
            found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
        }
    }
    found
}

#[test]
fn no_example_in_the_docs_puts_a_token_in_a_commands_arguments() {
    let root = root();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("README.md")) && files.len() > 5,
        "the docs were not found under {}: {files:?}",
        root.display()
    );
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a readable file");
        found.extend(violations(file, &text, true));
    }
    // The man page's examples are Rust strings (packaging/assets).
    let man = root.join("packaging/assets/src/man.rs");
    let text = std::fs::read_to_string(&man).expect("the man page's source");
    found.extend(violations(&man, &text, false));
    assert!(
        found.is_empty(),
        "examples that put a token in a command's arguments (use `tokenctl header NAME | curl -H @- URL`, `-d @-` or `tokenctl exec`):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_finds_each_forbidden_form() {
    let file = Path::new("example.md");
    let doc = "```sh\ncurl -H \"$(tokenctl header a)\" https://x/\nT=`tokenctl token a`\n```\n\
               Prose about `tokenctl token NAME` is fine.\n\
               curl -H \"Authorization: Bearer $TOKEN\" https://x/\n";
    let found = violations(file, doc, true);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[0].contains("example.md:2:"), "{found:?}");
    assert!(found[1].contains("example.md:3:"), "{found:?}");
    assert!(found[2].contains("example.md:6:"), "{found:?}");
    let fine = "```sh\ntokenctl header a | curl -H @- https://x/\n```\n";
    assert!(violations(file, fine, true).is_empty());
}
