//! The Dockerfile frontend: [`parse`] turns Dockerfile text into [`Instruction`]s the way
//! BuildKit's `docker/dockerfile:1` frontend reads it (parser directives, comments, line
//! continuations, JSON vs shell form, flags, heredocs), [`expand`] does shell-word variable
//! substitution exactly like BuildKit's `shell.Lex`, [`ignore`] implements `.dockerignore`, and
//! [`mount`] parses `RUN --mount=` specs.
//!
//! Nothing here expands variables: every argument is kept raw (quotes and `$` still in) so that
//! the planner and the executor can expand it with the right scope. Which instructions expand
//! and how is documented in [`expand`].
//!
//! Errors always read `FILE:LINE:COL: what is wrong (what was expected)`.

mod args;
pub mod chmod;
pub mod expand;
mod flags;
pub mod ignore;
pub mod instructions;
pub mod mount;
mod parse;
mod scan;
pub mod suggest;

use anyhow::{Context, Result, bail};
use std::fmt;
use std::path::Path;
use std::time::Duration;

pub use chmod::Chmod;
pub use expand::{VarLookup, process_word, process_words, referenced_vars};
pub use ignore::{IgnoreMatcher, go_match};
pub use instructions::{
    Command, CopyCommand, FlagValue, FromCommand, HealthcheckSpec, NetworkMode, RunCommand, SecurityMode, ShellOrExec,
};
pub use mount::{MountKind, RunMount};
pub use parse::{parse_onbuild_trigger, parse_trigger};
pub use scan::parse_heredoc_word;

/// A position in a Dockerfile (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Loc {
    pub file: String,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

impl Loc {
    /// An error located here: `Dockerfile:3:1: msg`.
    pub fn error(&self, msg: impl fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{self}: {msg}")
    }
}

/// A heredoc body attached to a RUN/COPY/ADD (or ONBUILD of those) instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word with quotes removed (`EOF` for `<<'EOF'`).
    pub name: String,
    /// The body, every line with its newline; leading tabs already removed for `<<-`.
    pub content: String,
    /// False when (part of) the delimiter was quoted: the body must not be expanded.
    pub expand: bool,
    /// `<<-`: leading tabs were stripped from the body lines and the terminator.
    pub strip_tabs: bool,
    /// The file descriptor for `3<<EOF` forms (0 when none was written).
    pub fd: u32,
}

/// One instruction.
#[derive(Clone, Debug, PartialEq)]
pub struct Instruction {
    pub loc: Loc,
    /// The last line the instruction (with continuations and heredoc bodies) occupies.
    pub end_line: usize,
    /// The source text, continuation lines joined, trimmed; for an ONBUILD trigger the text
    /// after `ONBUILD` (as stored in the image config's `OnBuild`).
    pub original: String,
    pub command: Command,
    pub heredocs: Vec<Heredoc>,
}

/// Parser directives from the top of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directives {
    pub escape: char,
    pub syntax: Option<String>,
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            check: None,
        }
    }
}

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq)]
pub struct Dockerfile {
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
    /// Non-fatal findings (e.g. empty continuation lines), each starting with a location.
    pub warnings: Vec<String>,
}

/// Every instruction keyword, for messages.
pub const KEYWORDS: &[&str] = &[
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

/// Parse Dockerfile text. `file_name` is used in locations (`Dockerfile:3:1: ...`).
pub fn parse(text: &str, file_name: &str) -> Result<Dockerfile> {
    parse::parse_text(text, file_name)
}

/// Parse raw bytes, refusing binary files and invalid UTF-8 with a located message.
pub fn parse_bytes(bytes: &[u8], file_name: &str) -> Result<Dockerfile> {
    let locate = |offset: usize| {
        let before = &bytes[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = offset - before.iter().rposition(|&b| b == b'\n').map(|p| p + 1).unwrap_or(0) + 1;
        Loc {
            file: file_name.to_string(),
            line,
            col,
        }
    };
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        return Err(
            locate(pos).error("the file contains a NUL byte, so it is binary, not a Dockerfile (expected UTF-8 text)")
        );
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text, file_name),
        Err(e) => Err(locate(e.valid_up_to()).error("the file is not valid UTF-8 (expected a UTF-8 text Dockerfile)")),
    }
}

/// Read and parse a Dockerfile from disk; locations use the path as given.
pub fn parse_file(path: &Path) -> Result<Dockerfile> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("Dockerfile not found: {} (use -f to name another file)", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read the Dockerfile {}", path.display())),
    };
    parse_bytes(&bytes, &path.display().to_string())
}

impl Instruction {
    /// The upper-case keyword: "RUN", "COPY", ...
    pub fn keyword(&self) -> &'static str {
        self.command.keyword()
    }

    /// The heredoc a COPY/ADD source word (`<<EOF`) refers to.
    pub fn heredoc_for(&self, word: &str) -> Option<&Heredoc> {
        let (name, _, _, _) = parse_heredoc_word(word)?;
        self.heredocs.iter().find(|h| h.name == name)
    }
}

/// Parse a Go duration (`1h2m3.5s`, `300ms`, `10us`, `0`).
pub fn parse_go_duration(s: &str) -> Result<Duration> {
    let bad = || anyhow::anyhow!("time: invalid duration {s:?} (expected a number with a unit like 30s, 1m30s, 500ms)");
    let mut rest = s;
    let neg = rest.starts_with('-');
    rest = rest.strip_prefix(['-', '+']).unwrap_or(rest);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let num: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += num * mult;
    }
    if neg && total > 0.0 {
        bail!("time: negative duration {s:?} is not allowed here");
    }
    if !total.is_finite() || total > 1e10 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests;
