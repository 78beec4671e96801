//! The parser's driver: the scanner's logical lines ([`super::scan`]) through the instruction
//! layer ([`super::instructions`]) into [`Instruction`]s with their locations and heredocs; the
//! file's structure (a FROM, only ARG before it); ONBUILD trigger expressions.

use super::instructions::{Command, parse_line};
use super::scan::Scanner;
use super::{Dockerfile, Instruction, Loc};
use anyhow::Result;

/// Parse one ONBUILD trigger expression as stored in an image config (`"RUN echo hi"`).
/// Heredoc bodies appended to the expression (BuildKit stores them that way) are honoured.
pub fn parse_trigger(expression: &str, escape: char) -> Result<Instruction> {
    let df = parse_lines(expression, "ONBUILD", escape, false)?;
    let mut it = df.instructions.into_iter();
    match (it.next(), it.next()) {
        (Some(i), None) => {
            if matches!(i.keyword(), "ONBUILD" | "FROM" | "MAINTAINER") {
                anyhow::bail!("ONBUILD: {} isn't allowed as an ONBUILD trigger", i.keyword());
            }
            Ok(i)
        }
        _ => anyhow::bail!("ONBUILD: the trigger {expression:?} must be a single instruction"),
    }
}

/// [`parse_trigger`] for a trigger inherited from a base image's config: errors and the
/// instruction's location (and its flags') point at `loc` (the stage's FROM line).
pub fn parse_onbuild_trigger(expression: &str, loc: &Loc) -> Result<Instruction> {
    let mut ins =
        parse_trigger(expression, '\\').map_err(|e| loc.error(format!("ONBUILD trigger {expression:?}: {e}")))?;
    ins.loc = loc.clone();
    ins.end_line = loc.line;
    for l in ins.command.flag_locs_mut() {
        *l = loc.clone();
    }
    Ok(ins)
}

pub(super) fn parse_text(text: &str, file_name: &str) -> Result<Dockerfile> {
    let df = parse_lines(text, file_name, '\\', true)?;
    // structure: only ARG may precede the first FROM, and there must be a FROM
    let loc1 = || Loc {
        file: file_name.to_string(),
        line: 1,
        col: 1,
    };
    if df.instructions.is_empty() {
        return Err(loc1().error("file with no instructions (expected at least a FROM instruction)"));
    }
    for ins in &df.instructions {
        match ins.command {
            Command::From(_) => return Ok(df),
            Command::Arg(_) => continue,
            _ => {
                return Err(ins.loc.error(format!(
                    "{} before the first FROM: no build stage in current context (only ARG may come before FROM)",
                    ins.keyword()
                )));
            }
        }
    }
    let last = df.instructions.last().map(|i| i.loc.clone()).unwrap_or_else(loc1);
    Err(last.error("dockerfile contains no stages to build (expected a FROM instruction after the ARGs)"))
}

fn parse_lines(text: &str, file_name: &str, default_escape: char, directives_allowed: bool) -> Result<Dockerfile> {
    let mut sc = Scanner::new(text, file_name, default_escape, directives_allowed);
    let mut instructions = Vec::new();
    while let Some(line) = sc.next_logical()? {
        let locate = |off: usize| line.locate(off);
        let command = parse_line(&line.text, 0, sc.escape(), false, &locate).map_err(|e| {
            let at = e.at.map(&locate).unwrap_or_else(|| line.loc.clone());
            at.error(e.msg)
        })?;
        let mut instr = Instruction {
            loc: line.loc.clone(),
            end_line: line.end_line,
            original: line.text.trim().to_string(),
            command,
            heredocs: Vec::new(),
        };
        if instr.command.can_contain_heredoc() && line.text.contains("<<") {
            instr.heredocs = sc.heredoc_bodies(&line.text, &instr.loc)?;
            instr.end_line = sc.lines_read().max(line.loc.line);
        }
        if let Command::Onbuild(inner) = &mut instr.command {
            inner.end_line = instr.end_line;
            inner.heredocs = instr.heredocs.clone();
            for h in &instr.heredocs {
                inner.original.push('\n');
                inner.original.push_str(&h.content);
                inner.original.push_str(&h.name);
            }
        }
        instructions.push(instr);
    }
    let (directives, warnings) = sc.finish();
    Ok(Dockerfile {
        directives,
        instructions,
        warnings,
    })
}
