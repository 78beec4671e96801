//! The instruction layer (BuildKit's `instructions` package): a logical line's keyword and
//! arguments become a typed [`Command`] once, here, with every flag checked where it is
//! written ([`super::flags`]). The planner and the executor read typed fields; none of them
//! looks at a flag name.
//!
//! Words stay raw (quotes and `$` still in): the planner and the executor expand them with the
//! right scope (see [`super::expand`]). Flag values are raw too, with their location.

use super::args::{
    MaybeJson, PErr, PResult, extract_flags, json_or_words, parse_maybe_json, parse_name_val, parse_words, perr,
    shell_or_exec, split_first_ws, split_ws_words,
};
use super::flags::Flags;
use super::scan::parse_heredoc_word;
use super::{Instruction, KEYWORDS, Loc};
use std::time::Duration;

/// A flag's value as written (quotes removed, variables not expanded) and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagValue {
    pub raw: String,
    pub loc: Loc,
}

/// Shell form (raw text, handed to the SHELL) or exec form (JSON array, never expanded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShellOrExec {
    Shell(String),
    Exec(Vec<String>),
}

/// `FROM [--platform=p] image [AS name]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FromCommand {
    pub image: String,
    /// Lower-cased and validated.
    pub name: Option<String>,
    pub platform: Option<FlagValue>,
}

/// `RUN [--mount=…]… [--network=…] [--security=…] command`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunCommand {
    pub cmd: ShellOrExec,
    /// Raw `--mount` specs: expand, then [`super::mount::parse_mount`].
    pub mounts: Vec<FlagValue>,
    /// Raw `--network`: expand, then [`NetworkMode::parse`].
    pub network: Option<FlagValue>,
    /// Raw `--security`: expand, then [`SecurityMode::parse`].
    pub security: Option<FlagValue>,
}

/// COPY and ADD (the same struct: the parser refuses the flags of one on the other).
/// Sources and destination are raw words (expand each with `process_word`); JSON form is
/// supported; a heredoc source appears as its word (`<<EOF`, `<<-'EOF'`): look it up with
/// [`Instruction::heredoc_for`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyCommand {
    pub srcs: Vec<String>,
    pub dest: String,
    pub chown: Option<FlagValue>,
    /// Raw `--chmod`: expand, then [`super::Chmod::parse`].
    pub chmod: Option<FlagValue>,
    pub link: bool,
    pub exclude: Vec<FlagValue>,
    /// COPY only: a stage name or index, or an image.
    pub from: Option<FlagValue>,
    /// COPY only.
    pub parents: bool,
    /// ADD only: `sha256:…` of an HTTP(S) source.
    pub checksum: Option<FlagValue>,
    /// ADD only.
    pub keep_git_dir: bool,
    /// ADD only: `--unpack` as written (kiln does not implement it).
    pub unpack: Option<FlagValue>,
}

impl CopyCommand {
    /// The flags as (name, raw value) in a fixed order, `None` for a true boolean: the
    /// instruction's flags in its cache key.
    pub fn flags_for_key(&self) -> Vec<(&'static str, Option<&str>)> {
        let mut out = Vec::new();
        for (name, f) in [("from", &self.from), ("chown", &self.chown), ("chmod", &self.chmod)] {
            if let Some(f) = f {
                out.push((name, Some(f.raw.as_str())));
            }
        }
        for (name, set) in [("link", self.link), ("parents", self.parents)] {
            if set {
                out.push((name, None));
            }
        }
        out.extend(self.exclude.iter().map(|f| ("exclude", Some(f.raw.as_str()))));
        if let Some(f) = &self.checksum {
            out.push(("checksum", Some(f.raw.as_str())));
        }
        if self.keep_git_dir {
            out.push(("keep-git-dir", None));
        }
        if let Some(f) = &self.unpack {
            out.push(("unpack", Some(f.raw.as_str()).filter(|v| !v.is_empty())));
        }
        out
    }
}

