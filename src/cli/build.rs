use super::GlobalOpts;
use anyhow::Result;
#[derive(clap::Args, Debug)]
pub struct BuildArgs {}
pub fn run(_g: &GlobalOpts, _a: BuildArgs) -> Result<i32> {
    anyhow::bail!("build: being written")
}
