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
    Ok(underlay_agent::policy_hook::PolicyHook::start(
        ctx.client.clone(),
        &ctx.args.policy_args,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    underlay_agent::init_tracing(args.log_format);
    underlay_agent::run(args, make_hook).await
}
