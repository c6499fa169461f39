//! The README's shell examples as commands a test runs as written.

/// The commands of the `block`th `sh` block (0 first) of the README's grpcurl section:
/// continuation lines joined, comments (whole lines, and after ` # `) dropped.
pub fn readme_commands(block: usize) -> Vec<String> {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## Using it with grpcurl")
        .nth(1)
        .expect("the README has a grpcurl section");
    let text = section
        .split("```sh\n")
        .nth(block + 1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("the grpcurl section has a sh block {block}"));
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.split(" # ").next().unwrap_or_default().trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}
