//! Licence strings as package databases write them → SPDX licence expressions.
//!
//! Debian's copyright files use their own short names (`GPL-2+`, `BSD-3-clause`,
//! `public-domain`), Python classifiers prose (`MIT License`), npm and apk mostly SPDX ids.
//! A string becomes an expression only when every part maps to an id of the SPDX licence
//! list; otherwise the SBOM says NOASSERTION (SPDX) or carries the raw name (CycloneDX), so
//! that validators never see an invented id.

/// SPDX licence list ids kiln recognises (a subset of the list: the ones package databases
/// name in practice). Sorted for binary search.
const IDS: &[&str] = &[
    "0BSD",
    "AFL-2.1",
    "AFL-3.0",
    "AGPL-3.0-only",
    "AGPL-3.0-or-later",
    "Apache-1.1",
    "Apache-2.0",
    "Artistic-1.0",
    "Artistic-1.0-Perl",
    "Artistic-2.0",
    "BSD-1-Clause",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSD-4-Clause",
    "BSL-1.0",
    "BlueOak-1.0.0",
    "CC-BY-3.0",
    "CC-BY-4.0",
    "CC-BY-SA-3.0",
    "CC-BY-SA-4.0",
    "CC0-1.0",
    "CDDL-1.0",
    "EPL-1.0",
    "EPL-2.0",
    "EUPL-1.2",
    "FSFAP",
    "FSFUL",
    "FSFULLR",
    "GFDL-1.2-only",
    "GFDL-1.2-or-later",
    "GFDL-1.3-only",
    "GFDL-1.3-or-later",
    "GPL-1.0-only",
    "GPL-1.0-or-later",
    "GPL-2.0-only",
    "GPL-2.0-or-later",
    "GPL-3.0-only",
    "GPL-3.0-or-later",
    "ISC",
    "LGPL-2.0-only",
    "LGPL-2.0-or-later",
    "LGPL-2.1-only",
    "LGPL-2.1-or-later",
    "LGPL-3.0-only",
    "LGPL-3.0-or-later",
    "LPPL-1.3c",
    "MIT",
    "MIT-0",
    "MPL-1.1",
    "MPL-2.0",
    "NCSA",
    "OFL-1.1",
    "OpenSSL",
    "PSF-2.0",
    "Python-2.0",
    "Ruby",
    "Sleepycat",
    "TCL",
    "Unicode-DFS-2016",
    "Unlicense",
    "W3C",
    "WTFPL",
    "X11",
    "Zlib",
    "bzip2-1.0.6",
    "curl",
    "libpng",
    "zlib-acknowledgement",
];

