//! Dependencies embedded in binaries: Go's build info (`\xff Go buildinf:`, Go ≥ 1.18's inline
//! form) and Rust's cargo-auditable `.dep-v0` ELF section (zlib-compressed JSON).

use super::sbom::{Ecosystem, Package};
use std::io::Read;

const GO_MAGIC: &[u8] = b"\xff Go buildinf:";

/// Packages a binary declares (empty when it declares none, or is not ELF).
pub fn scan(path: &str, data: &[u8]) -> Vec<Package> {
    if !data.starts_with(b"\x7fELF") {
        return Vec::new();
    }
    let mut out = go_build_info(path, data);
    out.extend(cargo_auditable(path, data));
    out
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &x) in b.iter().enumerate().take(10) {
        v |= ((x & 0x7f) as u64) << (7 * i);
        if x & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn go_build_info(path: &str, data: &[u8]) -> Vec<Package> {
    let mut at = 0;
    let start = loop {
        let Some(i) = find(&data[at..], GO_MAGIC) else {
            return Vec::new();
        };
        let pos = at + i;
        if pos % 16 == 0 {
            break pos;
        }
        at = pos + 1;
    };
    let hdr = &data[start..];
    if hdr.len() < 32 || hdr[15] & 2 == 0 {
        // Go < 1.18 stores pointers into the data segment: not read.
        return Vec::new();
    }
    let mut rest = &hdr[32..];
    let mut strings = Vec::new();
    for _ in 0..2 {
        let Some((n, k)) = uvarint(rest) else { return Vec::new() };
        let n = n as usize;
        if rest.len() < k + n {
            return Vec::new();
        }
        strings.push(String::from_utf8_lossy(&rest[k..k + n]).into_owned());
        rest = &rest[k + n..];
    }
    let version = strings[0].clone();
    let mut modinfo = strings[1].as_str();
    if modinfo.len() >= 33 && modinfo.is_char_boundary(16) && modinfo.is_char_boundary(modinfo.len() - 16) {
        modinfo = &modinfo[16..modinfo.len() - 16];
    }
    let mut out = Vec::new();
    let mut push = |name: &str, ver: &str| {
        if name.is_empty() {
            return;
        }
        out.push(Package::new(Ecosystem::Go, name, ver, path));
    };
    if let Some(v) = version.strip_prefix("go") {
        push("stdlib", &format!("go{v}"));
    }
    let mut last: Option<(String, String)> = None;
    for line in modinfo.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["mod", p, v, ..] | ["dep", p, v, ..] => {
                if let Some((p, v)) = last.take() {
                    push(&p, &v);
                }
                last = Some((p.to_string(), v.to_string()));
            }
            ["=>", p, v, ..] => last = Some((p.to_string(), v.to_string())),
            _ => {}
        }
    }
    if let Some((p, v)) = last {
        push(&p, &v);
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn le(b: &[u8], off: usize, n: usize) -> Option<u64> {
    let s = b.get(off..off + n)?;
    Some(s.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64))
}

/// The bytes of the ELF section `name` (little-endian ELF32/64 only).
pub fn elf_section<'a>(data: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if data.get(5) != Some(&1) {
        return None;
    }
    let is64 = data.get(4) == Some(&2);
    let (shoff, shentsize, shnum, shstrndx) = if is64 {
        (
            le(data, 0x28, 8)?,
            le(data, 0x3a, 2)?,
            le(data, 0x3c, 2)?,
            le(data, 0x3e, 2)?,
        )
    } else {
        (
            le(data, 0x20, 4)?,
            le(data, 0x2e, 2)?,
            le(data, 0x30, 2)?,
            le(data, 0x32, 2)?,
        )
    };
    let sect = |i: u64| -> Option<(u64, u64, u64)> {
        let base = (shoff + i * shentsize) as usize;
        if is64 {
            Some((le(data, base, 4)?, le(data, base + 24, 8)?, le(data, base + 32, 8)?))
        } else {
            Some((le(data, base, 4)?, le(data, base + 16, 4)?, le(data, base + 20, 4)?))
        }
    };
    let (_, str_off, str_size) = sect(shstrndx)?;
    let strtab = data.get(str_off as usize..(str_off + str_size) as usize)?;
    for i in 0..shnum.min(4096) {
        let (n, off, size) = sect(i)?;
        let nm = strtab.get(n as usize..)?;
        let end = nm.iter().position(|&c| c == 0)?;
        if &nm[..end] == name.as_bytes() {
            return data.get(off as usize..(off + size) as usize);
        }
    }
    None
}

