//! `RUN --mount=type=...,target=...` specs (BuildKit's CSV syntax).
//!
//! Field values may reference variables; BuildKit expands them with the stage's ENV/ARG scope
//! before use, so the executor should expand the raw flag value (`expand::process_word`) and then
//! call [`parse_mount`]. The parser validates specs without `$` at parse time.

use anyhow::{Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// One `--mount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunMount {
    pub kind: MountKind,
    /// Mount point in the container. Defaults: secret → `/run/secrets/<id>`, ssh →
    /// `/run/buildkit/ssh_agent.0`; required for the other types.
    pub target: String,
    /// Path inside `from` (or the build context) for bind/cache.
    pub source: Option<String>,
    /// Stage name/index or image for bind/cache sources.
    pub from: Option<String>,
    pub readonly: bool,
    pub id: Option<String>,
    pub sharing: Sharing,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub required: bool,
    /// tmpfs size in bytes.
    pub size: Option<u64>,
    /// secret: also expose as this environment variable.
    pub env: Option<String>,
}

/// Split a CSV record (Go encoding/csv rules: `"` quotes, `""` inside quotes).
fn split_csv(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut in_quotes = false;
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    in_quotes = false;
                }
            } else {
                cur.push(c);
            }
            continue;
        }
        match c {
            ',' => {
                out.push(std::mem::take(&mut cur));
                at_field_start = true;
                continue;
            }
            '"' if at_field_start => in_quotes = true,
            c => cur.push(c),
        }
        at_field_start = false;
    }
    if in_quotes {
        bail!("unterminated quote in mount spec {s:?}");
    }
    out.push(cur);
    Ok(out)
}

fn parse_bool(key: &str, v: Option<&str>) -> Result<bool> {
    match v.map(|v| v.to_ascii_lowercase()) {
        None => Ok(true),
        Some(v) if matches!(v.as_str(), "1" | "t" | "true") => Ok(true),
        Some(v) if matches!(v.as_str(), "0" | "f" | "false") => Ok(false),
        Some(v) => bail!("invalid value {v:?} for {key} (expected true or false)"),
    }
}

fn parse_size(v: &str) -> Result<u64> {
    let lower = v.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let n: f64 = digits.parse().map_err(|_| anyhow::anyhow!("invalid size {v:?}"))?;
    let mult: f64 = match unit {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => bail!("invalid size {v:?} (expected bytes or a k/m/g suffix)"),
    };
    Ok((n * mult) as u64)
}

/// Parse one `--mount` value.
pub fn parse_mount(spec: &str) -> Result<RunMount> {
    parse_fields(&split_csv(spec)?, spec)
}

/// Parse one `--mount` value as written, expanding each field's value on its own (after the
/// CSV split, as BuildKit does, so a value cannot add fields). `from=` is never expanded.
pub fn parse_mount_expanding(spec: &str, expand: &dyn Fn(&str) -> Result<String>) -> Result<RunMount> {
    let mut fields = Vec::new();
    for f in split_csv(spec)? {
        match f.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("from") => {
                if v.find('$').is_some_and(|i| i != v.len() - 1) {
                    bail!("'from' doesn't support variable expansion, define alias stage instead");
                }
                fields.push(f);
            }
            Some((k, v)) => fields.push(format!("{k}={}", expand(v)?)),
            None => fields.push(f),
        }
    }
    parse_fields(&fields, spec)
}

