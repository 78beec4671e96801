//! Block-parallel gzip, pigz-style: the input is cut into fixed 128 KiB blocks, each block is
//! deflated on its own worker thread (zlib-rs through flate2) with the previous block's last
//! 32 KiB as its dictionary and ended with a sync flush (byte-aligned, so the blocks simply
//! concatenate), and one writer thread puts them in order behind a gzip header and in front of
//! the trailer (CRC-32 combined from the per-block CRCs). The result is one standard gzip
//! member, and it depends only on the input bytes and the level: not on the thread count, nor on
//! how the input was split into `write` calls (layer digests stay reproducible).
//!
//! Runs of incompressible data (4 KiB chunks with an order-0 entropy ≥ 7.8 bits/byte:
//! compressed or random data) are written as deflate *stored* blocks without running the
//! compressor. zlib-rs at level 1 (deflate_quick, static Huffman codes) would spend as much CPU
//! on them as on text and make them ~5 % bigger; on copy-big (half of the bytes random, mostly
//! in small files between text files) this halves the compression CPU. The test is a pure
//! function of the data, so the output stays deterministic.
//!
//! Memory is bounded: at most `2 × threads` blocks wait for a worker and `2 × threads` finished
//! blocks wait for the writer (≈ 2 MiB with 2 threads), whatever the layer size.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Input block size (pigz's default).
pub const BLOCK: usize = 128 * 1024;
/// Deflate's window: the dictionary handed from one block to the next.
const DICT: usize = 32 * 1024;
/// Blocks at or above this order-0 entropy are stored, not compressed.
/// (Measured on 4 KiB chunks, the estimate of random data is ~7.95: the plug-in estimator is
/// biased low by ~0.045 bits, and a tar header inside the chunk costs ~0.05 more. Text is below
/// 5, machine code ~6-7; deflate_quick expands anything above ~7.5.)
const STORED_ENTROPY_BITS: f64 = 7.8;

struct Job {
    seq: u64,
    data: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
}

struct Done {
    seq: u64,
    out: Vec<u8>,
    crc: flate2::Crc,
    last: bool,
}

/// A gzip writer that compresses on `threads` worker threads.
pub struct ParGzip<W: Write + Send + 'static> {
    buf: Vec<u8>,
    dict: Vec<u8>,
    seq: u64,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<io::Result<W>>>,
}

impl<W: Write + Send + 'static> ParGzip<W> {
    /// `level` 0-9 (0 = stored only); `threads` ≥ 1.
    pub fn new(sink: W, level: u32, threads: usize) -> io::Result<ParGzip<W>> {
        let threads = threads.max(1);
        let (job_tx, job_rx) = sync_channel::<Job>(2 * threads);
        let (done_tx, done_rx) = sync_channel::<io::Result<Done>>(2 * threads);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = Arc::clone(&job_rx);
            let tx = done_tx.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("kiln-gzip-{i}"))
                    .spawn(move || worker(level, &rx, &tx))?,
            );
        }
        drop(done_tx);
        let writer = std::thread::Builder::new()
            .name("kiln-gzip-out".into())
            .spawn(move || write_out(sink, &done_rx))?;
        Ok(ParGzip {
            buf: Vec::with_capacity(BLOCK),
            dict: Vec::new(),
            seq: 0,
            jobs: Some(job_tx),
            workers,
            writer: Some(writer),
        })
    }

    fn send(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK));
        let next_dict = data[data.len().saturating_sub(DICT)..].to_vec();
        let dict = std::mem::replace(&mut self.dict, next_dict);
        let job = Job {
            seq: self.seq,
            data,
            dict,
            last,
        };
        self.seq += 1;
        let sent = self.jobs.as_ref().map(|tx| tx.send(job).is_ok()).unwrap_or(false);
        if !sent {
            // A worker or the writer stopped: report why (e.g. the disk is full).
            return Err(self.stopped_error());
        }
        Ok(())
    }

    /// The error that stopped the pipeline: the writer's (the sink failed) if it has one.
    fn stopped_error(&mut self) -> io::Error {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => e,
            _ => io::Error::other("the gzip compressor stopped early"),
        }
    }

    /// Compresses what is left, writes the trailer and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        let sent = self.send(true);
        self.jobs = None;
        let mut panicked = false;
        for w in self.workers.drain(..) {
            panicked |= w.join().is_err();
        }
        let out = match self.writer.take().map(|w| w.join()) {
            Some(Ok(r)) => r,
            _ => Err(io::Error::other("the gzip writer thread panicked")),
        };
        if panicked {
            return Err(io::Error::other("a gzip worker thread panicked"));
        }
        let w = out?;
        sent?;
        Ok(w)
    }
}