/// HEALTHCHECK settings. Durations and retries are parsed here from the flags (Go duration
/// syntax like `30s`, `1m30s`, `500ms`); `None` means "not given / 0" (use the default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthcheckSpec {
    pub test: ShellOrExec,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
    pub retries: Option<u32>,
}

impl HealthcheckSpec {
    /// The config `Test` vector: `["CMD", ...]` for exec form, `["CMD-SHELL", "..."]` for shell.
    pub fn test_vector(&self) -> Vec<String> {
        match &self.test {
            ShellOrExec::Exec(v) => std::iter::once("CMD".to_string()).chain(v.iter().cloned()).collect(),
            ShellOrExec::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
        }
    }
}

/// `RUN --network=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    Default,
    None,
    Host,
}

impl NetworkMode {
    pub fn parse(v: &str) -> Result<NetworkMode, String> {
        match v {
            "default" => Ok(NetworkMode::Default),
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            _ => Err(format!(
                "unsupported network mode {v:?} (expected default, none or host)"
            )),
        }
    }
}

/// `RUN --security=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityMode {
    Sandbox,
    Insecure,
}

impl SecurityMode {
    pub fn parse(v: &str) -> Result<SecurityMode, String> {
        match v {
            "sandbox" => Ok(SecurityMode::Sandbox),
            "insecure" => Ok(SecurityMode::Insecure),
            _ => Err(format!(
                "unsupported security mode {v:?} (expected sandbox or insecure)"
            )),
        }
    }
}

/// What an instruction says; all words raw (unexpanded, quotes still in).
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    From(FromCommand),
    Run(RunCommand),
    Cmd(ShellOrExec),
    Entrypoint(ShellOrExec),
    /// Always JSON form.
    Shell(Vec<String>),
    /// Raw key/value words (quotes still in; expand each with `process_word`).
    Label(Vec<(String, String)>),
    Maintainer(String),
    /// Raw words; expand each with `process_words` (a variable may hold several ports).
    Expose(Vec<String>),
    /// Both `ENV k v` and `ENV k=v ...`; raw values (expand with `process_word`).
    Env(Vec<(String, String)>),
    Add(CopyCommand),
    Copy(CopyCommand),
    /// JSON or whitespace-separated raw words.
    Volume(Vec<String>),
    User(String),
    Workdir(String),
    /// Names with raw default values.
    Arg(Vec<(String, Option<String>)>),
    /// The trigger, parsed (its `original` is the text stored in the config's `OnBuild`).
    Onbuild(Box<Instruction>),
    Stopsignal(String),
    /// `None` = `HEALTHCHECK NONE`.
    Healthcheck(Option<HealthcheckSpec>),
}

