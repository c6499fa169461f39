//! The layering of docs/architecture.md, checked as rust-analyzer's tidy tests do: what each
//! module of src/ may import from the others, which modules may name tonic or fred, and that
//! the integration tests call jobd through the client library.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Each module of jobd, and the modules it may import. The composition root, `app`, may
/// import any.
const MAY_IMPORT: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("sync", &[]),
    ("shutdown", &[]),
    ("config", &["domain"]),
    ("auth", &["domain"]),
    ("reload", &[]),
    ("telemetry", &["config", "domain"]),
    ("redis", &["config", "telemetry"]),
    ("store", &["domain", "telemetry"]),
    ("group_commit", &["domain", "store", "sync"]),
    ("budgets", &["sync"]),
    (
        "events",
        &["budgets", "domain", "redis", "store", "sync", "telemetry"],
    ),
    ("queues", &["domain", "store", "sync"]),
    (
        "claims",
        &[
            "budgets",
            "domain",
            "events",
            "group_commit",
            "store",
            "sync",
            "telemetry",
        ],
    ),
    (
        "submissions",
        &["claims", "domain", "group_commit", "store"],
    ),
    ("completions", &["domain", "group_commit", "store"]),
    (
        "background",
        &["domain", "redis", "store", "sync", "telemetry"],
    ),
    (
        "api",
        &[
            "auth",
            "background",
            "budgets",
            "claims",
            "completions",
            "domain",
            "events",
            "queues",
            "store",
            "submissions",
            "sync",
            "telemetry",
        ],
    ),
];

/// Foreign crates only some modules may name: gRPC is the API's, Redis's client the
/// connections', the store's and the event hub's.
const ONLY_IN: &[(&str, &[&str])] = &[
    ("tonic", &["api"]),
    ("tonic_health", &["api"]),
    ("tonic_reflection", &["api"]),
    ("prost", &["api"]),
    ("fred", &["redis", "store", "events"]),
];

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let allowed: BTreeMap<&str, &[&str]> = MAY_IMPORT.iter().copied().collect();
    let mut problems = Vec::new();
    for (module, files) in modules() {
        if module == "app" || module == "lib" || module == "main" || module == "bin" {
            continue;
        }
        let Some(may) = allowed.get(module.as_str()) else {
            problems.push(format!("src/{module}: a module the layering does not name"));
            continue;
        };
        for file in files {
            for (line, imported) in crate_imports(&read(&file)) {
                if imported != module && !may.contains(&imported.as_str()) {
                    problems.push(format!(
                        "{}:{line}: {module} imports crate::{imported}",
                        shown(&file)
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn grpc_and_redis_clients_stay_in_their_modules() {
    let mut problems = Vec::new();
    for (module, files) in modules() {
        if module == "bin" {
            continue;
        }
        for file in files {
            let text = read(&file);
            for (number, line) in code_lines(&text) {
                for (foreign, owners) in ONLY_IN {
                    let named = line.contains(&format!("{foreign}::"))
                        && !line.contains(&format!("_{foreign}::"));
                    if named && !owners.contains(&module.as_str()) {
                        problems.push(format!(
                            "{}:{number}: {module} names {foreign}",
                            shown(&file)
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The integration tests call jobd as its users do, through the Rust client library: its
/// generated messages and stubs (`jobd_client::proto`), never the server's. The one exception
/// is jobd's descriptor set, what its reflection serves (docs.rs compares the service config
/// with it).
#[test]
fn the_tests_call_jobd_through_the_client_library() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it");
    // Built, so that this file does not name them itself.
    let server = ["jobd", "::api"].concat();
    let server_proto = ["api", "::proto"].concat();
    let descriptors = format!("{server}::proto::FILE_DESCRIPTOR_SET");
    let mut problems = Vec::new();
    let files = rust_files(&tests);
    assert!(files.len() > 30, "tests/it read: {files:?}");
    for file in files {
        let text = read(&file);
        for (number, line) in code_lines(&text) {
            let named = line.contains(&server) || line.contains(&server_proto);
            if named && !line.contains(&descriptors) {
                problems.push(format!("{}:{number}: {}", shown(&file), line.trim()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "jobd's own stubs or messages in the tests:\n{}",
        problems.join("\n")
    );
}

/// The modules of src/, each with its files: a directory's files, or a single file.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src/").flatten() {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let files = if path.is_dir() {
            rust_files(&path)
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            vec![path.clone()]
        } else {
            continue;
        };
        modules.insert(name, files);
    }
    assert!(modules.len() > 10, "src/ read: {:?}", modules.keys());
    modules
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn shown(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The lines of `text` with their numbers, comments left out.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.split("//").next().unwrap_or_default()))
        .filter(|(_, line)| !line.trim().is_empty())
        .collect()
}

/// The top-level modules of jobd that `text` names through `crate::`, with the line of each:
/// `crate::store::JobStore` and `use crate::{domain::Job, store::{JobStore, Keys}}` alike.
fn crate_imports(text: &str) -> BTreeSet<(usize, String)> {
    let code: Vec<(usize, &str)> = code_lines(text);
    let mut joined = String::new();
    let mut lines = Vec::new();
    for (number, line) in &code {
        for _ in line.chars() {
            lines.push(*number);
        }
        joined.push_str(line);
        lines.push(*number);
        joined.push('\n');
    }
    let chars: Vec<char> = joined.chars().collect();
    let mut found = BTreeSet::new();
    let mut at = 0;
    while let Some(offset) = chars[at..]
        .windows(7)
        .position(|window| window.iter().collect::<String>() == "crate::")
    {
        let start = at + offset + 7;
        at = start;
        if chars.get(start) == Some(&'{') {
            // The names at depth one of the braces.
            let mut depth = 0;
            let mut item_start = true;
            for (index, &c) in chars.iter().enumerate().skip(start) {
                match c {
                    '{' => {
                        depth += 1;
                        item_start = depth == 1;
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') && depth == 1 => {
                        let name: String = chars[index..]
                            .iter()
                            .take_while(|c| c.is_alphanumeric() || **c == '_')
                            .collect();
                        found.insert((lines[index], name));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = chars[start..]
                .iter()
                .take_while(|c| c.is_alphanumeric() || **c == '_')
                .collect();
            found.insert((lines[start], name));
        }
    }
    found
}