fn cargo_auditable(path: &str, data: &[u8]) -> Vec<Package> {
    let Some(sec) = elf_section(data, ".dep-v0") else {
        return Vec::new();
    };
    let mut json = Vec::new();
    if flate2::read::ZlibDecoder::new(sec)
        .take(8 << 20)
        .read_to_end(&mut json)
        .is_err()
    {
        return Vec::new();
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in v.get("packages").and_then(|p| p.as_array()).into_iter().flatten() {
        if p.get("kind").and_then(|k| k.as_str()) == Some("build") {
            continue;
        }
        let (Some(n), Some(ver)) = (
            p.get("name").and_then(|x| x.as_str()),
            p.get("version").and_then(|x| x.as_str()),
        ) else {
            continue;
        };
        out.push(Package::new(Ecosystem::Cargo, n, ver, path));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn varstr(s: &str) -> Vec<u8> {
        let mut v = vec![];
        let mut n = s.len();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                v.push(b);
                break;
            }
            v.push(b | 0x80);
        }
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn go_inline_build_info() {
        let mut bin = b"\x7fELF".to_vec();
        bin.resize(64, 0);
        bin.extend_from_slice(GO_MAGIC);
        bin.push(8);
        bin.push(2);
        bin.resize(96, 0);
        bin.extend(varstr("go1.22.1"));
        let sentinel = "0123456789abcdef";
        let mi = format!(
            "{sentinel}path\texample.com/app\nmod\texample.com/app\t(devel)\t\ndep\tgolang.org/x/text\tv0.14.0\th1:x\ndep\tgithub.com/a/b\tv1.0.0\th1:y\n=>\tgithub.com/c/b\tv1.1.0\th1:z\n{sentinel}"
        );
        bin.extend(varstr(&mi));
        let p = scan("usr/bin/app", &bin);
        let names: Vec<String> = p.iter().map(|p| format!("{}@{}", p.name, p.version)).collect();
        assert_eq!(
            names,
            [
                "stdlib@go1.22.1",
                "example.com/app@(devel)",
                "golang.org/x/text@v0.14.0",
                "github.com/c/b@v1.1.0"
            ]
        );
    }

    /// A minimal ELF64 with a `.dep-v0` section.
    fn elf_with_section(name: &str, content: &[u8]) -> Vec<u8> {
        let strtab = format!("\0{name}\0.shstrtab\0");
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        let content_off = b.len();
        b.extend_from_slice(content);
        let str_off = b.len();
        b.extend_from_slice(strtab.as_bytes());
        let shoff = b.len();
        let sh = |name_off: u32, off: usize, size: usize| {
            let mut s = vec![0u8; 64];
            s[..4].copy_from_slice(&name_off.to_le_bytes());
            s[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            s[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            s
        };
        let null = sh(0, 0, 0);
        let dep = sh(1, content_off, content.len());
        let shs = sh((name.len() + 2) as u32, str_off, strtab.len());
        b.extend(null);
        b.extend(dep);
        b.extend(shs);
        b[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        b[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        b
    }

    #[test]
    fn cargo_auditable_section() {
        let json = br#"{"packages":[{"name":"app","version":"0.1.0","source":"local","root":true},{"name":"serde","version":"1.0.200","source":"crates.io","dependencies":[]},{"name":"cc","version":"1.0.0","source":"crates.io","kind":"build"}]}"#;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(json).unwrap();
        let bin = elf_with_section(".dep-v0", &z.finish().unwrap());
        let p = scan("usr/local/bin/app", &bin);
        let names: Vec<String> = p.iter().map(|p| format!("{}@{}", p.name, p.version)).collect();
        assert_eq!(names, ["app@0.1.0", "serde@1.0.200"]);
        assert_eq!(p[1].purl, "pkg:cargo/serde@1.0.200");
    }
}
