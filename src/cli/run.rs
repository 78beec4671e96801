use super::GlobalOpts;
use anyhow::Result;
#[derive(clap::Args, Debug)]
pub struct RunArgs {}
#[derive(clap::Args, Debug)]
pub struct UnshareArgs {}
#[derive(clap::Args, Debug)]
pub struct InfoArgs {}
#[derive(clap::Args, Debug)]
pub struct SandboxArgs {}
pub fn run(_g: &GlobalOpts, _a: RunArgs) -> Result<i32> { anyhow::bail!("being written") }
pub fn unshare(_g: &GlobalOpts, _a: UnshareArgs) -> Result<i32> { anyhow::bail!("being written") }
pub fn info(_g: &GlobalOpts, _a: InfoArgs) -> Result<i32> { anyhow::bail!("being written") }
pub fn sandbox(_a: SandboxArgs) -> Result<i32> { anyhow::bail!("being written") }
