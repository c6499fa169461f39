//! The docs against the code: the configuration table of docs/operations.md must list exactly
//! the settings `jobd --help` shows, with their flags, variables and defaults, and its metrics
//! table exactly the instruments jobd records; every relative link in the README,
//! BENCHMARKS.md and docs/ must lead to a file (and heading) that exists; and the README stays
//! short enough to read in ten minutes.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use clap::{ArgAction, CommandFactory};

/// The README is what a newcomer reads first, in ten minutes; details belong in docs/.
const README_MAX_BYTES: usize = 10_000;

#[test]
fn the_configuration_table_lists_every_setting_of_jobd_help() {
    let settings = settings();
    let rows = configuration_table();
    let mut problems = Vec::new();

    let mut rows_by_flag = BTreeMap::new();
    for row in &rows {
        match row.flag.as_deref() {
            None => problems.push(format!("{row}: the flag cell is not one `--flag`")),
            Some(flag) if !settings.contains_key(flag) => {
                problems.push(format!("{row}: jobd --help has no {flag}"))
            }
            Some(flag) => {
                if rows_by_flag.insert(flag, row).is_some() {
                    problems.push(format!("{row}: {flag} has another row above"));
                }
            }
        }
    }

    for (flag, setting) in &settings {
        let Some(row) = rows_by_flag.get(flag.as_str()) else {
            problems.push(format!(
                "{flag} ({}) has no row in the configuration table",
                setting.env.as_deref().unwrap_or("no variable")
            ));
            continue;
        };
        let env = setting
            .env
            .as_ref()
            .map_or("none".to_owned(), |env| format!("`{env}`"));
        if row.env != env {
            problems.push(format!("{row}: the variable is {env} in jobd --help"));
        }
        match &setting.default {
            SettingDefault::Value(value) => {
                if row.default != format!("`{value}`") {
                    problems.push(format!("{row}: the default is `{value}` in jobd --help"));
                }
            }
            SettingDefault::Stated(text) => {
                if !row.default.replace('`', "").contains(text.as_str()) {
                    problems.push(format!(
                        "{row}: jobd --help states the default as \"{text}\""
                    ));
                }
            }
            SettingDefault::None => {
                if row.default != "none" {
                    problems.push(format!("{row}: jobd --help has no default: write none"));
                }
            }
        }
    }

    assert!(
        problems.is_empty(),
        "docs/operations.md's configuration table and jobd --help differ:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_metrics_table_lists_every_instrument_as_jobd_describes_it() {
    let expected: Vec<String> = jobd::telemetry::INSTRUMENTS
        .iter()
        .map(|instrument| {
            let attributes: Vec<String> = instrument
                .attributes
                .iter()
                .map(|attribute| format!("`{attribute}`"))
                .collect();
            let attributes = match attributes.join(", ") {
                none if none.is_empty() => String::new(),
                some => format!("{some} "),
            };
            format!(
                "| `{}` | {}, {} | {attributes}| {} |",
                instrument.name,
                instrument.kind.as_str(),
                instrument.unit,
                instrument.description
            )
        })
        .collect();
    let text = read(&repo().join("docs/operations.md"));
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|line| *line == "| instrument | kind, unit | attributes | meaning |")
        .expect("docs/operations.md has the metrics table");
    let rows: Vec<&str> = lines[header + 2..]
        .iter()
        .take_while(|line| line.starts_with('|'))
        .copied()
        .collect();
    assert!(
        rows == expected,
        "docs/operations.md:{}: the metrics table must read, as src/telemetry/instruments.rs \
         describes the instruments:\n{}",
        header + 3,
        expected.join("\n")
    );
}

