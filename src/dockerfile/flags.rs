//! Instruction flags (BuildKit's `BFlags`): which instruction takes which flag and of what
//! kind, the checks every flag gets where it is written (unknown flag, flag of another
//! instruction, duplicate, missing or non-boolean value, a literal value that cannot be
//! right), and typed access for the instruction layer. Nothing after the parser looks at a
//! flag's name.

use super::args::{PErr, PResult};
use super::instructions::{FlagValue, NetworkMode, SecurityMode};
use super::{Chmod, Loc, parse_go_duration};
use std::time::Duration;

#[derive(Clone, Copy, PartialEq)]
enum FlagKind {
    Bool,
    Str,
    Multi,
}

fn allowed_flags(keyword: &str) -> &'static [(&'static str, FlagKind)] {
    use FlagKind::*;
    match keyword {
        "FROM" => &[("platform", Str)],
        "RUN" => &[("mount", Multi), ("network", Str), ("security", Str)],
        "COPY" => &[
            ("from", Str),
            ("chown", Str),
            ("chmod", Str),
            ("link", Bool),
            ("parents", Bool),
            ("exclude", Multi),
        ],
        "ADD" => &[
            ("chown", Str),
            ("chmod", Str),
            ("link", Bool),
            ("keep-git-dir", Bool),
            ("checksum", Str),
            ("exclude", Multi),
            ("unpack", Bool),
        ],
        "HEALTHCHECK" => &[
            ("interval", Str),
            ("timeout", Str),
            ("start-period", Str),
            ("start-interval", Str),
            ("retries", Str),
        ],
        _ => &[],
    }
}

fn owners_of(flag: &str) -> Vec<&'static str> {
    ["FROM", "RUN", "COPY", "ADD", "HEALTHCHECK"]
        .into_iter()
        .filter(|k| allowed_flags(k).iter().any(|(n, _)| *n == flag))
        .collect()
}

fn accepts(keyword: &str) -> String {
    let a = allowed_flags(keyword);
    if a.is_empty() {
        format!("{keyword} takes no flags")
    } else {
        format!(
            "{keyword} accepts {}",
            a.iter().map(|(n, _)| format!("--{n}")).collect::<Vec<_>>().join(", ")
        )
    }
}

/// One flag as written: name, value (None for a bare `--name`), byte offset in the line.
struct RawFlag {
    name: String,
    value: Option<String>,
    off: usize,
}

/// The checked flags of one instruction, with typed accessors.
pub(super) struct Flags<'a> {
    list: Vec<RawFlag>,
    locate: &'a dyn Fn(usize) -> Loc,
}

