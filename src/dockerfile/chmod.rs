//! The `--chmod` grammar of COPY and ADD, shared by the parser (which validates literal
//! values) and the copier (which applies the expanded value to every copied entry).
//!
//! It is BuildKit's: a value made only of digits is octal and must be at most `07777`
//! (`strconv.ParseUint(s, 8, 32)`, any number of leading zeros); anything else is a symbolic
//! mode with the grammar and meaning of BSD's `setmode(3)` (BuildKit uses
//! `tonistiigi/dchapes-mode`, a Go port of it), evaluated with a umask of 0:
//!
//! ```text
//! mode   := clause (',' clause)*
//! clause := who* action+
//! who    := 'u' | 'g' | 'o' | 'a'
//! action := op (perm* | copy perm*)      op := '+' | '-' | '='
//! perm   := 'r' | 'w' | 'x' | 'X' | 's' | 't'
//! copy   := 'u' | 'g' | 'o'              (the current bits of that class)
//! ```
//!
//! So `u+x`, `a-w`, `go=u-w`, `g=u`, `=rw,+X` and `u=` are valid; `u`, `u+q`, `z+x` and a
//! trailing `,` are not. As in BSD: no `who` means everyone; `X` counts only after `+` (and
//! then when the entry is a directory or had an execute bit before the change); `s` and `t`
//! are ignored for `o` alone; `=` leaves the sticky bit alone unless `t` is named.

use anyhow::{Result, anyhow};

const USER: u32 = 0o4700;
const GROUP: u32 = 0o2070;
const OTHER: u32 = 0o0007;
/// `a`: every permission bit but the sticky bit (BSD's `STANDARD_BITS`).
const ALL: u32 = 0o6777;
const STICKY: u32 = 0o1000;
const EXEC: u32 = 0o111;

/// A parsed `--chmod` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chmod {
    /// An octal mode (at most `0o7777`).
    Octal(u32),
    /// A symbolic mode, compiled to the steps that apply it in order.
    Symbolic(Vec<Step>),
}

/// One step of a symbolic mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Set these bits.
    Set(u32),
    /// Clear these bits.
    Clear(u32),
    /// `+X`: set these bits when the entry is a directory or had an execute bit.
    SetIfExec(u32),
    /// `u`, `g` or `o` after an operator: copy that class's current rwx bits (`from` is its
    /// shift: 6, 3 or 0) into the classes `to` (shifts), clearing first for `-`/`=`.
    Copy { from: u32, to: [bool; 3], op: char },
}

impl Chmod {
    /// Parses a `--chmod` value; the error names the value.
    pub fn parse(s: &str) -> Result<Chmod> {
        let bad = |why: &str| {
            anyhow!("invalid --chmod={s}: {why} (expected an octal mode like 0755 or a symbolic mode like u+x,go-w)")
        };
        if s.is_empty() {
            return Err(bad("empty value"));
        }
        if s.starts_with(|c: char| c.is_ascii_digit()) {
            // Like BuildKit: whatever starts with a digit must be an octal number up to 07777.
            return match u32::from_str_radix(s, 8) {
                Ok(m) if m <= 0o7777 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(Chmod::Octal(m)),
                // BuildKit's wording (dockerfile2llb/convert_copy.go).
                _ => Err(anyhow!(
                    "invalid --chmod={s}: invalid chmod parameter: '{s}'. it should be octal string and between 0 and 07777"
                )),
            };
        }
        parse_symbolic(s.as_bytes())
            .map(Chmod::Symbolic)
            .map_err(|why| bad(&why))
    }

    /// The new permission bits (07777) of an entry that had permission bits `mode`.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let mode = mode & 0o7777;
        match self {
            // A plain rwx mode keeps setuid/setgid/sticky of the source (BuildKit masks 0777).
            Chmod::Octal(v) if *v <= 0o777 => (mode & !0o777) | v,
            Chmod::Octal(v) => *v,
            Chmod::Symbolic(steps) => {
                let had_exec = is_dir || mode & EXEC != 0;
                let mut m = mode;
                for step in steps {
                    match *step {
                        Step::Set(b) => m |= b,
                        Step::Clear(b) => m &= !b,
                        Step::SetIfExec(b) if had_exec => m |= b,
                        Step::SetIfExec(_) => {}
                        Step::Copy { from, to, op } => {
                            let value = (m >> from) & 7;
                            for (i, shift) in [6u32, 3, 0].into_iter().enumerate() {
                                if !to[i] {
                                    continue;
                                }
                                if op != '+' {
                                    let clear = if op == '=' { 7 } else { value };
                                    m &= !(clear << shift);
                                }
                                if op != '-' {
                                    m |= value << shift;
                                }
                            }
                        }
                    }
                }
                m & 0o7777
            }
        }
    }
}