impl Command {
    /// The upper-case keyword: "RUN", "COPY", ...
    pub fn keyword(&self) -> &'static str {
        match self {
            Command::From(_) => "FROM",
            Command::Run(_) => "RUN",
            Command::Cmd(_) => "CMD",
            Command::Entrypoint(_) => "ENTRYPOINT",
            Command::Shell(_) => "SHELL",
            Command::Label(_) => "LABEL",
            Command::Maintainer(_) => "MAINTAINER",
            Command::Expose(_) => "EXPOSE",
            Command::Env(_) => "ENV",
            Command::Add(_) => "ADD",
            Command::Copy(_) => "COPY",
            Command::Volume(_) => "VOLUME",
            Command::User(_) => "USER",
            Command::Workdir(_) => "WORKDIR",
            Command::Arg(_) => "ARG",
            Command::Onbuild(_) => "ONBUILD",
            Command::Stopsignal(_) => "STOPSIGNAL",
            Command::Healthcheck(_) => "HEALTHCHECK",
        }
    }

    /// Whether heredoc bodies may follow the line (RUN in shell form, COPY, ADD, ONBUILD of
    /// those).
    pub(super) fn can_contain_heredoc(&self) -> bool {
        match self {
            Command::Run(r) => matches!(r.cmd, ShellOrExec::Shell(_)),
            Command::Copy(_) | Command::Add(_) => true,
            Command::Onbuild(inner) => inner.command.can_contain_heredoc(),
            _ => false,
        }
    }

    /// Every flag value's location (to point them all at one place).
    pub(super) fn flag_locs_mut(&mut self) -> Vec<&mut Loc> {
        let mut out = Vec::new();
        match self {
            Command::From(f) => out.extend(f.platform.iter_mut().map(|v| &mut v.loc)),
            Command::Run(r) => {
                out.extend(r.mounts.iter_mut().map(|v| &mut v.loc));
                out.extend(r.network.iter_mut().map(|v| &mut v.loc));
                out.extend(r.security.iter_mut().map(|v| &mut v.loc));
            }
            Command::Copy(c) | Command::Add(c) => {
                for f in [&mut c.chown, &mut c.chmod, &mut c.from, &mut c.checksum, &mut c.unpack] {
                    out.extend(f.iter_mut().map(|v| &mut v.loc));
                }
                out.extend(c.exclude.iter_mut().map(|v| &mut v.loc));
            }
            _ => {}
        }
        out
    }
}

/// The keyword, arguments and offsets of one logical line, for the per-instruction parsers.
struct Line<'a, 'f> {
    kw: &'static str,
    /// The arguments after the flags, trimmed.
    args: &'a str,
    /// Where the arguments (before trimming) start in the logical line.
    args_off: usize,
    /// The untrimmed argument text.
    args_str: &'a str,
    flags: Flags<'f>,
    escape: char,
    locate: &'f dyn Fn(usize) -> Loc,
}

/// Parses one logical line into a command. `base` is the byte offset of `line` in the joined
/// logical line (non-zero for ONBUILD triggers); `locate` maps such offsets to positions.
pub(super) fn parse_line(
    line: &str,
    base: usize,
    escape: char,
    nested: bool,
    locate: &dyn Fn(usize) -> Loc,
) -> PResult<Command> {
    let lead = line.len() - line.trim_start().len();
    let trimmed = line.trim();
    let (cmd, rest) = split_first_ws(trimmed);
    let rest_off = base + lead + (trimmed.len() - rest.len());
    let upper = cmd.to_ascii_uppercase();
    let Some(&kw) = KEYWORDS.iter().find(|k| **k == upper) else {
        let hint = suggest(cmd).map(|k| format!("did you mean {k}? ")).unwrap_or_default();
        let shown: String = cmd.chars().take(60).collect();
        return Err(PErr {
            msg: format!(
                "unknown instruction: {shown} ({hint}expected one of {})",
                KEYWORDS.join(", ")
            ),
            at: Some(base + lead),
        });
    };
    let (args_str, raw_flags) = extract_flags(rest);
    let raw_flags: Vec<(String, usize)> = raw_flags.into_iter().map(|(w, o)| (w, o + rest_off)).collect();
    let l = Line {
        kw,
        args: args_str.trim(),
        args_off: rest_off + (rest.len() - args_str.len()),
        args_str,
        flags: Flags::check(kw, &raw_flags, locate)?,
        escape,
        locate,
    };
    let need_one = |what: &str| -> PResult<String> {
        if l.args.is_empty() {
            perr(format!("{kw} requires exactly one argument (expected {kw} {what})"))
        } else {
            Ok(l.args.to_string())
        }
    };
    Ok(match kw {
        "FROM" => from(&l)?,
        "RUN" => Command::Run(RunCommand {
            cmd: shell_or_exec(l.args)?,
            mounts: l.flags.multi("mount"),
            network: l.flags.string("network"),
            security: l.flags.string("security"),
        }),
        "CMD" => Command::Cmd(shell_or_exec(l.args)?),
        "ENTRYPOINT" => Command::Entrypoint(shell_or_exec(l.args)?),
        "SHELL" => shell(l.args)?,
        "LABEL" => Command::Label(parse_name_val(l.args, "LABEL", escape)?),
        "ENV" => Command::Env(parse_name_val(l.args, "ENV", escape)?),
        "MAINTAINER" => Command::Maintainer(need_one("<name>")?),
        "USER" => Command::User(need_one("<user>[:<group>]")?),
        "WORKDIR" => Command::Workdir(need_one("<path>")?),
        "STOPSIGNAL" => Command::Stopsignal(need_one("<signal>")?),
        "EXPOSE" => {
            let w = split_ws_words(l.args);
            if w.is_empty() {
                return perr("EXPOSE requires at least one argument (expected EXPOSE <port>[/<protocol>] ...)");
            }
            Command::Expose(w)
        }
        "VOLUME" => volume(l.args)?,
        "ADD" | "COPY" => copy(&l)?,
        "ARG" => arg(&l)?,
        "ONBUILD" => onbuild(&l, nested)?,
        "HEALTHCHECK" => healthcheck(&l)?,
        _ => unreachable!("keyword checked against KEYWORDS"),
    })
}

