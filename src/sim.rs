//! The vLLM simulator (placeholder until the real module lands).
#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: std::net::SocketAddr,
    #[arg(long, default_value = "tiny-llama")]
    pub model: String,
}
pub async fn serve(
    _listener: tokio::net::TcpListener,
    _config: SimConfig,
    _shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    Ok(())
}