impl<W: Write + Send + 'static> Write for ParGzip<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let take = (BLOCK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == BLOCK {
                self.send(false)?;
            }
        }
        Ok(n)
    }

    /// Blocks are cut at fixed sizes only (an early cut would make the output depend on the
    /// write pattern), so there is nothing to flush before `finish`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for ParGzip<W> {
    fn drop(&mut self) {
        // Dropped without finish (an error upstream): stop the threads, discard the output.
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn worker(level: u32, jobs: &Mutex<Receiver<Job>>, done: &SyncSender<io::Result<Done>>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let mut crc = flate2::Crc::new();
        crc.update(&job.data);
        let out = if level == 0 {
            Ok(stored(&job.data, job.last))
        } else {
            deflate_block(level, &job.data, &job.dict, job.last)
        };
        let msg = out.map(|out| Done {
            seq: job.seq,
            out,
            crc,
            last: job.last,
        });
        if done.send(msg).is_err() {
            return;
        }
    }
}

/// One block as raw deflate, ending with a sync flush (or the final block). Runs of
/// incompressible 4 KiB chunks are written as stored blocks; the compressor resumes after them
/// with the run's tail set as its dictionary (allowed for raw deflate right after a flush), so
/// that its window matches what the decoder has seen. A fresh compressor per block: zlib-rs's
/// `reset` keeps state that made the output depend on which blocks a worker had compressed
/// before (measured: same input, different bytes from run to run), which would break
/// reproducible digests.
fn deflate_block(level: u32, data: &[u8], dict: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 64);
    let runs = split_runs(data);
    if runs.is_empty() {
        // Empty input: only the final block needs anything (an empty stored block).
        return Ok(stored(data, last));
    }
    let mut c: Option<flate2::Compress> = None;
    for (i, &(start, end, is_stored)) in runs.iter().enumerate() {
        let final_run = last && i + 1 == runs.len();
        let run = &data[start..end];
        if is_stored {
            // The output is byte-aligned here: at the start of the block (the previous block
            // ended with a sync flush) or after the sync flush of the run before.
            out.extend_from_slice(&stored(run, final_run));
            if let Some(c) = c.as_mut() {
                c.set_dictionary(&run[run.len().saturating_sub(DICT)..])
                    .map_err(io::Error::other)?;
            }
            continue;
        }
        let c = match c.as_mut() {
            Some(c) => c,
            None => {
                let mut fresh = flate2::Compress::new(flate2::Compression::new(level), false);
                let before = preceding(dict, data, start);
                if !before.is_empty() {
                    fresh.set_dictionary(&before).map_err(io::Error::other)?;
                }
                c.insert(fresh)
            }
        };
        let flush = if final_run {
            flate2::FlushCompress::Finish
        } else {
            flate2::FlushCompress::Sync
        };
        compress_all(c, run, &mut out, flush)?;
    }
    Ok(out)
}

/// The (at most 32 KiB of) input before `pos` of the block: the previous block's tail, then
/// the block itself.
fn preceding(dict: &[u8], data: &[u8], pos: usize) -> Vec<u8> {
    let from_data = &data[pos.saturating_sub(DICT)..pos];
    let from_dict = &dict[dict.len().saturating_sub(DICT - from_data.len())..];
    [from_dict, from_data].concat()
}

/// Feeds all of `input` and completes `flush` (a sync flush, or the end of the stream).
fn compress_all(
    c: &mut flate2::Compress,
    input: &[u8],
    out: &mut Vec<u8>,
    flush: flate2::FlushCompress,
) -> io::Result<()> {
    let finish = matches!(flush, flate2::FlushCompress::Finish);
    let start = c.total_in();
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let consumed = (c.total_in() - start) as usize;
        let status = c
            .compress_vec(&input[consumed..], out, flush)
            .map_err(io::Error::other)?;
        let done_in = (c.total_in() - start) as usize == input.len();
        match status {
            flate2::Status::StreamEnd => return Ok(()),
            // A sync flush is complete once all input is in and the output was not filled up.
            _ if !finish && done_in && out.len() < out.capacity() => return Ok(()),
            _ => {}
        }
    }
}

