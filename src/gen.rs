//! Renders man pages (clap_mangen) and shell completion scripts (clap_complete) from the clap
//! definition in [`crate::cli`]. The same functions serve `kheishctl completions`, the hidden
//! `kheishctl man`, and the freshness test that compares them with the files checked in under
//! `completions/` and `man/` (STYLE §6).
//!
//! Output is deterministic: no dates, and the version is `CARGO_PKG_VERSION`. Nothing here
//! reads the environment or writes files; callers decide where the bytes go.

use std::path::PathBuf;

use clap::CommandFactory;

use crate::cli::{Cli, Shell};

/// The binary name every script and page is generated for.
const BIN_NAME: &str = "kheishctl";

/// Directory (relative to the repository root) of the checked-in completion scripts.
pub const COMPLETIONS_DIR: &str = "completions";
/// Directory (relative to the repository root) of the checked-in man pages.
pub const MAN_DIR: &str = "man";

/// Every shell a completion script is generated for, in a fixed order.
pub const SHELLS: [Shell; 5] = [
    Shell::Bash,
    Shell::Zsh,
    Shell::Fish,
    Shell::Powershell,
    Shell::Elvish,
];

/// The conventional file name of a shell's completion script.
pub fn completion_file_name(shell: Shell) -> &'static str {
    match shell {
        Shell::Bash => "kheishctl.bash",
        Shell::Zsh => "_kheishctl",
        Shell::Fish => "kheishctl.fish",
        Shell::Powershell => "_kheishctl.ps1",
        Shell::Elvish => "kheishctl.elv",
    }
}

/// The completion script for `shell`.
pub fn render_completion(shell: Shell) -> Vec<u8> {
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
        Shell::Powershell => clap_complete::Shell::PowerShell,
        Shell::Elvish => clap_complete::Shell::Elvish,
    };
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(generator, &mut cmd, BIN_NAME, &mut buf);
    buf
}

/// Every man page: `kheishctl.1`, then `kheishctl-<sub>.1` for each subcommand that is not
/// hidden (recursively, `kheishctl-<sub>-<subsub>.1`), as (file name, roff bytes).
pub fn render_man_pages() -> Vec<(String, Vec<u8>)> {
    // As `clap_mangen::generate_to` does: no `help` subcommand in the pages, and a built command
    // so subcommands carry their full display name (`kheishctl-sign`) and propagated version.
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut pages = Vec::new();
    collect_pages(&root, &mut pages);
    pages
}

/// The names of the subcommands `kheishctl man SUBCOMMAND` accepts (the non-hidden ones).
pub fn man_subcommands() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect()
}

/// The man page file name for `subcommand` (`None`: the overview page `kheishctl.1`).
pub fn man_file_name(subcommand: Option<&str>) -> String {
    match subcommand {
        None => format!("{BIN_NAME}.1"),
        Some(sub) => format!("{BIN_NAME}-{sub}.1"),
    }
}

/// Every generated file, as (path relative to the repository root, bytes): the completion
/// scripts under `completions/`, then the man pages under `man/`.
pub fn render_all() -> Vec<(PathBuf, Vec<u8>)> {
    let completions = SHELLS.iter().map(|&shell| {
        (
            PathBuf::from(COMPLETIONS_DIR).join(completion_file_name(shell)),
            render_completion(shell),
        )
    });
    let man = render_man_pages()
        .into_iter()
        .map(|(name, bytes)| (PathBuf::from(MAN_DIR).join(name), bytes));
    completions.chain(man).collect()
}

fn collect_pages(cmd: &clap::Command, pages: &mut Vec<(String, Vec<u8>)>) {
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("{BIN_NAME} {}", env!("CARGO_PKG_VERSION")))
        .manual("kheishctl manual");
    let name = man.get_filename();
    let mut buf = Vec::new();
    man.render(&mut buf)
        .expect("invariant: rendering roff into a Vec<u8> cannot fail");
    pages.push((name, buf));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect_pages(sub, pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_file_name(shell: Shell, expected: &str) {
        assert_eq!(completion_file_name(shell), expected, "{shell:?}");
    }

    fn page(name: &str) -> String {
        let pages = render_man_pages();
        let (_, bytes) = pages
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no man page {name}"));
        String::from_utf8(bytes.clone()).expect("man pages are UTF-8")
    }

    #[test]
    fn completion_file_names() {
        check_file_name(Shell::Bash, "kheishctl.bash");
        check_file_name(Shell::Zsh, "_kheishctl");
        check_file_name(Shell::Fish, "kheishctl.fish");
        check_file_name(Shell::Powershell, "_kheishctl.ps1");
        check_file_name(Shell::Elvish, "kheishctl.elv");
    }

    #[test]
    fn one_page_per_visible_subcommand_plus_overview() {
        let names: Vec<String> = render_man_pages().into_iter().map(|(n, _)| n).collect();
        let mut expected = vec![man_file_name(None)];
        expected.extend(man_subcommands().iter().map(|s| man_file_name(Some(s))));
        assert_eq!(names, expected);
        assert!(names.contains(&"kheishctl-sign.1".to_string()));
        assert!(!names
            .iter()
            .any(|n| n.contains("-man.") || n.contains("-help.")));
    }

    #[test]
    fn rendering_is_deterministic() {
        assert_eq!(render_all(), render_all());
    }

    #[test]
    fn pages_carry_the_crate_version_and_no_date() {
        let sign = page("kheishctl-sign.1");
        let title = sign
            .lines()
            .find(|l| l.starts_with(".TH"))
            .expect(".TH line");
        assert_eq!(
            title,
            format!(
                ".TH kheishctl-sign 1  \"kheishctl {}\" \"kheishctl manual\"",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert!(sign.contains("\\-\\-secret\\-env"), "{sign}");
    }

    #[test]
    fn completions_know_every_visible_subcommand_but_not_man() {
        let bash = String::from_utf8(render_completion(Shell::Bash)).expect("UTF-8");
        for sub in man_subcommands() {
            assert!(bash.contains(&sub), "bash completion lacks {sub}");
        }
        assert!(
            !bash.contains("kheishctl__man"),
            "hidden `man` is completed"
        );
    }

    #[test]
    fn render_all_paths() {
        let paths: Vec<PathBuf> = render_all().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths[0], PathBuf::from("completions/kheishctl.bash"));
        assert!(paths.contains(&PathBuf::from("man/kheishctl.1")));
        assert_eq!(paths.len(), SHELLS.len() + render_man_pages().len());
    }
}
