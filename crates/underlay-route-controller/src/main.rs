#![forbid(unsafe_code)]

use clap::Parser;
use underlay_route_controller::runtime::{Args, init_tracing, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    run(args).await
}
