//! Decompression bounds: a layer or archive whose decompressed stream is implausibly large is
//! refused while it is read, before it costs minutes of CPU or the disk.
//!
//! Two limits, both on the *tar stream* (sparse entries expand into holes later and cost
//! neither):
//! - `KILN_MAX_LAYER_SIZE` (default 1 TiB): the decompressed size of one layer or archive;
//! - `KILN_MAX_COMPRESSION_RATIO` (default 250, `0` = off): once more than
//!   `KILN_RATIO_CHECK_AFTER` bytes (default 1 GiB) came out, the ratio of decompressed to
//!   compressed bytes read so far. Real layers compress 2–10×, text-heavy ones up to ~50×;
//!   a gzip bomb of zeros reaches ~1000× and a zstd one far more.
//!
//! Sizes accept units (`10GB`, `512MiB`).

use std::io::{self, BufRead, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The bounds in force (see [`configure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    /// 0 = no ratio check.
    pub max_ratio: u64,
    pub ratio_after: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: 1 << 40,
            max_ratio: 250,
            ratio_after: 1 << 30,
        }
    }
}

impl Limits {
    /// The limits from the environment variables named above (`env` looks one up), unset
    /// ones at their default. A value that does not parse is an error naming the variable.
    /// The CLI calls this; the library reads no variable.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Limits> {
        let d = Limits::default();
        let get = |name: &str, default: u64| -> anyhow::Result<u64> {
            match env(name) {
                None => Ok(default),
                Some(v) => crate::fsutil::size::parse_size(&v)
                    .map_err(|e| anyhow::anyhow!("{name}={v:?} is not a valid size: {e:#}")),
            }
        };
        Ok(Limits {
            max_bytes: get("KILN_MAX_LAYER_SIZE", d.max_bytes)?,
            max_ratio: get("KILN_MAX_COMPRESSION_RATIO", d.max_ratio)?,
            ratio_after: get("KILN_RATIO_CHECK_AFTER", d.ratio_after)?,
        })
    }
}

/// The limits of this process, set once by the caller (the CLI, from the environment) before
/// any stream is read; [`Limits::default`] until then. A process-wide setting rather than an
/// option of every call: decompression happens in layer, archive and the builder's ADD, deep
/// below options structs that do not otherwise need it, and the bounds are a policy of the
/// whole invocation (like the thread pool size), not of one call.
static LIMITS: std::sync::OnceLock<Limits> = std::sync::OnceLock::new();

/// Sets the process's limits. Only the first call has an effect.
pub fn configure(limits: Limits) {
    let _ = LIMITS.set(limits);
}

/// The limits in force (see [`configure`]).
pub fn limits() -> Limits {
    LIMITS.get().copied().unwrap_or_default()
}

/// Counts the compressed bytes a decoder consumes.
pub struct Counted<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.fetch_add(k as u64, Ordering::Relaxed);
        Ok(k)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.n.fetch_add(amt as u64, Ordering::Relaxed);
        self.inner.consume(amt)
    }
}

/// The compressed-side counter of a [`Counted`] reader.
#[derive(Clone, Debug, Default)]
pub struct InputCount(Arc<AtomicU64>);

/// Wraps the compressed input so that [`bounded`] can compute the ratio.
pub fn counted<R>(r: R) -> (Counted<R>, InputCount) {
    let n = Arc::new(AtomicU64::new(0));
    (Counted { inner: r, n: n.clone() }, InputCount(n))
}

/// A decompressed stream that fails once it passes the [`Limits`].
pub struct Bounded<R> {
    inner: R,
    input: InputCount,
    out: u64,
    limits: Limits,
}

/// Bounds the decoder output `r`, whose compressed input is counted by `input`.
pub fn bounded<R: Read>(r: R, input: InputCount) -> Bounded<R> {
    bounded_with(r, input, limits())
}

pub fn bounded_with<R: Read>(r: R, input: InputCount, limits: Limits) -> Bounded<R> {
    Bounded {
        inner: r,
        input,
        out: 0,
        limits,
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.out += k as u64;
        let l = &self.limits;
        if self.out > l.max_bytes {
            return Err(io::Error::other(format!(
                "the stream decompresses to more than {} (KILN_MAX_LAYER_SIZE); refusing it",
                crate::fsutil::size::human(l.max_bytes)
            )));
        }
        if l.max_ratio > 0 && self.out > l.ratio_after {
            let inp = self.input.0.load(Ordering::Relaxed).max(1);
            if self.out / inp > l.max_ratio {
                return Err(io::Error::other(format!(
                    "the stream decompresses to {} from {} of input, a ratio above {}:1 (a decompression bomb?); \
                     refusing it (raise KILN_MAX_COMPRESSION_RATIO, or set it to 0, to accept such input)",
                    crate::fsutil::size::human(self.out),
                    crate::fsutil::size::human(inp),
                    l.max_ratio
                )));
            }
        }
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz_zeros(n: usize) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let chunk = vec![0u8; 1 << 20];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len());
            e.write_all(&chunk[..k]).unwrap();
            left -= k;
        }
        e.finish().unwrap()
    }

    #[test]
    fn bomb_is_refused_ratio_and_size() {
        let gz = gz_zeros(64 << 20);
        let lim = Limits {
            max_bytes: 1 << 40,
            max_ratio: 100,
            ratio_after: 8 << 20,
        };
        let (c, n) = counted(&gz[..]);
        let mut r = bounded_with(flate2::read::GzDecoder::new(c), n, lim);
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err().to_string();
        assert!(err.contains("decompression bomb"), "{err}");
        assert!(r.out < 16 << 20, "stopped early: {}", r.out);

        let (c, n) = counted(&gz[..]);
        let lim = Limits {
            max_bytes: 1 << 20,
            max_ratio: 0,
            ratio_after: 0,
        };
        let mut r = bounded_with(flate2::read::GzDecoder::new(c), n, lim);
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err().to_string();
        assert!(err.contains("KILN_MAX_LAYER_SIZE"), "{err}");

        // Ordinary data passes.
        let (c, n) = counted(&gz[..]);
        let mut r = bounded_with(flate2::read::GzDecoder::new(c), n, Limits::default());
        assert_eq!(io::copy(&mut r, &mut io::sink()).unwrap(), 64 << 20);
    }

    #[test]
    fn limits_from_env() {
        let none = |_: &str| None;
        assert_eq!(Limits::from_env(&none).unwrap(), Limits::default());
        let env = |k: &str| (k == "KILN_MAX_LAYER_SIZE").then(|| "10MiB".to_string());
        assert_eq!(Limits::from_env(&env).unwrap().max_bytes, 10 << 20);
        let bad = |k: &str| (k == "KILN_MAX_COMPRESSION_RATIO").then(|| "lots".to_string());
        let err = Limits::from_env(&bad).unwrap_err().to_string();
        assert!(err.contains("KILN_MAX_COMPRESSION_RATIO"), "{err}");
    }
}
