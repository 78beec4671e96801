//! Renders the library's events: `--progress=plain` (one line per event, for CI logs), `tty`
//! (the same with bold step lines and RUN output as one line redrawn in place), `quiet`
//! (errors and warnings only; a failing step's last output lines), and `rawjson` (each event
//! as one JSON object per line on stderr, the schema of `kiln::events::Event`).

use crate::events::{Event, Level, Sink};
use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

/// `--progress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// tty on a terminal, plain otherwise.
    Auto,
    Plain,
    Tty,
    Quiet,
    /// One JSON object per event (step start/finish/cached, log lines, timings, messages).
    Rawjson,
}

/// Lines of a step's output that a quiet build shows when the step fails.
const QUIET_TAIL_LINES: usize = 40;
/// Width of the live output line on a terminal.
const LIVE_WIDTH: usize = 110;

pub struct Renderer {
    mode: ProgressMode,
    debug: bool,
    out: Mutex<Box<dyn Write + Send>>,
    /// Quiet mode: the last output lines of each running step.
    tails: Mutex<BTreeMap<usize, VecDeque<String>>>,
}

impl Renderer {
    /// A renderer on stderr; `Auto` becomes `Tty` when stderr is a terminal.
    pub fn stderr(mode: ProgressMode, debug: bool) -> Renderer {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        Renderer::new(mode, debug, Box::new(std::io::stderr()))
    }

    pub fn new(mode: ProgressMode, debug: bool, out: Box<dyn Write + Send>) -> Renderer {
        Renderer {
            mode,
            debug,
            out: Mutex::new(out),
            tails: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn mode(&self) -> ProgressMode {
        self.mode
    }

    fn write(&self, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    fn line(&self, text: &str) {
        self.write(&format!("{text}\n"));
    }

    fn message(&self, level: Level, source: &str, text: &str) {
        match level {
            Level::Warning => self.line(&format!("WARNING: {text}")),
            Level::Info if self.mode != ProgressMode::Quiet => self.line(text),
            Level::Debug if self.debug => self.line(&format!("DEBUG: {source}: {text}")),
            _ => {}
        }
    }

    fn human(&self, event: &Event) {
        let tty = self.mode == ProgressMode::Tty;
        let quiet = self.mode == ProgressMode::Quiet;
        match event {
            Event::Message { level, source, text } => self.message(*level, source, text),
            Event::StepStart {
                step,
                stage,
                index,
                total,
                text,
            } => {
                if quiet {
                    self.tails
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(*step, VecDeque::new());
                    return;
                }
                let line = format!("#{step} [{stage} {index}/{total}] {text}");
                if tty {
                    self.line(&format!("\x1b[1m{line}\x1b[0m"));
                } else {
                    self.line(&line);
                }
            }
            Event::StepLog { step, line, .. } => {
                if quiet {
                    let mut tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
                    let t = tails.entry(*step).or_default();
                    if t.len() == QUIET_TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line.clone());
                } else if tty {
                    let text: String = format!("#{step} {line}")
                        .trim_end()
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(LIVE_WIDTH)
                        .collect();
                    self.write(&format!("\r\x1b[2K{text}"));
                } else {
                    self.line(&format!("#{step} {line}"));
                }
            }
            Event::StepDone { step, cached, millis } => {
                if quiet {
                    self.tails.lock().unwrap_or_else(|p| p.into_inner()).remove(step);
                    return;
                }
                if tty {
                    self.write("\r\x1b[2K");
                }
                if *cached {
                    self.line(&format!("#{step} CACHED"));
                } else {
                    self.line(&format!("#{step} DONE {:.1}s", *millis as f64 / 1000.0));
                }
            }
            Event::StepError { step, .. } => {
                if tty {
                    self.write("\r\x1b[2K");
                }
                // The error itself is printed once by main, as every command's error is.
                if let Some(tail) = self.tails.lock().unwrap_or_else(|p| p.into_inner()).remove(step) {
                    for l in tail {
                        self.line(&format!("#{step} {l}"));
                    }
                }
                if !quiet {
                    self.line(&format!("#{step} ERROR"));
                }
            }
            Event::BuildDone {
                image,
                tags,
                layers,
                bytes,
                millis,
            } => {
                if quiet {
                    return;
                }
                self.line(&format!(
                    "writing image {image} ({layers} layers, {:.1} MB) in {:.1}s{}",
                    *bytes as f64 / 1e6,
                    *millis as f64 / 1000.0,
                    if tags.is_empty() {
                        String::new()
                    } else {
                        format!("; named {}", tags.join(", "))
                    }
                ));
            }
        }
    }
}

impl Sink for Renderer {
    fn emit(&self, event: &Event) {
        if self.mode == ProgressMode::Rawjson {
            if let Event::Message {
                level: Level::Debug, ..
            } = event
                && !self.debug
            {
                return;
            }
            if let Ok(json) = serde_json::to_string(event) {
                self.line(&json);
            }
        } else {
            self.human(event);
        }
    }

    fn wants_debug(&self) -> bool {
        self.debug
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Stream;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn render(mode: ProgressMode, events: &[Event]) -> String {
        let buf = Buf::default();
        let r = Renderer::new(mode, false, Box::new(buf.clone()));
        for e in events {
            r.emit(e);
        }
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    fn step(step: usize) -> [Event; 3] {
        [
            Event::StepStart {
                step,
                stage: "stage-0".into(),
                index: 2,
                total: 3,
                text: "RUN make".into(),
            },
            Event::StepLog {
                step,
                stream: Stream::Stdout,
                line: "compiling".into(),
            },
            Event::StepDone {
                step,
                cached: false,
                millis: 1250,
            },
        ]
    }

    #[test]
    fn plain_lines() {
        let mut ev = step(4).to_vec();
        ev.push(Event::message(Level::Warning, "build", "careful"));
        ev.push(Event::message(Level::Debug, "rootfs", "hidden without --debug"));
        assert_eq!(
            render(ProgressMode::Plain, &ev),
            "#4 [stage-0 2/3] RUN make\n#4 compiling\n#4 DONE 1.2s\nWARNING: careful\n"
        );
    }

    #[test]
    fn quiet_shows_a_failed_steps_tail_only() {
        let [start, log, _] = step(1);
        let ok = render(ProgressMode::Quiet, &step(1));
        assert_eq!(ok, "");
        let failed = render(
            ProgressMode::Quiet,
            &[
                start,
                log,
                Event::StepError {
                    step: 1,
                    error: "exit 2".into(),
                },
            ],
        );
        assert_eq!(failed, "#1 compiling\n");
    }

    #[test]
    fn rawjson_is_one_object_per_line() {
        let out = render(ProgressMode::Rawjson, &step(2));
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["type"], "step_start");
        assert_eq!(lines[1]["line"], "compiling");
        assert_eq!(lines[2]["millis"], 1250);
    }
}