/// The symbolic grammar (BSD `setmode`, umask 0) compiled to steps.
fn parse_symbolic(s: &[u8]) -> std::result::Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let mut i = 0;
    // `=` with nothing after it still clears (`go=`); BSD remembers whether it did.
    let mut equal_done = false;
    loop {
        let mut who = 0u32;
        while let Some(&c) = s.get(i) {
            who |= match c {
                b'a' => ALL,
                b'u' => USER,
                b'g' => GROUP,
                b'o' => OTHER,
                _ => break,
            };
            i += 1;
        }
        loop {
            let op = match s.get(i) {
                Some(&c @ (b'+' | b'-' | b'=')) => c as char,
                Some(&c) => return Err(format!("unexpected {:?}", c as char)),
                None => return Err("missing an operator (+, - or =)".into()),
            };
            i += 1;
            if op == '=' {
                equal_done = false;
            }
            who &= !STICKY;
            let (mut perm, mut perm_x) = (0u32, 0u32);
            loop {
                let c = s.get(i).copied();
                match c {
                    Some(b'r') => perm |= 0o444,
                    Some(b'w') => perm |= 0o222,
                    Some(b'x') => perm |= EXEC,
                    Some(b'X') if op == '+' => perm_x = EXEC,
                    Some(b'X') => {}
                    Some(b's') if who == 0 || who & !OTHER != 0 => perm |= 0o6000,
                    Some(b't') if who == 0 || who & !OTHER != 0 => {
                        who |= STICKY;
                        perm |= STICKY;
                    }
                    Some(b's' | b't') => {}
                    Some(class @ (b'u' | b'g' | b'o')) => {
                        if perm != 0 {
                            push_op(&mut steps, op, who, perm);
                            perm = 0;
                        }
                        if op == '=' {
                            equal_done = true;
                        }
                        if perm_x != 0 {
                            steps.push(Step::SetIfExec(masked(who, perm_x)));
                            perm_x = 0;
                        }
                        steps.push(copy_step(class, who, op));
                    }
                    _ => {
                        if perm != 0 || (op == '=' && !equal_done) {
                            equal_done |= op == '=';
                            push_op(&mut steps, op, who, perm);
                        }
                        if perm_x != 0 {
                            steps.push(Step::SetIfExec(masked(who, perm_x)));
                        }
                        break;
                    }
                }
                i += 1;
            }
            match s.get(i) {
                None => return Ok(steps),
                Some(b',') => {
                    i += 1;
                    if i == s.len() {
                        return Err("a clause is missing after ','".into());
                    }
                    break;
                }
                Some(_) => {} // another operator of the same clause
            }
        }
    }
}

/// `who` restricts the bits; no `who` means all of them (umask 0).
fn masked(who: u32, bits: u32) -> u32 {
    if who == 0 { bits } else { who & bits }
}

fn push_op(steps: &mut Vec<Step>, op: char, who: u32, perm: u32) {
    match op {
        '=' => {
            steps.push(Step::Clear(if who == 0 { ALL } else { who }));
            steps.push(Step::Set(masked(who, perm)));
        }
        '+' => steps.push(Step::Set(masked(who, perm))),
        _ => steps.push(Step::Clear(masked(who, perm))),
    }
}