fn from(l: &Line) -> PResult<Command> {
    let words = split_ws_words(l.args);
    let name = match words.len() {
        1 => None,
        3 if words[1].eq_ignore_ascii_case("as") => {
            let n = words[2].to_ascii_lowercase();
            let mut cs = n.chars();
            let ok = cs.next().is_some_and(|c| c.is_ascii_lowercase())
                && cs.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return perr(format!(
                    "invalid name for build stage: {:?}, name can't start with a number or contain symbols (expected a name matching [a-z][a-z0-9-_.]*)",
                    words[2]
                ));
            }
            Some(n)
        }
        _ => {
            return perr(
                "FROM requires either one or three arguments (expected FROM [--platform=<platform>] <image> [AS <name>])",
            );
        }
    };
    Ok(Command::From(FromCommand {
        image: words[0].clone(),
        name,
        platform: l.flags.string("platform"),
    }))
}

fn shell(args: &str) -> PResult<Command> {
    match parse_maybe_json(args)? {
        MaybeJson::Json(v) if v.is_empty() => {
            perr("SHELL requires at least one argument (expected SHELL [\"executable\", \"parameters\"])")
        }
        MaybeJson::Json(v) => Ok(Command::Shell(v)),
        MaybeJson::Text(_) => {
            perr("SHELL requires the arguments to be in JSON form (expected SHELL [\"executable\", \"parameters\"])")
        }
    }
}

fn volume(args: &str) -> PResult<Command> {
    let (w, _) = json_or_words(args)?;
    if w.is_empty() {
        return perr("VOLUME requires at least one argument (expected VOLUME <path> ... or VOLUME [\"<path>\", ...])");
    }
    if w.iter().any(|v| v.trim().is_empty()) {
        return perr("VOLUME specified can not be an empty string");
    }
    Ok(Command::Volume(w.into_iter().map(|v| v.trim().to_string()).collect()))
}

fn copy(l: &Line) -> PResult<Command> {
    let kw = l.kw;
    let (mut w, _) = json_or_words(l.args)?;
    if w.len() < 2 {
        return perr(format!(
            "{kw} requires at least two arguments, but only {} provided. Destination could not be determined (expected {kw} <src>... <dest>)",
            if w.is_empty() { "none was" } else { "one was" }
        ));
    }
    let dest = w.pop().unwrap_or_default();
    if parse_heredoc_word(&dest).is_some() {
        return perr(format!("{kw} cannot accept a heredoc as a destination"));
    }
    let f = &l.flags;
    let c = CopyCommand {
        srcs: w,
        dest,
        chown: f.string("chown"),
        chmod: f.string("chmod"),
        link: f.bool("link"),
        exclude: f.multi("exclude"),
        from: f.string("from"),
        parents: f.bool("parents"),
        checksum: f.string("checksum"),
        keep_git_dir: f.bool("keep-git-dir"),
        unpack: f.string("unpack"),
    };
    Ok(if kw == "ADD" { Command::Add(c) } else { Command::Copy(c) })
}