#[test]
fn every_relative_link_leads_to_an_existing_file_and_heading() {
    let mut documents = vec![repo().join("README.md"), repo().join("BENCHMARKS.md")];
    documents.extend(markdown_under(&repo().join("docs")));
    assert!(
        documents.iter().any(|d| d.ends_with("docs/api.md")),
        "the documents under docs/ are found"
    );

    let mut problems = Vec::new();
    for document in &documents {
        let text = read(document);
        let name = document.strip_prefix(repo()).unwrap().display();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                document.clone()
            } else {
                document.parent().unwrap().join(path)
            };
            if !file.exists() {
                problems.push(format!("{name}:{line}: {target}: no such file"));
                continue;
            }
            let is_markdown = file.extension().is_some_and(|ext| ext == "md");
            if !anchor.is_empty() && is_markdown && !anchors(&read(&file)).contains(anchor) {
                problems.push(format!("{name}:{line}: {target}: no such heading"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_readme_is_short() {
    let size = read(&repo().join("README.md")).len();
    assert!(
        size <= README_MAX_BYTES,
        "README.md is {size} bytes, over {README_MAX_BYTES}: move details to docs/"
    );
}

/// A setting as jobd's own parser defines it, which is what `jobd --help` prints.
struct Setting {
    env: Option<String>,
    default: SettingDefault,
}

enum SettingDefault {
    /// clap's default value.
    Value(String),
    /// No value for clap, but the help text says what applies: "[default: <hostname>-<pid>]".
    Stated(String),
    None,
}

/// Every setting by its long flag. Read from clap's definition rather than from `--help`'s
/// text, which would show the values of any variables set where the test runs.
fn settings() -> BTreeMap<String, Setting> {
    let mut command = <jobd::Config as CommandFactory>::command();
    command.build();
    let mut settings = BTreeMap::new();
    for arg in command.get_arguments() {
        let not_a_setting = matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        );
        if arg.is_hide_set() || not_a_setting {
            continue;
        }
        let long = arg
            .get_long()
            .unwrap_or_else(|| panic!("setting {} has no long flag", arg.get_id()));
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let default = if !defaults.is_empty() {
            SettingDefault::Value(defaults.join(","))
        } else if let Some(stated) = help
            .split_once("[default: ")
            .and_then(|(_, rest)| rest.split_once(']'))
        {
            SettingDefault::Stated(stated.0.to_owned())
        } else {
            SettingDefault::None
        };
        let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
        settings.insert(format!("--{long}"), Setting { env, default });
    }
    assert!(
        settings.len() > 10,
        "found only {} settings",
        settings.len()
    );
    settings
}

/// One row of the configuration table, its cells trimmed.
struct Row {
    line: usize,
    /// The flag, when the cell is exactly one code span `--flag`.
    flag: Option<String>,
    cell: String,
    env: String,
    default: String,
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "docs/operations.md:{} (row {})", self.line, self.cell)
    }
}

const TABLE_HEADER: &str = "| flag | environment | default | meaning |";

/// The rows of the tables under "## Configuration" in docs/operations.md: the first, and the
/// sub-tables after it (each under its own heading, with the same header).
fn configuration_table() -> Vec<Row> {
    let text = read(&repo().join("docs/operations.md"));
    let lines: Vec<&str> = text.lines().collect();
    let section = lines
        .iter()
        .position(|line| *line == "## Configuration")
        .expect("docs/operations.md has a \"## Configuration\" section");
    let end = section
        + 1
        + lines[section + 1..]
            .iter()
            .position(|line| line.starts_with("## "))
            .unwrap_or(lines.len() - section - 1);
    let mut rows = Vec::new();
    let mut at = section;
    while let Some(found) = lines[at..end].iter().position(|line| line.starts_with('|')) {
        let header = at + found;
        if !lines[header].starts_with("| flag ") {
            // Not a table of settings (the sweeper's fixed bounds): skip it.
            at = header
                + lines[header..end]
                    .iter()
                    .position(|line| !line.starts_with('|'))
                    .unwrap_or(end - header);
            continue;
        }
        assert_eq!(
            lines[header],
            TABLE_HEADER,
            "docs/operations.md:{}: the configuration table's header",
            header + 1
        );
        let table: Vec<Row> = lines
            .iter()
            .enumerate()
            .take(end)
            .skip(header + 2)
            .take_while(|(_, line)| line.starts_with('|'))
            .map(|(index, line)| {
                // The meaning comes last, so a `|` inside it cannot shift the other cells.
                let cells: Vec<&str> = line
                    .trim_start_matches('|')
                    .splitn(4, '|')
                    .map(str::trim)
                    .collect();
                assert_eq!(
                    cells.len(),
                    4,
                    "docs/operations.md:{}: a row has 4 cells",
                    index + 1
                );
                let flag = cells[0]
                    .strip_prefix("`--")
                    .and_then(|rest| rest.strip_suffix('`'))
                    .filter(|name| !name.contains('`'))
                    .map(|name| format!("--{name}"));
                Row {
                    line: index + 1,
                    flag,
                    cell: cells[0].to_owned(),
                    env: cells[1].to_owned(),
                    default: cells[2].to_owned(),
                }
            })
            .collect();
        at = header + 2 + table.len();
        rows.extend(table);
    }
    assert!(!rows.is_empty(), "the configuration table has rows");
    rows
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn markdown_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(markdown_under(&path));
        } else if path.extension().is_some_and(|ext| ext == "md") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// The lines of a Markdown text outside fenced code blocks, numbered from 1, as written and
/// with inline code spans blanked out.
fn prose(text: &str) -> Vec<(usize, &str, String)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut outside_code = true;
        let kept: String = line
            .chars()
            .map(|c| {
                if c == '`' {
                    outside_code = !outside_code;
                    ' '
                } else if outside_code {
                    c
                } else {
                    ' '
                }
            })
            .collect();
        lines.push((index + 1, line, kept));
    }
    lines
}