fn copy_step(class: u8, who: u32, op: char) -> Step {
    let from = match class {
        b'u' => 6,
        b'g' => 3,
        _ => 0,
    };
    let to = if who == 0 {
        [true; 3]
    } else {
        [who & 0o400 != 0, who & 0o040 != 0, who & 0o004 != 0]
    };
    Step::Copy { from, to, op }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(spec: &str, mode: u32, is_dir: bool) -> u32 {
        Chmod::parse(spec)
            .unwrap_or_else(|e| panic!("{spec}: {e}"))
            .apply(mode, is_dir)
    }

    #[test]
    fn octal() {
        assert_eq!(Chmod::parse("755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(Chmod::parse("0644").unwrap(), Chmod::Octal(0o644));
        assert_eq!(Chmod::parse("4755").unwrap(), Chmod::Octal(0o4755));
        assert_eq!(Chmod::parse("000755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(Chmod::parse("0").unwrap(), Chmod::Octal(0));
        for bad in ["8", "9", "64a", "77777", "017777", "7-7", "1+x"] {
            let e = Chmod::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        // A plain rwx mode keeps the special bits; a mode with special bits replaces them.
        assert_eq!(apply("755", 0o4700, false), 0o4755);
        assert_eq!(apply("0640", 0o777, false), 0o640);
        assert_eq!(apply("4755", 0o644, false), 0o4755);
        assert_eq!(apply("0700", 0o644, false), 0o700);
    }

    #[test]
    fn symbolic_grammar() {
        for ok in [
            "u+x",
            "a-w",
            "go=u-w",
            "g=u",
            "go=u",
            "=rw,+X",
            "u=",
            "go=",
            "+",
            "-",
            "=",
            "u+x,g-w",
            "u=rwx,go=rx",
            "o+r,g+w,a+t,g-s,u+og",
            "-Xu",
            "u+uo",
            "ug=rw",
            "a=rX,u+w",
            "u-x+w",
            "+t",
            "o+s",
        ] {
            assert!(Chmod::parse(ok).is_ok(), "{ok} is valid");
        }
        for bad in [
            "", "u", "g", "go", "z+x", "q+r", "u+q", ",", "u+x,", ",u+x", "u+x,,g+x", "u*x", " u+x",
        ] {
            let e = Chmod::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("--chmod={bad}")), "{bad:?}: {e}");
        }
    }

    /// setmode(3)'s results, as in BuildKit's mode package tests and chmod(1)'s examples.
    #[test]
    fn symbolic_results() {
        let cases: &[(&str, u32, bool, u32)] = &[
            ("=", 0o777, false, 0o000),
            ("+", 0o421, false, 0o421),
            ("-", 0o777, false, 0o777),
            ("+t", 0o421, false, 0o1421),
            ("-t", 0o1421, false, 0o421),
            ("u+r", 0, false, 0o400),
            ("u+X", 0, false, 0),
            ("u+X", 0o001, false, 0o101),
            ("u+X", 0, true, 0o100),
            ("u+s", 0, false, 0o4000),
            ("g+X", 0o100, false, 0o110),
            ("g+s", 0, false, 0o2000),
            ("o+s", 0, false, 0),
            ("+r", 0, false, 0o444),
            ("+x", 0, false, 0o111),
            ("+x", 0o600, false, 0o711),
            ("+X", 0o010, false, 0o111),
            ("+s", 0, false, 0o6000),
            ("-r", 0o777, false, 0o333),
            ("-X", 0o777, true, 0o777),
            ("-s", 0o6777, false, 0o777),
            ("u-s", 0o4777, false, 0o777),
            ("u=rw", 0o777, false, 0o677),
            ("u=", 0o777, false, 0o077),
            ("=rw", 0o777, false, 0o666),
            ("u=g", 0o742, false, 0o442),
            ("u=g-w", 0o722, false, 0o022),
            ("u=g-w", 0o772, false, 0o572),
            ("u+o", 0o021, false, 0o121),
            ("u+go", 0o021, false, 0o321),
            ("u+uo", 0o011, false, 0o111),
            ("-u", 0o111, false, 0o000),
            ("-Xu", 0o111, false, 0o000),
            ("a=r,ug=rw,u+x", 0o777, false, 0o764),
            ("o+r,g+w,a+t,g-s,u+og", 0o2100, false, 0o1724),
            ("o+r,g+w,a+t,g-s,u+og", 0o6000, true, 0o5624),
            ("go-w", 0o777, false, 0o755),
            ("=rw,+X", 0o666, false, 0o666),
            ("=rw,+X", 0o766, false, 0o777),
            ("u=rwx,go=rx", 0, false, 0o755),
            ("u=rwx,go=u-w", 0, false, 0o755),
            ("go=", 0o777, false, 0o700),
            ("go=u-w", 0o770, false, 0o755),
            ("go=u-w", 0o370, false, 0o311),
            ("g=u", 0o700, false, 0o770),
            ("go=u", 0o700, false, 0o777),
            ("a-w", 0o777, false, 0o555),
            ("u+x", 0o644, false, 0o744),
            ("g-w,o-r", 0o666, false, 0o642),
            ("u=rw,go=r", 0o777, false, 0o644),
            ("o+t", 0o777, true, 0o777),
            ("a+t", 0o777, true, 0o1777),
            // X counts after `+` only (BSD; GNU chmod differs): `a=rX` is `a=r`.
            ("a=rX", 0o750, true, 0o444),
            ("a=r,a+X", 0o750, true, 0o555),
            ("a=r,a+X", 0o640, false, 0o444),
            ("a=r,a+X", 0o740, false, 0o555),
            ("a=rX,u+w", 0o644, false, 0o644),
        ];
        for (spec, from, dir, want) in cases {
            assert_eq!(
                apply(spec, *from, *dir),
                *want,
                "--chmod={spec} on {from:o} (dir: {dir})"
            );
        }
    }
}