/// Common non-SPDX spellings → SPDX ids (keys lower-case).
const ALIASES: &[(&str, &str)] = &[
    ("apache", "Apache-2.0"),
    ("apache 2.0", "Apache-2.0"),
    ("apache license 2.0", "Apache-2.0"),
    ("apache software license", "Apache-2.0"),
    ("apache-2", "Apache-2.0"),
    ("apache2", "Apache-2.0"),
    ("artistic", "Artistic-1.0-Perl"),
    ("bsd", "BSD-3-Clause"),
    ("bsd license", "BSD-3-Clause"),
    ("bsd-2", "BSD-2-Clause"),
    ("bsd-3", "BSD-3-Clause"),
    ("boost software license 1.0 (bsl-1.0)", "BSL-1.0"),
    ("cc0", "CC0-1.0"),
    ("expat", "MIT"),
    ("gpl", "GPL-1.0-or-later"),
    ("gpl-1", "GPL-1.0-only"),
    ("gpl-1+", "GPL-1.0-or-later"),
    ("gpl-2", "GPL-2.0-only"),
    ("gpl-2+", "GPL-2.0-or-later"),
    ("gpl-2.0", "GPL-2.0-only"),
    ("gpl-2.0+", "GPL-2.0-or-later"),
    ("gpl-3", "GPL-3.0-only"),
    ("gpl-3+", "GPL-3.0-or-later"),
    ("gpl-3.0", "GPL-3.0-only"),
    ("gpl-3.0+", "GPL-3.0-or-later"),
    ("gpl2", "GPL-2.0-only"),
    ("gpl3", "GPL-3.0-only"),
    ("gfdl-1.2", "GFDL-1.2-only"),
    ("gfdl-1.2+", "GFDL-1.2-or-later"),
    ("gfdl-1.3", "GFDL-1.3-only"),
    ("gfdl-1.3+", "GFDL-1.3-or-later"),
    ("gnu general public license v2 (gplv2)", "GPL-2.0-only"),
    ("gnu general public license v2 or later (gplv2+)", "GPL-2.0-or-later"),
    ("gnu general public license v3 (gplv3)", "GPL-3.0-only"),
    ("gnu general public license v3 or later (gplv3+)", "GPL-3.0-or-later"),
    (
        "gnu lesser general public license v2 or later (lgplv2+)",
        "LGPL-2.0-or-later",
    ),
    ("gnu lesser general public license v3 (lgplv3)", "LGPL-3.0-only"),
    (
        "gnu lesser general public license v3 or later (lgplv3+)",
        "LGPL-3.0-or-later",
    ),
    ("isc license", "ISC"),
    ("isc license (iscl)", "ISC"),
    ("lgpl-2", "LGPL-2.0-only"),
    ("lgpl-2+", "LGPL-2.0-or-later"),
    ("lgpl-2.1", "LGPL-2.1-only"),
    ("lgpl-2.1+", "LGPL-2.1-or-later"),
    ("lgpl-3", "LGPL-3.0-only"),
    ("lgpl-3+", "LGPL-3.0-or-later"),
    ("lgpl-3.0", "LGPL-3.0-only"),
    ("lgpl-3.0+", "LGPL-3.0-or-later"),
    ("mit license", "MIT"),
    ("mit/x11", "MIT"),
    ("mozilla public license 2.0 (mpl 2.0)", "MPL-2.0"),
    ("mpl-2", "MPL-2.0"),
    ("psf", "PSF-2.0"),
    ("python software foundation license", "PSF-2.0"),
    ("the unlicense (unlicense)", "Unlicense"),
    ("zlib/libpng", "Zlib"),
    ("zope public license", "ZPL-2.1"),
];

/// The SPDX id for one licence name, if known (case-insensitive for ids, as SPDX matches).
pub fn id_of(name: &str) -> Option<&'static str> {
    let n = name.trim().trim_matches(|c| c == '(' || c == ')').trim();
    if n.is_empty() {
        return None;
    }
    let n = n.strip_prefix("License :: OSI Approved :: ").unwrap_or(n);
    let n = n.strip_prefix("License :: ").unwrap_or(n);
    if let Some(id) = IDS.iter().find(|id| id.eq_ignore_ascii_case(n)) {
        return Some(id);
    }
    let lower = n.to_ascii_lowercase();
    // Old SPDX spellings: GPL-2.0 = only, GPL-2.0+ = or-later.
    if let Some(base) = lower.strip_suffix('+')
        && let Some(id) = IDS
            .iter()
            .find(|id| id.eq_ignore_ascii_case(&format!("{base}-or-later")))
    {
        return Some(id);
    }
    if let Some(id) = IDS.iter().find(|id| id.eq_ignore_ascii_case(&format!("{n}-only"))) {
        return Some(id);
    }
    ALIASES
        .iter()
        .find(|(k, _)| *k == lower)
        .map(|(_, v)| *v)
        .filter(|v| IDS.contains(v))
}

