//! Build progress as events: steps numbered in the order they start (across stages built in
//! parallel), their results and timings, and the final summary. The CLI renders them.

use crate::events::{Event, Reporter};
use crate::image::Image;
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub struct Steps {
    reporter: Reporter,
    next: AtomicUsize,
}

thread_local! {
    /// The step this thread is running (stages build on several threads).
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

impl Steps {
    pub fn new(reporter: Reporter) -> Steps {
        Steps {
            reporter,
            next: AtomicUsize::new(0),
        }
    }

    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// Numbers a new step, makes it this thread's current one and reports its start.
    pub fn start(&self, stage: &str, index: usize, total: usize, text: &str) -> usize {
        let step = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        CURRENT.with(|c| c.set(step));
        self.reporter.emit(Event::StepStart {
            step,
            stage: stage.to_string(),
            index,
            total,
            text: text.to_string(),
        });
        step
    }

    /// The step this thread is running (0 before the first).
    pub fn current(&self) -> usize {
        CURRENT.with(|c| c.get())
    }

    /// Runs `f` (a stage that a step needs, built on this thread) and then makes the step
    /// that was running current again, so its result carries its own number.
    pub fn nested<T>(&self, f: impl FnOnce() -> T) -> T {
        let saved = self.current();
        let r = f();
        CURRENT.with(|c| c.set(saved));
        r
    }

    pub fn done(&self, cached: bool, took: Duration) {
        self.reporter.emit(Event::StepDone {
            step: self.current(),
            cached,
            millis: took.as_millis() as u64,
        });
    }

    pub fn failed(&self, error: &anyhow::Error) {
        self.reporter.emit(Event::StepError {
            step: self.current(),
            error: format!("{error:#}"),
        });
    }

    /// A notice about the current step ("#3 using cache from …").
    pub fn info(&self, text: &str) {
        self.reporter.info("build", format!("#{} {text}", self.current()));
    }

    pub fn warn(&self, text: &str) {
        self.reporter.warn("build", text);
    }

    pub fn summary(&self, image: &Image, tags: &[String], took: Duration) {
        self.reporter.emit(Event::BuildDone {
            image: image.id().to_string(),
            tags: tags.to_vec(),
            layers: image.manifest.layers.len(),
            bytes: image.manifest.layers.iter().map(|l| l.size).sum(),
            millis: took.as_millis() as u64,
        });
    }
}
