//! being written
pub fn ensure(_debug: bool) -> anyhow::Result<()> { Ok(()) }