fn arg(l: &Line) -> PResult<Command> {
    let words = parse_words(l.args, l.escape);
    if words.is_empty() {
        return perr("ARG requires at least one argument (expected ARG <name>[=<default>] ...)");
    }
    let mut out = Vec::new();
    for w in words {
        match w.split_once('=') {
            Some(("", _)) => return perr("ARG names can not be blank"),
            Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
            None => out.push((w, None)),
        }
    }
    Ok(Command::Arg(out))
}

fn onbuild(l: &Line, nested: bool) -> PResult<Command> {
    if l.args.is_empty() {
        return perr("ONBUILD requires at least one argument (expected ONBUILD <instruction>)");
    }
    if nested {
        return perr("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed");
    }
    let (inner_kw, _) = split_first_ws(l.args);
    match inner_kw.to_ascii_uppercase().as_str() {
        "ONBUILD" => return perr("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        k @ ("MAINTAINER" | "FROM") => return perr(format!("{k} isn't allowed as an ONBUILD trigger")),
        _ => {}
    }
    let trigger_offset = l.args_off + (l.args_str.len() - l.args_str.trim_start().len());
    let command = parse_line(l.args, trigger_offset, l.escape, true, l.locate)?;
    // The end line and heredocs are filled in by the caller.
    Ok(Command::Onbuild(Box::new(Instruction {
        loc: (l.locate)(trigger_offset),
        end_line: 0,
        original: l.args.to_string(),
        command,
        heredocs: Vec::new(),
    })))
}

fn healthcheck(l: &Line) -> PResult<Command> {
    let args = l.args;
    if args.is_empty() {
        return perr(
            "HEALTHCHECK requires at least one argument (expected HEALTHCHECK [options] CMD <command> or HEALTHCHECK NONE)",
        );
    }
    let sep = args.find(char::is_whitespace).unwrap_or(args.len());
    let typ = args[..sep].to_ascii_uppercase();
    let cmd_text = args[sep..].trim_start();
    match typ.as_str() {
        "NONE" if !cmd_text.is_empty() => perr("HEALTHCHECK NONE takes no arguments"),
        "NONE" => Ok(Command::Healthcheck(None)),
        "CMD" => {
            let test = shell_or_exec(cmd_text)?;
            let empty = match &test {
                ShellOrExec::Shell(s) => s.is_empty(),
                ShellOrExec::Exec(v) => v.is_empty(),
            };
            if empty {
                return perr("Missing command after HEALTHCHECK CMD (expected HEALTHCHECK CMD <command>)");
            }
            let f = &l.flags;
            let retries = f.retries()?;
            Ok(Command::Healthcheck(Some(HealthcheckSpec {
                test,
                interval: f.duration("interval")?,
                timeout: f.duration("timeout")?,
                start_period: f.duration("start-period")?,
                start_interval: f.duration("start-interval")?,
                retries,
            })))
        }
        other => perr(format!("Unknown type {other:?} in HEALTHCHECK (try CMD)")),
    }
}

/// A keyword close to a misspelt one (`RUNN` → `RUN`, `CPOY` → `COPY`).
fn suggest(word: &str) -> Option<&'static str> {
    let w = word.to_ascii_uppercase();
    let sorted = |s: &str| {
        let mut v: Vec<char> = s.chars().collect();
        v.sort_unstable();
        v
    };
    KEYWORDS.iter().copied().find(|k| {
        let d = edit_distance(k, &w);
        w.len() >= 3 && (d <= 1 || (d <= 2 && (w.len() >= 6 || sorted(k) == sorted(&w))))
    })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if b.len() > 64 {
        return usize::MAX;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}
