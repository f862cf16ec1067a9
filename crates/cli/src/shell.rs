//! `vfio-migrate completions SHELL` and `vfio-migrate man`: shell
//! completions and manual pages generated from the command-line
//! definitions themselves, so they never disagree with `--help`.

use anyhow::Context;
use clap::CommandFactory;
use std::path::PathBuf;

/// Arguments of `vfio-migrate completions`.
#[derive(clap::Args)]
#[command(after_help = "Install (bash, for every user):\n  \
    vfio-migrate completions bash > /usr/share/bash-completion/completions/vfio-migrate\n\
zsh:  vfio-migrate completions zsh > \"${fpath[1]}/_vfio-migrate\"\n\
fish: vfio-migrate completions fish > ~/.config/fish/completions/vfio-migrate.fish")]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Arguments of `vfio-migrate man`.
#[derive(clap::Args)]
#[command(after_help = "Install:\n  \
    vfio-migrate man --dir /usr/local/share/man/man1 && mandb -q\n  \
    man vfio-migrate-migrate")]
pub struct ManArgs {
    /// Write vfio-migrate.1 and one page per subcommand
    /// (vfio-migrate-SUBCOMMAND.1) into this directory, instead of the
    /// main page to stdout.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Writes the completion script to stdout.
pub fn completions(a: CompletionsArgs) -> anyhow::Result<i32> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "vfio-migrate", &mut std::io::stdout());
    Ok(0)
}

/// Writes the manual page(s).
pub fn man(a: ManArgs) -> anyhow::Result<i32> {
    let mut cmd = crate::Cli::command();
    // Propagates the global options (-v) into every subcommand's page.
    cmd.build();
    let Some(dir) = a.dir else {
        clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
        return Ok(0);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    let main = dir.join("vfio-migrate.1");
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    std::fs::write(&main, buf).with_context(|| format!("cannot write {}", main.display()))?;
    written.push(main);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("vfio-migrate-{}", sub.get_name());
        let page = sub.clone().name(name.clone()).bin_name(name.clone());
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    for p in &written {
        println!("{}", p.display());
    }
    Ok(0)
}
