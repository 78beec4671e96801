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
        tls_verify: a.tls_verify,
        platform: a.platform,
        auth_file: a.authfile,
    };
    let quiet = a.quiet;
    let progress = move |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    if !quiet {
        eprintln!("Trying to pull {reference}...");
    }
    let image = registry::pull(&store, &reference, &opts, &progress)?;
    println!("{}", image.id().hex());
    Ok(0)
}
