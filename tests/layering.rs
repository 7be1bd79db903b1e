//! DESIGN invariant 6: the core never imports an integration. Bevy and Tracy may only
//! appear in their own modules (`src/bevy/`, `src/tracy.rs`), which sit at the edge
//! and use the public API plus the observer hook.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_modules_never_import_bevy_or_tracy() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found the sources");
    let integrations = [src.join("bevy"), src.join("tracy.rs")];
    let mut offenders = Vec::new();
    for file in files
        .iter()
        .filter(|f| !integrations.iter().any(|i| f.starts_with(i)))
    {
        let text = std::fs::read_to_string(file).expect("source is readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if ["bevy_", "bevy::", "tracy_client", "tracy::"]
                .iter()
                .any(|needle| code.contains(needle))
            {
                offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "core imports an integration:\n{}",
        offenders.join("\n")
    );
}

/// Every benchmark is a criterion binary (`harness = false`): with the default harness,
/// `cargo bench` runs libtest, which finds no `#[bench]` functions, measures nothing and
/// still succeeds (the `shm` bench did exactly that until this test).
#[test]
fn every_bench_target_uses_criterions_harness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let mut declared = Vec::new();
    for block in manifest.split("[[bench]]").skip(1) {
        let block = block.split("\n[").next().unwrap_or(block);
        let name = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = "))
            .unwrap_or_else(|| panic!("a [[bench]] without a name:{block}"))
            .trim_matches('"')
            .to_owned();
        assert!(
            block.lines().any(|l| l.trim() == "harness = false"),
            "bench `{name}` lacks `harness = false`"
        );
        declared.push(name);
    }
    for entry in std::fs::read_dir(root.join("benches")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            assert!(
                declared.contains(&stem),
                "benches/{stem}.rs has no [[bench]] entry"
            );
        }
    }
}
