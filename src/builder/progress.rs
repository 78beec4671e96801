//! Build progress: plain `#N [stage k/n] STEP` lines with durations (CI), or the same with
//! a live status line on a terminal; `--quiet` prints nothing but errors.

use crate::image::Image;
use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    Auto,
    Plain,
    Tty,
    Quiet,
}

pub struct Printer {
    mode: Progress,
    step: AtomicUsize,
}

thread_local! {
    /// The step this thread is running (stages build on several threads).
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

impl Printer {
    pub fn new(mode: Progress) -> Printer {
        let mode = match mode {
            Progress::Auto if std::io::stderr().is_terminal() => Progress::Tty,
            Progress::Auto => Progress::Plain,
            m => m,
        };
        Printer {
            mode,
            step: AtomicUsize::new(0),
        }
    }

    fn out(&self, line: &str) {
        if self.mode != Progress::Quiet {
            let mut e = std::io::stderr().lock();
            let _ = writeln!(e, "{line}");
        }
    }

    pub fn step_start(&self, stage: &str, n: usize, total: usize, text: &str) {
        let no = self.step.fetch_add(1, Ordering::SeqCst) + 1;
        CURRENT.with(|c| c.set(no));
        let line = format!("#{no} [{stage} {n}/{total}] {text}");
        if self.mode == Progress::Tty {
            self.out(&format!("\x1b[1m{line}\x1b[0m"));
        } else {
            self.out(&line);
        }
    }

    /// Runs `f` (a stage that a step needs, built on this thread) and then makes the step
    /// that was running current again, so its result line carries its own number.
    pub fn nested<T>(&self, f: impl FnOnce() -> T) -> T {
        let saved = CURRENT.with(|c| c.get());
        let r = f();
        CURRENT.with(|c| c.set(saved));
        r
    }

    pub fn step_done(&self, cached: bool, took: Duration) {
        if self.mode == Progress::Tty {
            // Clear the live output line of the step.
            let _ = std::io::stderr().lock().write_all(b"\r\x1b[2K");
        }
        if cached {
            self.out(&format!("#{} CACHED", CURRENT.with(|c| c.get())));
        } else {
            self.out(&format!(
                "#{} DONE {:.1}s",
                CURRENT.with(|c| c.get()),
                took.as_secs_f64()
            ));
        }
    }

    /// The prefix for a RUN step's output lines.
    pub fn prefix(&self) -> String {
        if self.mode == Progress::Quiet {
            String::new()
        } else {
            format!("#{} ", CURRENT.with(|c| c.get()))
        }
    }

    /// On a terminal, RUN output is one line redrawn in place, replaced by the step's result.
    pub fn is_live(&self) -> bool {
        self.mode == Progress::Tty
    }

    pub fn is_quiet(&self) -> bool {
        self.mode == Progress::Quiet
    }

    pub fn info(&self, msg: &str) {
        self.out(msg);
    }

    pub fn warn(&self, msg: &str) {
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "WARNING: {msg}");
    }

    pub fn summary(&self, image: &Image, tags: &[String], took: Duration) {
        let size: u64 = image.manifest.layers.iter().map(|l| l.size).sum();
        self.out(&format!(
            "writing image {} ({} layers, {:.1} MB) in {:.1}s{}",
            image.id(),
            image.manifest.layers.len(),
            size as f64 / 1e6,
            took.as_secs_f64(),
            if tags.is_empty() {
                String::new()
            } else {
                format!("; named {}", tags.join(", "))
            }
        ));
    }
}