/// Size of the chunks the entropy test looks at, and the shortest stored run.
const CHUNK: usize = 4096;
const MIN_STORED_RUN: usize = 2 * CHUNK;

/// Splits a block into runs (start, end, stored?) of compressible and incompressible data, on
/// `CHUNK` boundaries; incompressible runs shorter than `MIN_STORED_RUN` are compressed.
fn split_runs(data: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    for (i, ch) in data.chunks(CHUNK).enumerate() {
        let start = i * CHUNK;
        let inc = looks_incompressible(ch);
        match runs.last_mut() {
            Some(r) if r.2 == inc => r.1 = start + ch.len(),
            _ => runs.push((start, start + ch.len(), inc)),
        }
    }
    // Short stored runs are not worth a flush: merge them into their neighbours.
    let mut merged: Vec<(usize, usize, bool)> = Vec::with_capacity(runs.len());
    for mut r in runs {
        if r.2 && r.1 - r.0 < MIN_STORED_RUN {
            r.2 = false;
        }
        match merged.last_mut() {
            Some(m) if m.2 == r.2 => m.1 = r.1,
            _ => merged.push(r),
        }
    }
    merged
}

/// Deflate stored blocks (at most 65,535 bytes each); starts and ends byte-aligned.
fn stored(data: &[u8], last: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 5 * (data.len() / 65535 + 2));
    let mut chunks = data.chunks(65535).peekable();
    if data.is_empty() {
        // An empty final block, or nothing at all for an empty non-final one.
        if last {
            out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        }
        return out;
    }
    while let Some(ch) = chunks.next() {
        let bfinal = u8::from(last && chunks.peek().is_none());
        let len = ch.len() as u16;
        out.push(bfinal); // BFINAL, BTYPE=00, then padding to the byte boundary
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(ch);
    }
    out
}

/// Order-0 entropy test on one chunk: random or already-compressed data.
fn looks_incompressible(data: &[u8]) -> bool {
    if data.len() < CHUNK {
        return false;
    }
    let mut hist = [0u32; 256];
    for &b in data {
        hist[b as usize] += 1;
    }
    let n = data.len() as f64;
    let bits: f64 = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    bits >= STORED_ENTROPY_BITS
}

