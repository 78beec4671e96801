use super::GlobalOpts;
use anyhow::Result;
#[derive(clap::Args, Debug)]
pub struct PullArgs {}
pub fn run(_g: &GlobalOpts, _a: PullArgs) -> Result<i32> { anyhow::bail!("being written") }
