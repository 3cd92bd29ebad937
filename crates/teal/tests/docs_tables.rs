//! Every Markdown table of README.md and docs/*.md renders as a table: the
//! rows of a table are one run of lines right after its header and delimiter
//! row, and every row has as many cells as the header. A row cut off from its
//! table (by a paragraph or a blank line) renders as a line of text with
//! pipes in it; a row with more cells loses them, one with fewer is padded.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pages() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Whether a line is a table row: GitHub renders a table row only when it
/// has a pipe; every table of these pages writes its rows with a leading one.
fn is_row(line: &str) -> bool {
    line.trim_start().starts_with('|')
}

/// The cells of a row: split at pipes not escaped with `\` (a pipe in a
/// code span splits it too, as GitHub does), without the outer pipes.
fn cells(line: &str) -> Vec<String> {
    let line = line.trim();
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut escaped = false;
    for c in line.chars() {
        if escaped {
            cell.push(c);
            escaped = false;
        } else if c == '\\' {
            cell.push(c);
            escaped = true;
        } else if c == '|' {
            out.push(std::mem::take(&mut cell));
        } else {
            cell.push(c);
        }
    }
    out.push(cell);
    if line.starts_with('|') {
        out.remove(0);
    }
    if line.ends_with('|') && !line.ends_with("\\|") {
        out.pop();
    }
    out.into_iter().map(|c| c.trim().to_string()).collect()
}

fn is_delimiter(line: &str) -> bool {
    let cells = cells(line);
    !cells.is_empty()
        && cells.iter().all(|c| {
            let c = c.trim_start_matches(':').trim_end_matches(':');
            !c.is_empty() && c.chars().all(|ch| ch == '-')
        })
}

/// The problems of one page's tables, as `line N: what`.
fn problems(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut fence: Option<&str> = None;
    // Cells of the header of the table the previous line belongs to.
    let mut table: Option<usize> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let n = i + 1;
        let trimmed = line.trim_start();
        if let Some(f) = fence {
            if trimmed.starts_with(f) {
                fence = None;
            }
            i += 1;
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(&trimmed[..3]);
            table = None;
            i += 1;
            continue;
        }
        if !is_row(line) {
            table = None;
            i += 1;
            continue;
        }
        if let Some(width) = table {
            let got = cells(line).len();
            if got != width {
                out.push(format!(
                    "line {n}: {got} cells in a table whose header has {width}: {line}"
                ));
            }
            i += 1;
            continue;
        }
        // A row that starts a table: the next line must be its delimiter row.
        match lines.get(i + 1) {
            Some(next) if is_row(next) && is_delimiter(next) => {
                let width = cells(line).len();
                let dashes = cells(next).len();
                if dashes != width {
                    out.push(format!(
                        "line {}: the delimiter row has {dashes} cells, the header {width}",
                        n + 1
                    ));
                }
                table = Some(width);
                i += 2;
            }
            _ => {
                out.push(format!(
                    "line {n}: a table row outside any table (no header and delimiter row right above it; a blank line or text cut it off?): {line}"
                ));
                i += 1;
            }
        }
    }
    out
}

#[test]
fn every_table_of_the_docs_renders_as_a_table() {
    let mut all = Vec::new();
    let mut tables = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("read a page");
        tables += text
            .lines()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| is_row(w[0]) && is_row(w[1]) && is_delimiter(w[1]))
            .count();
        let name = page
            .strip_prefix(root())
            .unwrap_or(&page)
            .display()
            .to_string();
        all.extend(problems(&text).into_iter().map(|p| format!("{name}: {p}")));
    }
    assert!(
        tables > 10,
        "found only {tables} tables: is the parser blind?"
    );
    assert!(
        all.is_empty(),
        "tables that do not render:\n{}",
        all.join("\n")
    );
}

#[test]
fn the_checker_finds_cut_tables_and_wrong_cell_counts() {
    let good = "| a | b |\n|---|:-:|\n| 1 | `x \\| y` |\n\ntext | with a pipe\n";
    assert_eq!(problems(good), Vec::<String>::new());
    let cut = "| a | b |\n|---|---|\n| 1 | 2 |\n\nA paragraph.\n\n| 3 | 4 |\n";
    let p = problems(cut);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("line 7: a table row outside"), "{p:?}");
    let blank = "| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n";
    assert_eq!(problems(blank).len(), 1);
    let wide = "| a | b |\n|---|---|\n| 1 | 2 | 3 |\n| 4 |\n";
    let p = problems(wide);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].starts_with("line 3: 3 cells"), "{p:?}");
    assert!(p[1].starts_with("line 4: 1 cells"), "{p:?}");
    let delim = "| a | b |\n|---|\n";
    assert_eq!(problems(delim).len(), 1);
    let fenced = "```\n| not | a table |\n```\n";
    assert_eq!(problems(fenced), Vec::<String>::new());
}