/// The keys a `--mount` accepts (for "did you mean" hints).
const MOUNT_KEYS: &[&str] = &[
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

fn parse_fields(fields: &[String], spec: &str) -> Result<RunMount> {
    let mut kind = MountKind::Bind;
    // type first, since defaults depend on it
    for f in fields {
        let (k, v) = f
            .split_once('=')
            .map(|(k, v)| (k.trim(), Some(v)))
            .unwrap_or((f.trim(), None));
        if k.eq_ignore_ascii_case("type") {
            kind = match v.unwrap_or("").to_ascii_lowercase().as_str() {
                "bind" => MountKind::Bind,
                "cache" => MountKind::Cache,
                "tmpfs" => MountKind::Tmpfs,
                "secret" => MountKind::Secret,
                "ssh" => MountKind::Ssh,
                other => {
                    let types = ["bind", "cache", "tmpfs", "secret", "ssh"];
                    match super::suggest::search(other, &types, true) {
                        Some(m) => bail!("unsupported mount type {other:?} (did you mean {m}?)"),
                        None => bail!("unsupported mount type {other:?} (expected bind, cache, tmpfs, secret or ssh)"),
                    }
                }
            };
        }
    }
    let mut m = RunMount {
        kind,
        target: String::new(),
        source: None,
        from: None,
        readonly: kind == MountKind::Bind,
        id: None,
        sharing: Sharing::Shared,
        mode: None,
        uid: None,
        gid: None,
        required: false,
        size: None,
        env: None,
    };
    for f in fields {
        if f.trim().is_empty() {
            continue;
        }
        let (k, v) = f
            .split_once('=')
            .map(|(k, v)| (k.trim(), Some(v)))
            .unwrap_or((f.trim(), None));
        let key = k.to_ascii_lowercase();
        let val = || -> Result<String> {
            match v {
                Some(v) => Ok(v.to_string()),
                None => bail!("mount option {key:?} needs a value ({key}=...)"),
            }
        };
        match key.as_str() {
            "type" => {}
            "target" | "dst" | "destination" => m.target = val()?,
            "source" | "src" => m.source = Some(val()?),
            "from" => m.from = Some(val()?),
            "readonly" | "ro" => m.readonly = parse_bool(&key, v)?,
            "readwrite" | "rw" => m.readonly = !parse_bool(&key, v)?,
            "id" => m.id = Some(val()?),
            "sharing" => {
                m.sharing = match val()?.to_ascii_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    other => bail!("unsupported sharing value {other:?} (expected shared, private or locked)"),
                }
            }
            "mode" => {
                let s = val()?;
                m.mode = Some(
                    u32::from_str_radix(&s, 8).map_err(|_| anyhow::anyhow!("invalid mode {s:?} (expected octal)"))?,
                )
            }
            "uid" => {
                let s = val()?;
                m.uid = Some(s.parse().map_err(|_| anyhow::anyhow!("invalid uid {s:?}"))?)
            }
            "gid" => {
                let s = val()?;
                m.gid = Some(s.parse().map_err(|_| anyhow::anyhow!("invalid gid {s:?}"))?)
            }
            "required" => m.required = parse_bool(&key, v)?,
            "size" => m.size = Some(parse_size(&val()?)?),
            "env" => m.env = Some(val()?),
            _ => bail!(
                "unexpected key '{k}' in '{f}'{} (mount spec {spec:?})",
                super::suggest::hint(&key, MOUNT_KEYS)
            ),
        }
    }
    if m.target.is_empty() {
        match kind {
            MountKind::Secret => {
                let id = m.secret_id();
                if id.is_empty() && m.env.is_none() {
                    bail!("secret mount needs an id or a target (--mount=type=secret,id=mysecret)");
                }
                if !id.is_empty() && m.env.is_none() {
                    let base = id.rsplit('/').next().unwrap_or(&id);
                    m.target = format!("/run/secrets/{base}");
                }
            }
            MountKind::Ssh => m.target = "/run/buildkit/ssh_agent.0".to_string(),
            _ => bail!("mount {spec:?} has no target (expected target=/path)"),
        }
    }
    if m.from.is_some() && !matches!(kind, MountKind::Bind | MountKind::Cache) {
        bail!("from= is only valid for bind and cache mounts");
    }
    Ok(m)
}

impl RunMount {
    /// A secret's id as BuildKit resolves it: `source=`, else `id=`, else the target's base name.
    pub fn secret_id(&self) -> String {
        self.source
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| self.id.clone().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| {
                let t = self.target.trim_end_matches('/');
                t.rsplit('/').next().unwrap_or("").to_string()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts() {
        let m = parse_mount("type=cache,target=/root/.cache,sharing=locked,id=pip").unwrap();
        assert_eq!(m.kind, MountKind::Cache);
        assert_eq!(m.target, "/root/.cache");
        assert_eq!(m.sharing, Sharing::Locked);
        assert!(!m.readonly);
        let m = parse_mount("target=/src,from=build,source=/out").unwrap();
        assert_eq!(m.kind, MountKind::Bind);
        assert!(m.readonly);
        assert_eq!(m.from.as_deref(), Some("build"));
        let m = parse_mount("type=bind,target=/x,rw").unwrap();
        assert!(!m.readonly);
        let m = parse_mount("type=secret,id=tok").unwrap();
        assert_eq!(m.target, "/run/secrets/tok");
        let m = parse_mount("type=tmpfs,dst=/tmp,size=64m").unwrap();
        assert_eq!(m.size, Some(64 << 20));
        let m = parse_mount("type=cache,target=/c,mode=0700,uid=1000,gid=1000").unwrap();
        assert_eq!((m.mode, m.uid, m.gid), (Some(0o700), Some(1000), Some(1000)));
        let m = parse_mount("\"target=/a,b\",type=bind").unwrap();
        assert_eq!(m.target, "/a,b");
        assert!(parse_mount("type=nfs,target=/x").is_err());
        assert!(parse_mount("type=cache").is_err());
        assert!(parse_mount("type=cache,target=/x,bogus=1").is_err());
        assert!(parse_mount("type=tmpfs,target=/x,from=a").is_err());
        assert!(parse_mount("type=cache,target=/x,sharing=weird").is_err());
    }
}