/// The targets of a text's inline links `[text](target)` and link definitions
/// `[label]: target`, with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    for (line, _, prose) in prose(text) {
        let mut rest = prose.as_str();
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            links.push((line, link_target(&rest[..end])));
            rest = &rest[end..];
        }
        let definition = prose
            .trim_start()
            .strip_prefix('[')
            .and_then(|rest| rest.split_once("]:"));
        if let Some((_, target)) = definition {
            links.push((line, link_target(target)));
        }
    }
    links
}

/// A link's destination without its angle brackets or title.
fn link_target(raw: &str) -> String {
    let raw = raw.trim();
    let raw = raw.split_whitespace().next().unwrap_or("");
    raw.trim_start_matches('<').trim_end_matches('>').to_owned()
}

/// The anchors GitHub gives a text's headings: lowercased, punctuation dropped, spaces as
/// hyphens, and `-1`, `-2`… after repeated ones.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeMap::<String, usize>::new();
    let mut anchors = BTreeSet::new();
    for (_, line, _) in prose(text) {
        let Some(heading) = line
            .trim_start_matches('#')
            .strip_prefix(' ')
            .filter(|_| line.starts_with('#'))
        else {
            continue;
        };
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_default();
        anchors.insert(match *count {
            0 => slug.clone(),
            n => format!("{slug}-{n}"),
        });
        *count += 1;
    }
    anchors
}

#[test]
fn the_service_config_names_every_method_once_and_retries_no_submission() {
    let text = read(&repo().join("docs/service-config.json"));
    let config: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut named = BTreeSet::new();
    for method_config in config["methodConfig"].as_array().unwrap() {
        let retried = method_config.get("retryPolicy").is_some();
        for name in method_config["name"].as_array().unwrap() {
            let method = format!(
                "{}/{}",
                name["service"].as_str().unwrap(),
                name["method"].as_str().unwrap()
            );
            assert!(
                !(retried && method.contains("/Submit")),
                "{method} is not safe to repeat without an idempotency key"
            );
            assert!(named.insert(method.clone()), "{method} named twice");
        }
    }
    // The methods jobd serves: its own descriptor set, the one its reflection service serves.
    let descriptors = <prost_types::FileDescriptorSet as prost::Message>::decode(
        jobd::api::proto::FILE_DESCRIPTOR_SET,
    )
    .unwrap();
    let methods: BTreeSet<String> = descriptors
        .file
        .iter()
        .flat_map(|file| file.service.iter())
        .flat_map(|service| {
            service
                .method
                .iter()
                .map(move |method| format!("jobd.v1.{}/{}", service.name(), method.name()))
        })
        .collect();
    assert_eq!(named, methods, "the config covers exactly jobd's methods");
}
