//! History `created_by` texts as BuildKit's Dockerfile frontend writes them
//! (dockerfile2llb: `commitToHistory` and its callers), so that `docker history` reads the
//! same whichever builder made the image.

use crate::image::HealthConfig;

/// Go's `%q` of one string (`strconv.Quote`): double quotes, backslash escapes for quotes,
/// backslashes and control characters; printable Unicode stays as it is.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub fn go_quote_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", items.join(" "))
}

/// Go's `%v` of a `[]string`: `[a b]`.
pub fn go_list(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

/// Go's `time.Duration.String()` of a nanosecond count: `1h2m3.5s`, `1.5ms`, `0s`.
pub fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_string();
    }
    let neg = nanos < 0;
    let u = nanos.unsigned_abs();
    let sign = if neg { "-" } else { "" };
    // Below one second: the largest unit that keeps the integer part non-zero.
    if u < 1_000_000_000 {
        let (unit, div) = if u < 1_000 {
            ("ns", 1)
        } else if u < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", frac(u, div));
    }
    let secs_total = u / 1_000_000_000;
    let sub = u % 1_000_000_000;
    let h = secs_total / 3600;
    let m = (secs_total % 3600) / 60;
    let s = secs_total % 60;
    let secs = frac(s * 1_000_000_000 + sub, 1_000_000_000);
    let mut out = sign.to_string();
    if h > 0 {
        out.push_str(&format!("{h}h{m}m"));
    } else if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{secs}s"));
    out
}

/// `v / div` with the fraction's trailing zeros dropped (`1500, 1000` → `1.5`).
fn frac(v: u64, div: u64) -> String {
    let int = v / div;
    let rem = v % div;
    if rem == 0 {
        return int.to_string();
    }
    let width = div.to_string().len() - 1;
    let f = format!("{rem:0width$}");
    format!("{int}.{}", f.trim_end_matches('0'))
}

/// `HEALTHCHECK %+v` of Docker's HealthcheckConfig.
pub fn healthcheck(h: &HealthConfig) -> String {
    let d = |v: Option<i64>| go_duration(v.unwrap_or(0));
    format!(
        "HEALTHCHECK {{Test:{} Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
        go_list(h.test.as_deref().unwrap_or(&[])),
        d(h.interval),
        d(h.timeout),
        d(h.start_period),
        d(h.start_interval),
        h.retries.unwrap_or(0)
    )
}

/// `RUN |N k=v … ARGV # buildkit`: the stage's ARG declarations (their value in the step's
/// environment, else the declared one, else empty) in front of the argv joined by spaces.
pub fn run(argv: &[String], decls: &[(String, Option<String>)], env: &[String]) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !decls.is_empty() {
        parts.push(format!("|{}", decls.len()));
        for (k, declared) in decls {
            let from_env = env
                .iter()
                .rev()
                .find_map(|kv| kv.split_once('=').filter(|(ek, _)| ek == k).map(|(_, v)| v.to_string()));
            let v = from_env.or_else(|| declared.clone()).unwrap_or_default();
            parts.push(format!("{k}={v}"));
        }
    }
    parts.extend(argv.iter().cloned());
    format!("RUN {} # buildkit", parts.join(" "))
}

/// Records an ARG declaration in declaration order: a redeclared name keeps its first
/// position and takes the new value (BuildKit's `runCommandString` does the same).
pub fn declare_arg(decls: &mut Vec<(String, Option<String>)>, name: &str, value: Option<String>) {
    match decls.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value,
        None => decls.push((name.to_string(), value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_go_prints_them() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(3_000_000_000), "3s");
        assert_eq!(go_duration(300_000_000_000), "5m0s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(1_500), "1.5µs");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
    }

    #[test]
    fn quoting_as_go_does() {
        assert_eq!(
            go_quote_list(&["/bin/sh".into(), "-c".into(), "echo \"hi\"\n".into()]),
            r#"["/bin/sh" "-c" "echo \"hi\"\n"]"#
        );
        assert_eq!(go_quote("äö"), "\"äö\"");
    }

    #[test]
    fn run_text_flattens_redeclared_args() {
        let mut d = Vec::new();
        declare_arg(&mut d, "foo", Some("bar".into()));
        declare_arg(&mut d, "bar", Some("123".into()));
        declare_arg(&mut d, "foo", Some("bar2".into()));
        let argv = vec!["/bin/sh".to_string(), "-c".to_string(), "ls /etc/".to_string()];
        assert_eq!(
            run(&argv, &d, &[]),
            "RUN |2 foo=bar2 bar=123 /bin/sh -c ls /etc/ # buildkit"
        );
        assert_eq!(run(&argv, &[], &[]), "RUN /bin/sh -c ls /etc/ # buildkit");
    }
}
