//! The `underlay-agent` binary: parse, log, run. Everything else is in the
//! library.

#![forbid(unsafe_code)]

use clap::Parser;
use std::sync::Arc;
use underlay_agent::{Args, EndpointHook, HookContext, NoPolicy, PolicyUnavailable};

/// Chooses the endpoint hook: the policy engine, or none with
/// `--policy=false`.
fn make_hook(ctx: &HookContext) -> anyhow::Result<Arc<dyn EndpointHook>> {
    if !ctx.args.policy {
        return Ok(Arc::new(NoPolicy));
    }
    let Some(client) = &ctx.client else {
        // Without the API server no policy can be read: refuse pods rather
        // than start them open.
        let why = ctx
            .client_error
            .as_deref()
            .unwrap_or("no kubernetes client");
        return Ok(Arc::new(PolicyUnavailable(format!(
            "policy enforcement needs the API server and there is no client ({why}); pass --kubeconfig, or --policy=false to run pods without NetworkPolicy"
        ))));
    };
    Ok(underlay_agent::policy_hook::PolicyHook::start(
        Some(client.clone()),
        &ctx.args.policy_args,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    underlay_agent::init_tracing(args.log_format);
    underlay_agent::run(args, make_hook).await
}
