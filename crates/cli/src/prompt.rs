//! Asking the operator before a change.

use anyhow::{Context, Result};
use std::io::{BufRead, IsTerminal, Write};

/// Ask on the terminal (or read the answer from standard input); only `y`/`yes` agrees.
pub fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} [y/N]: ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    let stdin = std::io::stdin();
    if stdin
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?
        == 0
        && !stdin.is_terminal()
    {
        eprintln!();
    }
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
