//! `weir demo`: the simulator and the gateway in one process, a bounded load through the
//! gateway, and a summary read from the gateway's own metrics.

/// Arguments of `weir demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {}

pub async fn run(_args: DemoArgs) -> std::io::Result<()> {
    Ok(())
}
