use super::GlobalOpts;
use anyhow::Result;
#[derive(clap::Args, Debug)]
pub struct ImportArgs {}
#[derive(clap::Args, Debug)]
pub struct ImagesArgs {}
#[derive(clap::Args, Debug)]
pub struct InspectArgs {}
#[derive(clap::Args, Debug)]
pub struct TagArgs {}
#[derive(clap::Args, Debug)]
pub struct RmiArgs {}
#[derive(clap::Args, Debug)]
pub struct SaveArgs {}
#[derive(clap::Args, Debug)]
pub struct LoadArgs {}
pub fn import(_g: &GlobalOpts, _a: ImportArgs) -> Result<i32> { anyhow::bail!("being written") }
pub fn images(_g: &GlobalOpts, _a: ImagesArgs) -> Result<i32> { anyhow::bail!("being written") }
pub fn inspect(_g: &GlobalOpts, _a: InspectArgs) -> Result<i32> { anyhow::bail!("being written") }
pub fn tag(_g: &GlobalOpts, _a: TagArgs) -> Result<i32> { anyhow::bail!("being written") }
pub fn rmi(_g: &GlobalOpts, _a: RmiArgs) -> Result<i32> { anyhow::bail!("being written") }
pub fn save(_g: &GlobalOpts, _a: SaveArgs) -> Result<i32> { anyhow::bail!("being written") }
pub fn load(_g: &GlobalOpts, _a: LoadArgs) -> Result<i32> { anyhow::bail!("being written") }
