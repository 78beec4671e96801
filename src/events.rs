//! What the library tells its caller while it works: build steps, RUN output, transfers,
//! notices, warnings and debug lines.
//!
//! The library never prints. Every operation that has something to say takes a [`Reporter`]
//! (in its options) and emits [`Event`]s into it; the caller decides what they look like. The
//! CLI renders them as a terminal view, plain lines for CI logs, or one JSON object per line
//! (`--progress=rawjson`, whose schema is this type's serde form: see docs/PROGRESS.md).
//! A library user who does not care passes [`Reporter::silent`].

use serde::Serialize;
use std::sync::{Arc, Mutex};

/// How much a [`Event::Message`] matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Only shown with `--debug`: which rung, driver or path kiln chose and why.
    Debug,
    /// A notice the user may want (what kiln did on their behalf).
    Info,
    /// Something is off but the operation goes on.
    Warning,
}

/// Which stream of a RUN step a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One thing that happened. Serialized with a `"type"` tag, snake_case names, and durations in
/// milliseconds, so each JSON line is self-describing.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A notice, warning or debug line; `source` names the part of kiln that speaks
    /// ("registry", "rootfs", "sandbox", "store", "layer", "build").
    Message {
        level: Level,
        source: &'static str,
        text: String,
    },
    /// A build step starts. `step` numbers steps in the order they start (from 1), across
    /// stages built in parallel; `index`/`total` place it in its stage.
    StepStart {
        step: usize,
        stage: String,
        index: usize,
        total: usize,
        text: String,
    },
    /// A step finished; `cached` when its result came from the build cache.
    StepDone { step: usize, cached: bool, millis: u64 },
    /// A step failed; `error` is the whole error chain as one sentence.
    StepError { step: usize, error: String },
    /// One line of a RUN step's output (without its newline; invalid UTF-8 replaced).
    StepLog { step: usize, stream: Stream, line: String },
    /// A build finished: the image id, its tags, the number and size of its layers.
    BuildDone {
        image: String,
        tags: Vec<String>,
        layers: usize,
        bytes: u64,
        millis: u64,
    },
}

impl Event {
    pub fn message(level: Level, source: &'static str, text: impl Into<String>) -> Event {
        Event::Message {
            level,
            source,
            text: text.into(),
        }
    }
}

/// Where events go. Implementations must be cheap and must not fail: a sink that cannot
/// write (a closed terminal) drops the event.
pub trait Sink: Send + Sync {
    fn emit(&self, event: &Event);
    /// Whether debug messages are wanted; the library skips formatting them otherwise.
    fn wants_debug(&self) -> bool {
        false
    }
}

/// The handle the library holds: cheap to clone and to pass into threads.
#[derive(Clone)]
pub struct Reporter {
    sink: Arc<dyn Sink>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter")
    }
}

impl Default for Reporter {
    fn default() -> Reporter {
        Reporter::silent()
    }
}

struct Silent;

impl Sink for Silent {
    fn emit(&self, _: &Event) {}
}

impl Reporter {
    pub fn new(sink: Arc<dyn Sink>) -> Reporter {
        Reporter { sink }
    }

    /// Drops every event (library use and tests that do not look at events).
    pub fn silent() -> Reporter {
        Reporter::new(Arc::new(Silent))
    }

    pub fn emit(&self, event: Event) {
        self.sink.emit(&event);
    }

    pub fn wants_debug(&self) -> bool {
        self.sink.wants_debug()
    }

    pub fn info(&self, source: &'static str, text: impl Into<String>) {
        self.emit(Event::message(Level::Info, source, text));
    }

    pub fn warn(&self, source: &'static str, text: impl Into<String>) {
        self.emit(Event::message(Level::Warning, source, text));
    }

    /// A debug line, formatted only when the sink wants it.
    pub fn debug(&self, source: &'static str, text: impl FnOnce() -> String) {
        if self.wants_debug() {
            self.emit(Event::message(Level::Debug, source, text()));
        }
    }
}

/// A sink that keeps every event, for tests (and callers that render at the end).
#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
    debug: bool,
}

impl Recorder {
    /// A recorder that also asks for debug messages.
    pub fn with_debug() -> Recorder {
        Recorder {
            events: Mutex::new(Vec::new()),
            debug: true,
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The texts of the messages at `level`.
    pub fn messages(&self, level: Level) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Message { level: l, text, .. } if l == level => Some(text),
                _ => None,
            })
            .collect()
    }
}

impl Sink for Recorder {
    fn emit(&self, event: &Event) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event.clone());
    }

    fn wants_debug(&self) -> bool {
        self.debug
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_formatted_only_when_wanted() {
        let quiet = Arc::new(Recorder::default());
        let r = Reporter::new(quiet.clone());
        r.debug("rootfs", || panic!("must not be formatted"));
        r.warn("store", "w");
        assert_eq!(quiet.messages(Level::Warning), vec!["w".to_string()]);
        let loud = Arc::new(Recorder::with_debug());
        let r = Reporter::new(loud.clone());
        r.debug("rootfs", || "chose overlay".into());
        assert_eq!(loud.messages(Level::Debug), vec!["chose overlay".to_string()]);
        Reporter::silent().warn("x", "dropped");
    }

    #[test]
    fn json_form_is_tagged() {
        let e = Event::StepDone {
            step: 3,
            cached: true,
            millis: 12,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"step_done","step":3,"cached":true,"millis":12}"#
        );
        let m = Event::message(Level::Warning, "registry", "slow");
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"message","level":"warning","source":"registry","text":"slow"}"#
        );
    }
}