impl<'a> Flags<'a> {
    /// Checks the `--flag` words of a `keyword` instruction (with their byte offsets in the
    /// logical line); `locate` maps an offset to its position in the file.
    pub fn check(keyword: &str, raw: &[(String, usize)], locate: &'a dyn Fn(usize) -> Loc) -> PResult<Flags<'a>> {
        let allowed = allowed_flags(keyword);
        let mut list: Vec<RawFlag> = Vec::new();
        for (word, off) in raw {
            let err = |msg: String| PErr { msg, at: Some(*off) };
            let body = word.strip_prefix("--").unwrap_or(word);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            let Some(&(_, kind)) = allowed.iter().find(|(n, _)| *n == name) else {
                let owners = owners_of(&name);
                let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
                let hint = super::suggest::hint(&name, &names);
                return Err(err(if owners.is_empty() && !hint.is_empty() {
                    format!("unknown flag: --{name}{hint}")
                } else if owners.is_empty() {
                    format!("unknown flag: --{name} ({})", accepts(keyword))
                } else {
                    format!(
                        "flag --{name} is not valid for {keyword}, only for {} ({})",
                        owners.join(", "),
                        accepts(keyword)
                    )
                }));
            };
            if kind != FlagKind::Multi && list.iter().any(|f| f.name == name) {
                return Err(err(format!("duplicate flag specified: --{name}")));
            }
            check_kind(kind, &name, value.as_deref()).map_err(err)?;
            list.push(RawFlag { name, value, off: *off });
        }
        for f in &list {
            validate_value(keyword, &f.name, f.value.as_deref().unwrap_or(""))
                .map_err(|msg| PErr { msg, at: Some(f.off) })?;
        }
        Ok(Flags { list, locate })
    }

    fn value(&self, f: &RawFlag) -> FlagValue {
        FlagValue {
            raw: f.value.clone().unwrap_or_default(),
            loc: (self.locate)(f.off),
        }
    }

    /// A string flag.
    pub fn string(&self, name: &str) -> Option<FlagValue> {
        self.list.iter().find(|f| f.name == name).map(|f| self.value(f))
    }

    /// Every value of a repeatable flag, in order.
    pub fn multi(&self, name: &str) -> Vec<FlagValue> {
        self.list
            .iter()
            .filter(|f| f.name == name)
            .map(|f| self.value(f))
            .collect()
    }

    /// A boolean flag: `--link`, `--link=true` (any case) → true; absent, `--link=false` → false.
    pub fn bool(&self, name: &str) -> bool {
        self.list
            .iter()
            .find(|f| f.name == name)
            .is_some_and(|f| f.value.as_deref().is_none_or(|v| v.eq_ignore_ascii_case("true")))
    }

    /// A duration flag of HEALTHCHECK: absent, empty or 0 → None; under 1ms is refused.
    pub fn duration(&self, name: &str) -> PResult<Option<Duration>> {
        let Some(f) = self.list.iter().find(|f| f.name == name) else {
            return Ok(None);
        };
        let v = f.value.as_deref().unwrap_or("");
        if v.is_empty() {
            return Ok(None);
        }
        let at = Some(f.off);
        let d = parse_go_duration(v).map_err(|e| PErr {
            msg: format!("--{name}: {e}"),
            at,
        })?;
        if d.is_zero() {
            return Ok(None);
        }
        if d < Duration::from_millis(1) {
            return Err(PErr {
                msg: format!("Interval {name:?} cannot be less than 1ms"),
                at,
            });
        }
        Ok(Some(d))
    }

    /// HEALTHCHECK `--retries`: absent, empty or 0 → None; negative is refused.
    pub fn retries(&self) -> PResult<Option<u32>> {
        let Some(f) = self.list.iter().find(|f| f.name == "retries") else {
            return Ok(None);
        };
        let v = f.value.as_deref().unwrap_or("");
        if v.is_empty() {
            return Ok(None);
        }
        let at = Some(f.off);
        let r: i64 = v.parse().map_err(|_| PErr {
            msg: format!("--retries: invalid number {v:?} (expected a non-negative integer)"),
            at,
        })?;
        if r < 0 {
            return Err(PErr {
                msg: format!("--retries cannot be negative ({r})"),
                at,
            });
        }
        Ok(u32::try_from(r).ok().filter(|&r| r > 0))
    }
}

/// A value of the right kind: booleans are `true`/`false` or bare, others need a value.
fn check_kind(kind: FlagKind, name: &str, value: Option<&str>) -> Result<(), String> {
    match kind {
        FlagKind::Bool => match value.map(|v| v.to_ascii_lowercase()) {
            None => Ok(()),
            Some(v) if v == "true" || v == "false" => Ok(()),
            Some(v) if v.is_empty() => Err(format!(
                "missing a value on flag: --{name} (expected --{name} or --{name}=true|false)"
            )),
            Some(v) => Err(format!("expecting boolean value for flag --{name}, not: {v}")),
        },
        FlagKind::Str | FlagKind::Multi => match value {
            None => Err(format!("missing a value on flag: --{name} (expected --{name}=<value>)")),
            Some(_) => Ok(()),
        },
    }
}

/// Values that are wrong as written. A value with `$` is checked again by the executor after
/// expansion, with the same functions.
fn validate_value(keyword: &str, name: &str, v: &str) -> Result<(), String> {
    let literal = !v.contains('$');
    match (keyword, name) {
        ("COPY" | "ADD", "chmod") if literal => Chmod::parse(v).map(drop).map_err(|e| e.to_string()),
        ("COPY" | "ADD", "chown") if v.is_empty() => {
            Err("--chown needs a value (expected --chown=<user>[:<group>])".into())
        }
        ("COPY", "from") if v.is_empty() => {
            Err("--from needs a value (expected --from=<stage name|index|image>)".into())
        }
        ("RUN", "network") if literal => NetworkMode::parse(v).map(drop),
        ("RUN", "security") if literal => SecurityMode::parse(v).map(drop),
        ("RUN", "mount") if literal => super::mount::parse_mount(v).map(drop).map_err(|e| e.to_string()),
        ("FROM", "platform") if v.is_empty() => {
            Err("--platform needs a value (expected --platform=<os>/<arch>)".into())
        }
        _ => Ok(()),
    }
}