/// Turns a declared licence (an SPDX-ish expression, a Debian list, prose) into an SPDX
/// expression of known ids, or None. `and`/`or`/`&`/`,`/`|` join parts; `with` exceptions are
/// not mapped (None).
pub fn expression(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    if let Some(id) = id_of(raw) {
        return Some(id.to_string());
    }
    let spaced = raw.replace('(', " ( ").replace(')', " ) ").replace(['|', '/'], " or ");
    let mut out: Vec<String> = Vec::new();
    let mut words: Vec<&str> = Vec::new();
    let flush = |words: &mut Vec<&str>, out: &mut Vec<String>| -> Option<()> {
        if words.is_empty() {
            return Some(());
        }
        match id_of(&words.join(" ")) {
            Some(id) => out.push(id.to_string()),
            // A space-separated list of ids (apk writes them so): each one on its own.
            None => {
                let ids: Option<Vec<&str>> = words.iter().map(|w| id_of(w)).collect();
                out.extend(ids?.into_iter().map(str::to_string));
            }
        }
        words.clear();
        Some(())
    };
    for w in spaced
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
    {
        match w.to_ascii_lowercase().as_str() {
            "and" | "&" => {
                flush(&mut words, &mut out)?;
                out.push("AND".into());
            }
            "or" => {
                flush(&mut words, &mut out)?;
                out.push("OR".into());
            }
            "with" => return None,
            "(" | ")" => {
                flush(&mut words, &mut out)?;
                out.push(w.to_string());
            }
            _ => words.push(w),
        }
    }
    flush(&mut words, &mut out)?;
    // Adjacent ids from a comma list mean "and" (Debian's `License: GPL-2+, LGPL-2+` is rare;
    // apk writes space-separated lists).
    let mut joined: Vec<String> = Vec::new();
    for t in out {
        let is_op = matches!(t.as_str(), "AND" | "OR" | ")");
        if let Some(prev) = joined.last()
            && !matches!(prev.as_str(), "AND" | "OR" | "(")
            && !is_op
        {
            joined.push("AND".into());
        }
        joined.push(t);
    }
    if joined.is_empty() || matches!(joined.first().map(String::as_str), Some("AND" | "OR")) {
        return None;
    }
    if matches!(joined.last().map(String::as_str), Some("AND" | "OR")) {
        return None;
    }
    let depth = joined.iter().try_fold(0i32, |d, t| {
        let d = d + (t == "(") as i32 - (t == ")") as i32;
        (d >= 0).then_some(d)
    });
    if depth != Some(0) {
        return None;
    }
    Some(joined.join(" ").replace("( ", "(").replace(" )", ")"))
}

/// Combines several licences (e.g. the `License:` paragraphs of a Debian copyright file) into
/// one expression joined with AND; None when any of them is unknown.
pub fn all_of(parts: &[String]) -> Option<String> {
    let mut ids: Vec<String> = Vec::new();
    for p in parts {
        let e = expression(p)?;
        let e = if e.contains(' ') { format!("({e})") } else { e };
        if !ids.contains(&e) {
            ids.push(e);
        }
    }
    match ids.len() {
        0 => None,
        1 => Some(ids.remove(0).trim_start_matches('(').trim_end_matches(')').to_string()),
        _ => Some(ids.join(" AND ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sorted_and_aliases_known() {
        let mut s = IDS.to_vec();
        s.sort_by_key(|a| a.to_ascii_lowercase());
        let mut t = IDS.to_vec();
        t.sort_by_key(|a| a.to_ascii_lowercase());
        assert_eq!(s, t);
        for (_, v) in ALIASES {
            assert!(IDS.contains(v) || *v == "ZPL-2.1", "{v}");
        }
    }

    #[test]
    fn maps_common_spellings() {
        assert_eq!(expression("MIT").as_deref(), Some("MIT"));
        assert_eq!(expression("mit").as_deref(), Some("MIT"));
        assert_eq!(expression("GPL-2+").as_deref(), Some("GPL-2.0-or-later"));
        assert_eq!(expression("GPL-2.0").as_deref(), Some("GPL-2.0-only"));
        assert_eq!(expression("MIT License").as_deref(), Some("MIT"));
        assert_eq!(
            expression("License :: OSI Approved :: BSD License").as_deref(),
            Some("BSD-3-Clause")
        );
        assert_eq!(
            expression("GPL-2.0-or-later AND LGPL-2.1-or-later").as_deref(),
            Some("GPL-2.0-or-later AND LGPL-2.1-or-later")
        );
        assert_eq!(
            expression("(MIT OR Apache-2.0)").as_deref(),
            Some("(MIT OR Apache-2.0)")
        );
        assert_eq!(expression("MIT BSD-3-Clause").as_deref(), Some("MIT AND BSD-3-Clause"));
        assert_eq!(expression("public-domain"), None);
        assert_eq!(expression("GPL-2 with OpenSSL exception"), None);
        assert_eq!(
            all_of(&["GPL-2+".into(), "BSD-3-clause".into(), "GPL-2+".into()]).as_deref(),
            Some("GPL-2.0-or-later AND BSD-3-Clause")
        );
        assert_eq!(all_of(&["GPL-2+".into(), "other".into()]), None);
    }
}
