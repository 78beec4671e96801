use super::GlobalOpts;
use anyhow::Result;
#[derive(clap::Args, Debug)]
pub struct PushArgs {}
pub fn run(_g: &GlobalOpts, _a: PushArgs) -> Result<i32> { anyhow::bail!("being written") }
