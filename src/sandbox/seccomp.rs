//! seccomp: Docker's profile format (`seccomp/default.json` is compiled into the binary),
//! evaluated for the native architecture, the kernel version and the step's capabilities, and
//! compiled with libseccomp into a BPF program. The program is exported as bytes before the
//! sandbox forks (libseccomp's context is `!Send`) and installed raw with `seccomp(2)` without
//! setting no_new_privs ([`crate::sys::Syscall::seccomp_filter`]).

use anyhow::{Context, Result, bail};
use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::{Read, Seek};

/// The default profile (Docker format), compiled in.
pub const DEFAULT_PROFILE: &str = include_str!("../../seccomp/default.json");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: String,
    #[serde(default)]
    pub default_errno_ret: Option<i32>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub arch_map: Vec<ArchMap>,
    #[serde(default)]
    pub syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: String,
    #[serde(default)]
    pub sub_architectures: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub name: Option<String>,
    pub action: String,
    #[serde(default)]
    pub errno_ret: Option<i32>,
    #[serde(default)]
    pub args: Option<Vec<Arg>>,
    #[serde(default)]
    pub includes: Option<Filter>,
    #[serde(default)]
    pub excludes: Option<Filter>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(default)]
    pub arches: Vec<String>,
    #[serde(default)]
    pub caps: Vec<String>,
    #[serde(default)]
    pub min_kernel: Option<String>,
}

fn native_scmp_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "SCMP_ARCH_X86_64",
        "aarch64" => "SCMP_ARCH_AARCH64",
        "x86" => "SCMP_ARCH_X86",
        "arm" => "SCMP_ARCH_ARM",
        "powerpc64" => "SCMP_ARCH_PPC64LE",
        "s390x" => "SCMP_ARCH_S390X",
        "riscv64" => "SCMP_ARCH_RISCV64",
        _ => "",
    }
}

/// The running kernel's (major, minor).
pub fn kernel_version() -> (u32, u32) {
    let r = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().to_string())
        .unwrap_or_default();
    parse_version(&r).unwrap_or((0, 0))
}

fn parse_version(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    Some((
        it.next()?.parse().ok()?,
        it.next().and_then(|m| m.parse().ok()).unwrap_or(0),
    ))
}

fn has_cap(caps: &[String], c: &str) -> bool {
    caps.iter().any(|x| x.eq_ignore_ascii_case(c))
}

/// Whether a rule applies (Docker's semantics: every `includes` condition holds, no
/// `excludes` condition holds).
fn applies(rule: &Rule, arch: &str, caps: &[String], kernel: (u32, u32)) -> bool {
    if let Some(inc) = &rule.includes {
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == arch) {
            return false;
        }
        if !inc.caps.iter().all(|c| has_cap(caps, c)) {
            return false;
        }
        if let Some(k) = inc.min_kernel.as_deref().and_then(parse_version)
            && kernel < k
        {
            return false;
        }
    }
    if let Some(exc) = &rule.excludes {
        if exc.arches.iter().any(|a| a == arch) {
            return false;
        }
        if exc.caps.iter().any(|c| has_cap(caps, c)) {
            return false;
        }
        if let Some(k) = exc.min_kernel.as_deref().and_then(parse_version)
            && kernel >= k
        {
            return false;
        }
    }
    true
}

fn action(name: &str, errno: Option<i32>, default_errno: i32) -> Result<ScmpAction> {
    match name {
        "SCMP_ACT_ERRNO" => Ok(ScmpAction::Errno(errno.unwrap_or(default_errno))),
        "SCMP_ACT_TRACE" => Ok(ScmpAction::Trace(errno.unwrap_or(0) as u16)),
        "SCMP_ACT_NOTIFY" => bail!("seccomp action SCMP_ACT_NOTIFY is not supported by kiln"),
        other => ScmpAction::from_str(other, errno).with_context(|| format!("unknown seccomp action {other}")),
    }
}

fn compare(a: &Arg) -> Result<ScmpArgCompare> {
    let op = match a.op.as_str() {
        "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
        "SCMP_CMP_LT" => ScmpCompareOp::Less,
        "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
        "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
        "SCMP_CMP_GT" => ScmpCompareOp::Greater,
        "SCMP_CMP_MASKED_EQ" => {
            return Ok(ScmpArgCompare::new(
                a.index,
                ScmpCompareOp::MaskedEqual(a.value),
                a.value_two,
            ));
        }
        other => bail!("unknown seccomp comparison {other}"),
    };
    Ok(ScmpArgCompare::new(a.index, op, a.value))
}

/// Parses a profile (Docker's JSON format).
pub fn parse_profile(json: &str) -> Result<Profile> {
    serde_json::from_str(json).context("invalid seccomp profile (expected Docker's JSON format)")
}

