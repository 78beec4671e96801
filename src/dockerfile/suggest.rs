//! "did you mean …?" hints, as BuildKit's util/suggest gives them: the closest option within
//! an edit distance below 3.

/// The option closest to `val` (Levenshtein distance < 3), or None when `val` is one of them.
pub fn search(val: &str, options: &[&str], case_sensitive: bool) -> Option<String> {
    let norm = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_lowercase()
        }
    };
    let v = norm(val);
    let mut best: Option<String> = None;
    let mut min = 3;
    for opt in options {
        let o = norm(opt);
        if o == v {
            return None;
        }
        let d = distance(&v, &o);
        if d < min {
            min = d;
            best = Some(opt.to_string());
        }
    }
    best
}

/// `" (did you mean X?)"` for the closest option, else an empty string.
pub fn hint(val: &str, options: &[&str]) -> String {
    search(val, options, true)
        .map(|m| format!(" (did you mean {m}?)"))
        .unwrap_or_default()
}

fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(search("bulid", &["build", "base"], true).as_deref(), Some("build"));
        assert_eq!(
            search("mont", &["mount", "network", "security"], true).as_deref(),
            Some("mount")
        );
        assert_eq!(search("typ", &["type", "target"], true).as_deref(), Some("type"));
        assert_eq!(
            search("tmp", &["bind", "cache", "tmpfs", "secret", "ssh"], true).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(search("zzzzzz", &["build"], true), None);
        assert_eq!(search("build", &["build"], true), None);
        assert_eq!(hint("bulid", &["build"]), " (did you mean build?)");
    }
}