fn write_out<W: Write>(mut sink: W, done: &Receiver<io::Result<Done>>) -> io::Result<W> {
    // Fixed header: no name, no mtime, OS "unknown" (as Go's compress/gzip writes it).
    sink.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
    let mut next = 0u64;
    let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
    let mut crc = flate2::Crc::new();
    let mut finished = false;
    for msg in done.iter() {
        let d = msg?;
        pending.insert(d.seq, d);
        while let Some(d) = pending.remove(&next) {
            sink.write_all(&d.out)?;
            crc.combine(&d.crc);
            next += 1;
            if d.last {
                finished = true;
            }
        }
    }
    if !finished {
        return Err(io::Error::other("the gzip stream ended without its last block"));
    }
    sink.write_all(&crc.sum().to_le_bytes())?;
    sink.write_all(&crc.amount().to_le_bytes())?;
    sink.flush()?;
    Ok(sink)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gz(data: &[u8], level: u32, threads: usize, chunk: usize) -> Vec<u8> {
        let mut w = ParGzip::new(Vec::new(), level, threads).unwrap();
        for c in data.chunks(chunk.max(1)) {
            w.write_all(c).unwrap();
        }
        w.finish().unwrap()
    }

    fn gunzip(b: &[u8]) -> Vec<u8> {
        // A single member: GzDecoder (not MultiGzDecoder) must read all of it.
        let mut d = flate2::read::GzDecoder::new(b);
        let mut out = Vec::new();
        d.read_to_end(&mut out).unwrap();
        out
    }

    fn sample(n: usize) -> Vec<u8> {
        // Text-like first half, random second half, so both block kinds occur.
        let mut x = 0x9e3779b97f4a7c15u64;
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i >= n / 2 {
                v.push(x as u8);
            }
        }
        // Text-like first half: words from a small vocabulary (LZ77 finds matches).
        let words = [
            "kiln ", "layer ", "gzip ", "block ", "tar\n", "digest ", "overlay ", "cache ",
        ];
        let mut text = Vec::with_capacity(n / 2 + 8);
        while text.len() < n / 2 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.extend_from_slice(words[(x % 8) as usize].as_bytes());
        }
        text.truncate(n / 2);
        text.extend_from_slice(&v);
        text
    }

    #[test]
    fn round_trips_and_is_deterministic() {
        for n in [0, 1, 5000, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 777, 1_300_000] {
            let data = sample(n);
            let a = gz(&data, 1, 2, 4096);
            assert!(gunzip(&a) == data, "size {n}: round trip failed");
            assert!(
                a == gz(&data, 1, 1, 1_000_003),
                "size {n}: threads/write pattern changed the output"
            );
            assert!(
                a == gz(&data, 1, 4, 333),
                "size {n}: threads/write pattern changed the output"
            );
        }
    }

    #[test]
    fn same_bytes_whichever_worker_takes_which_block() {
        // Low-entropy text that is still deflated, then random data: with a compressor reused
        // across blocks (zlib-rs reset), this gave different bytes from run to run.
        let n = 1_300_000;
        let mut x = 0x9e3779b97f4a7c15u64;
        let data: Vec<u8> = (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i < n / 2 {
                    b"abcdefgh \n"[(x % 10) as usize]
                } else {
                    x as u8
                }
            })
            .collect();
        let a = gz(&data, 1, 2, 4096);
        assert!(gunzip(&a) == data);
        for t in [1, 2, 3, 4] {
            for ch in [333, 4096, 1_000_003] {
                assert!(
                    a == gz(&data, 1, t, ch),
                    "{t} threads, {ch}-byte writes: different output"
                );
            }
        }
    }

    #[test]
    fn levels_and_stored_blocks() {
        let data = sample(1_000_000);
        let l0 = gz(&data, 0, 2, 65536);
        let l1 = gz(&data, 1, 2, 65536);
        let l6 = gz(&data, 6, 2, 65536);
        for b in [&l0, &l1, &l6] {
            assert!(gunzip(b) == data, "round trip failed");
        }
        assert!(l0.len() > data.len(), "level 0 stores everything");
        assert!(l6.len() <= l1.len() && l1.len() < l0.len());
        // The random half is stored: the output is at least that big, and not much bigger.
        assert!(l1.len() > data.len() / 2 && l1.len() < data.len() / 2 + data.len() / 4);
        // System gzip agrees that it is one valid member.
        if std::path::Path::new("/bin/gzip").exists() {
            let mut c = std::process::Command::new("/bin/gzip")
                .args(["-t", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(&l1).unwrap();
            assert!(c.wait().unwrap().success());
        }
    }

    #[test]
    fn entropy_test() {
        assert!(!looks_incompressible(&sample(BLOCK)[..CHUNK]));
        assert!(looks_incompressible(&sample(2 * BLOCK)[BLOCK..BLOCK + CHUNK]));
        assert!(!looks_incompressible(&[0u8; CHUNK]));
    }

    #[test]
    fn mixed_runs_inside_blocks() {
        // Text and random pieces of 1-40 KiB interleaved, as small files in a tar are: stored
        // runs and compressed runs alternate inside blocks and the windows must stay in step.
        let mut x = 0x2545f4914f6cdd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let text = sample(200_000);
        let mut data = Vec::new();
        while data.len() < 2_000_000 {
            let n = 1024 + (next() % 40_000) as usize;
            if next() % 2 == 0 {
                let off = (next() % 90_000) as usize;
                data.extend_from_slice(&text[off..off + n.min(100_000)]);
            } else {
                data.extend((0..n).map(|_| next() as u8));
            }
        }
        let a = gz(&data, 1, 2, 10_000);
        assert!(gunzip(&a) == data, "round trip failed");
        assert!(a == gz(&data, 1, 3, 77_777), "not deterministic");
        let runs = split_runs(&data[..BLOCK]);
        assert!(runs.iter().any(|r| r.2) && runs.iter().any(|r| !r.2), "{runs:?}");
        assert!(a.len() < data.len());
    }
}
