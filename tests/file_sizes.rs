//! The house stays readable: no production source file over 700 lines (a file's test module,
//! from its `#[cfg(test)]`, does not count). A file that grows past it is split by concern.

use std::path::{Path, PathBuf};

const MAX_PRODUCTION_LINES: usize = 700;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// Lines before the file's first `#[cfg(test)]` at the start of a line.
fn production_lines(text: &str) -> usize {
    text.lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .count()
}

#[test]
fn no_production_file_is_over_700_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 50,
        "found only {} files under src/",
        files.len()
    );
    let mut over: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let lines = production_lines(&std::fs::read_to_string(path).unwrap());
            (lines > MAX_PRODUCTION_LINES).then(|| format!("{} ({lines})", path.display()))
        })
        .collect();
    over.sort();
    assert!(
        over.is_empty(),
        "over {MAX_PRODUCTION_LINES} production lines: {over:?}"
    );
}

#[test]
fn the_test_module_is_what_is_left_out() {
    let text = "a\nb\n#[cfg(test)]\nmod tests {\n}\n";
    assert_eq!(production_lines(text), 2);
    assert_eq!(production_lines("a\n    #[cfg(test)]\nb\n"), 3);
}
