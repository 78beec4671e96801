//! `kiln pull IMAGE [--platform P] [--tls-verify=false] [-q]`

use super::GlobalOpts;
use crate::reference::Reference;
use crate::registry::{self, RegistryOptions};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Image to pull (`debian:bookworm`, `localhost:5000/app:v1`, `name@sha256:…`).
    pub image: String,
    /// Platform to pick from a multi-platform image: os/arch[/variant] (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Verify TLS certificates (false: also allow plain HTTP).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub tls_verify: bool,
    /// Credentials file (default: $REGISTRY_AUTH_FILE, else ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Print only the image id.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(g: &GlobalOpts, a: PullArgs) -> Result<i32> {
    let reference = Reference::parse(&a.image)?;
    let store = g.store()?;
    let opts = RegistryOptions {
        platform: a.platform,
        ..g.registry_options(a.tls_verify, a.authfile.as_deref())
    };
    let quiet = a.quiet;
    if !quiet {
        eprintln!("Trying to pull {reference}...");
    }
    let display = Display::new();
    let progress = |line: &str| {
        if !quiet {
            display.line(line);
        }
    };
    let image = registry::pull(&store, &reference, &opts, &progress)?;
    println!("{}", image.id().hex());
    Ok(0)
}

/// Progress output: on a terminal one live line per blob (byte counts update in place);
/// otherwise plain lines, without the periodic byte counts.
pub(crate) struct Display {
    tty: bool,
    lines: std::cell::RefCell<Vec<(String, String)>>,
}

impl Display {
    pub(crate) fn new() -> Display {
        use std::io::IsTerminal;
        Display {
            tty: std::io::stderr().is_terminal(),
            lines: Default::default(),
        }
    }

    /// `Copying blob sha256:abc 1.0 MiB / 2.0 MiB` is a running count for the key
    /// `Copying blob sha256:abc`.
    fn split(line: &str) -> (String, bool) {
        let words: Vec<&str> = line.split(' ').collect();
        let running = line.ends_with(" MiB") && line.contains(" / ");
        if line.starts_with("Copying ") && words.len() >= 3 {
            (words[..3].join(" "), running)
        } else {
            (line.to_string(), false)
        }
    }

    pub(crate) fn line(&self, line: &str) {
        let (key, running) = Display::split(line);
        if !self.tty {
            if !running {
                eprintln!("{line}");
            }
            return;
        }
        let mut lines = self.lines.borrow_mut();
        let before = lines.len();
        match lines.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = line.to_string(),
            None => lines.push((key, line.to_string())),
        }
        let mut out = String::new();
        if before > 0 {
            out.push_str(&format!("\x1b[{before}A"));
        }
        for (_, l) in lines.iter() {
            out.push_str(&format!("\r\x1b[2K{l}\n"));
        }
        eprint!("{out}");
    }
}
