//! A minimal deterministic tar writer: ustar headers (the tar crate's `Header` does the field
//! encoding), PAX extended headers for long names, long link targets, big ids and xattrs, and
//! no path munging (the tar crate's builder renames special files wrongly, see crates.md §7).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

/// One tar entry to write.
pub struct TarEntry<'a> {
    /// Path inside the archive, relative, without a leading `./`; directories end with `/`.
    pub path: &'a [u8],
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub size: u64,
    pub link: Option<&'a [u8]>,
    pub dev: Option<(u32, u32)>,
    /// PAX records beyond path/linkpath (xattrs: `SCHILY.xattr.<name>`), in order.
    pub pax: BTreeMap<String, Vec<u8>>,
}

/// Largest id / size the ustar numeric fields hold as octal.
const MAX_ID: u64 = 0o7777777;

/// Splits a path into ustar (prefix, name) if it fits.
fn ustar_split(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((&[], path));
    }
    if path.len() > 256 {
        return None;
    }
    // The split must happen at a '/', with name <= 100 and prefix <= 155 bytes.
    let start = path.len().saturating_sub(101);
    for i in start..path.len().min(156) {
        if path[i] == b'/' && path.len() - i - 1 <= 100 && i <= 155 && i > 0 && i + 1 < path.len() {
            return Some((&path[..i], &path[i + 1..]));
        }
    }
    None
}

/// Encodes one PAX record: "<len> <key>=<value>\n", where len counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    loop {
        let total = body + len.to_string().len();
        if total == len {
            break;
        }
        len = total;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn copy_field(dst: &mut [u8], src: &[u8]) {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    for b in &mut dst[n..] {
        *b = 0;
    }
}

/// Writes tar entries to a stream.
pub struct TarWriter<W: Write> {
    w: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(w: W) -> Self {
        TarWriter { w }
    }

    /// Writes an entry; `data` must yield exactly `e.size` bytes for regular files.
    pub fn append(&mut self, e: &TarEntry, data: Option<&mut dyn Read>) -> io::Result<()> {
        let mut pax = Vec::new();
        let split = ustar_split(e.path);
        if split.is_none() {
            pax_record(&mut pax, "path", e.path);
        }
        if let Some(l) = e.link
            && l.len() > 100
        {
            pax_record(&mut pax, "linkpath", l);
        }
        if e.uid > MAX_ID {
            pax_record(&mut pax, "uid", e.uid.to_string().as_bytes());
        }
        if e.gid > MAX_ID {
            pax_record(&mut pax, "gid", e.gid.to_string().as_bytes());
        }
        for (k, v) in &e.pax {
            pax_record(&mut pax, k, v);
        }
        if !pax.is_empty() {
            // The extended header's own name, as Go writes it: PaxHeaders.0/<base>, truncated.
            let base = e.path.rsplit(|&b| b == b'/').find(|s| !s.is_empty()).unwrap_or(b"");
            let mut name = b"PaxHeaders.0/".to_vec();
            name.extend_from_slice(base);
            name.truncate(100);
            let mut h = tar::Header::new_ustar();
            copy_field(&mut h.as_old_mut().name, &name);
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(pax.len() as u64);
            h.set_cksum();
            self.w.write_all(h.as_bytes())?;
            self.w.write_all(&pax)?;
            self.pad(pax.len() as u64)?;
        }

        let mut h = tar::Header::new_ustar();
        {
            let (prefix, name) = split.unwrap_or_else(|| {
                // PAX carries the full path; the header gets a truncated copy.
                (&[][..], &e.path[..e.path.len().min(100)])
            });
            let u = h.as_ustar_mut().expect("ustar header");
            copy_field(&mut u.name, name);
            copy_field(&mut u.prefix, prefix);
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode & 0o7777);
        h.set_uid(e.uid.min(MAX_ID));
        h.set_gid(e.gid.min(MAX_ID));
        h.set_mtime(e.mtime);
        h.set_size(e.size);
        if let Some(l) = e.link {
            copy_field(&mut h.as_old_mut().linkname, &l[..l.len().min(100)]);
        }
        if let Some((ma, mi)) = e.dev {
            h.set_device_major(ma)?;
            h.set_device_minor(mi)?;
        }
        h.set_cksum();
        self.w.write_all(h.as_bytes())?;
        if e.size > 0 {
            let data = data.ok_or_else(|| io::Error::other("tar entry with a size but no data"))?;
            let n = io::copy(&mut data.take(e.size), &mut self.w)?;
            if n != e.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} changed size while being archived ({} bytes expected, {n} read)",
                        String::from_utf8_lossy(e.path),
                        e.size
                    ),
                ));
            }
            self.pad(e.size)?;
        }
        Ok(())
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % 512) as usize;
        if rem != 0 {
            self.w.write_all(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.w.write_all(&[0u8; 1024])?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let mut v = Vec::new();
        pax_record(&mut v, "path", b"abc");
        assert_eq!(v, b"12 path=abc\n");
        let mut v = Vec::new();
        let val = vec![b'x'; 95];
        pax_record(&mut v, "path", &val);
        // 95 + "path" 4 + 3 = 102 body, + 3 digits = 105
        assert!(v.starts_with(b"105 path="));
        assert_eq!(v.len(), 105);
    }

    #[test]
    fn ustar_split_rules() {
        assert_eq!(ustar_split(b"a/b"), Some((&b""[..], &b"a/b"[..])));
        let long = [vec![b'd'; 120], b"/".to_vec(), vec![b'f'; 50]].concat();
        let (p, n) = ustar_split(&long).unwrap();
        assert_eq!(p.len(), 120);
        assert_eq!(n.len(), 50);
        assert!(ustar_split(&[b'x'; 150]).is_none());
        assert!(ustar_split(&[vec![b'd'; 200], b"/f".to_vec()].concat()).is_none());
    }
}