/// Compiles `profile` for the native architecture and the given effective capabilities
/// (names like `CAP_CHOWN`) into a classic BPF program (raw `sock_filter` bytes).
pub fn compile(profile: &Profile, caps: &[String]) -> Result<Vec<u8>> {
    let default_errno = profile.default_errno_ret.unwrap_or(libc::EPERM);
    let default = action(&profile.default_action, profile.default_errno_ret, libc::EPERM)?;
    let mut ctx = ScmpFilterContext::new(default).context("cannot create a seccomp filter")?;
    let native = native_scmp_arch();
    let mut arches: Vec<String> = Vec::new();
    if let Some(m) = profile.arch_map.iter().find(|m| m.architecture == native) {
        arches.extend(m.sub_architectures.iter().cloned());
    } else {
        arches.extend(profile.architectures.iter().filter(|a| *a != native).cloned());
    }
    for a in arches {
        if let Ok(arch) = a.parse::<ScmpArch>() {
            let _ = ctx.add_arch(arch); // unknown to this libseccomp: skip, as Docker does
        }
    }
    let arch = crate::image::host_arch();
    let kernel = kernel_version();
    for rule in &profile.syscalls {
        if !applies(rule, arch, caps, kernel) {
            continue;
        }
        let act = action(&rule.action, rule.errno_ret, default_errno)?;
        if act == default {
            continue; // libseccomp refuses rules equal to the default action
        }
        let args: Vec<ScmpArgCompare> = rule.args.iter().flatten().map(compare).collect::<Result<_>>()?;
        // Conditions on the same argument cannot share a rule: split them (OR), like runc.
        let mut by_index: BTreeMap<u32, usize> = BTreeMap::new();
        for a in rule.args.iter().flatten() {
            *by_index.entry(a.index).or_default() += 1;
        }
        let split = by_index.values().any(|n| *n > 1);
        let names = rule.names.iter().chain(rule.name.iter());
        for name in names {
            let Ok(sc) = ScmpSyscall::from_name(name) else { continue }; // unknown here: skip
            if args.is_empty() {
                ctx.add_rule(act, sc)
                    .with_context(|| format!("seccomp rule for {name} failed"))?;
            } else if split {
                for a in &args {
                    ctx.add_rule_conditional(act, sc, std::slice::from_ref(a))
                        .with_context(|| format!("seccomp rule for {name} failed"))?;
                }
            } else {
                ctx.add_rule_conditional(act, sc, &args)
                    .with_context(|| format!("seccomp rule for {name} failed"))?;
            }
        }
    }
    ctx.set_ctl_nnp(false)?;
    export(&ctx)
}

/// The BPF program of `ctx` (raw `sock_filter`s), through a memfd (libseccomp 2.5 has no
/// export to memory).
pub(crate) fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>> {
    let fd = nix::sys::memfd::memfd_create(c"kiln-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .context("memfd_create failed")?;
    ctx.export_bpf(&fd).context("cannot export the seccomp filter")?;
    let mut f = std::fs::File::from(fd);
    f.rewind()?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    if out.is_empty() || out.len() % std::mem::size_of::<libc::sock_filter>() != 0 {
        bail!("libseccomp exported a malformed filter ({} bytes)", out.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_compiles_and_is_docker_like() {
        let p = parse_profile(DEFAULT_PROFILE).unwrap();
        assert_eq!(p.default_action, "SCMP_ACT_ERRNO");
        assert_eq!(p.default_errno_ret, Some(1));
        let caps: Vec<String> = super::super::caps::DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
        let bpf = compile(&p, &caps).unwrap();
        assert!(bpf.len() > 100 * 8);
        // keyctl and clone3 must not be in any allow rule.
        for r in &p.syscalls {
            if r.action == "SCMP_ACT_ALLOW" && r.includes.as_ref().is_none_or(|i| i.caps.is_empty()) {
                assert!(
                    !r.names
                        .iter()
                        .any(|n| n == "keyctl" || n == "clone3" || n == "unshare" || n == "mount")
                );
            }
        }
    }

    #[test]
    fn includes_and_excludes() {
        let p = parse_profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["a"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}},
            {"names":["b"],"action":"SCMP_ACT_ALLOW","excludes":{"caps":["CAP_SYS_ADMIN"]}},
            {"names":["c"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["s390x"]}},
            {"names":["d"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"4.8"}},
            {"names":["e"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"99.0"}}]}"#,
        )
        .unwrap();
        let caps = vec!["CAP_CHOWN".to_string()];
        let got: Vec<bool> = p.syscalls.iter().map(|r| applies(r, "amd64", &caps, (6, 18))).collect();
        assert_eq!(got, vec![false, true, false, true, false]);
        assert_eq!(parse_version("6.18.44-fc"), Some((6, 18)));
    }
}
