//! The README's command table and docs/cli.md's examples cover exactly the commands
//! `diskc --help` lists.

mod common;

use std::fs;

fn help_commands() -> Vec<String> {
    let help = String::from_utf8(common::run_ok(common::diskc().arg("--help")).stdout).unwrap();
    let section = help.split("Commands:\n").nth(1).unwrap().split("\n\n").next().unwrap();
    section
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect()
}

#[test]
fn readme_table_and_cli_doc_match_help() {
    let commands = help_commands();
    assert!(commands.len() >= 14, "{commands:?}");
    let readme = fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let table = readme.split("## Commands").nth(1).unwrap().split("```").nth(1).unwrap();
    let in_table: Vec<String> = table
        .lines()
        .filter_map(|line| line.strip_prefix("diskc "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(String::from)
        .collect();
    assert_eq!(in_table, commands, "README's table and --help differ");
    let cli_doc = fs::read_to_string(common::repo_root().join("docs/cli.md")).unwrap();
    for command in &commands {
        let example = |end: char| cli_doc.contains(&format!("\ndiskc {command}{end}"));
        assert!(example(' ') || example('\n'), "docs/cli.md has no example of {command}");
    }
}
