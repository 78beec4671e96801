//! Byte sizes as people write and read them (`--max-size 10GB`, `KILN_MAX_LAYER_BYTES`,
//! prune reports).

use anyhow::{Context, Result, bail};

/// Parses a size: `123`, `10k`, `512MB`, `1.5GiB`, `2g` (k/M/G/T are powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("invalid size {s:?}: expected a number with an optional unit (e.g. 10GB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => bail!("invalid size {s:?}: unknown unit {u:?} (use B, KB, MB, GB or TB)"),
    };
    Ok((n * mult as f64) as u64)
}

/// `n` scaled down by `base` until it is below it (or the units run out): the value and the
/// index of its unit.
fn scale(n: u64, base: f64, units: usize) -> (f64, usize) {
    let mut v = n as f64;
    let mut i = 0;
    while v >= base && i < units - 1 {
        v /= base;
        i += 1;
    }
    (v, i)
}

/// Human-readable size in binary units ("4.1 MiB"), for messages.
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    match scale(n, 1024.0, U.len()) {
        (_, 0) => format!("{n} B"),
        (v, i) => format!("{v:.1} {}", U[i]),
    }
}

/// "4.26MB": Docker's decimal units and form (up to three decimals, no trailing zeros), for
/// `kiln images`.
pub fn human_decimal(n: u64) -> String {
    const U: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    match scale(n, 1000.0, U.len()) {
        (_, 0) => format!("{n}B"),
        (v, i) => {
            format!("{v:.3}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
                + U[i]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123").unwrap(), 123);
        assert_eq!(parse_size("10k").unwrap(), 10240);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("2 MB").unwrap(), 2 << 20);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
