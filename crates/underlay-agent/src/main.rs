//! The `underlay-agent` binary: parse, log, run. Everything else is in the
//! library.

#![forbid(unsafe_code)]

use clap::Parser;
use std::sync::Arc;
use underlay_agent::{Args, EndpointHook, HookContext, NoPolicy};

/// Chooses the endpoint hook: the policy engine, or none with
/// `--policy=false`.
fn make_hook(ctx: &HookContext) -> anyhow::Result<Arc<dyn EndpointHook>> {
    if !ctx.args.policy {
        return Ok(Arc::new(NoPolicy));
    }
    anyhow::bail!(
        "this build of underlay-agent has no policy engine; run it with --policy=false (UNDERLAY_POLICY=false) to serve pods without network policy"
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    underlay_agent::init_tracing(args.log_format);
    underlay_agent::run(args, make_hook).await
}
