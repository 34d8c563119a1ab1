//! `cargo xtask deploy`: renders `deploy/base` with the image references,
//! applies every object with server-side apply through the Kubernetes API,
//! waits for the route controller and every agent to be rolled out, and
//! reports what changed. `--dry-run` prints the rendered YAML instead;
//! `--delete` removes the objects again.
//!
//! It talks to the API with kube-rs rather than running `kubectl apply
//! --server-side`: the outcome of each object (created, configured,
//! unchanged) and the rollout state are read from typed responses instead of
//! parsed from kubectl's output, and nothing but the API server is needed.
//! Kinds are resolved through API discovery, so a server that does not serve
//! one of them is reported by name.

pub mod render;
pub mod rollout;

use crate::util::root;
use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiResource, Scope};
use kube::{Client, Config};
use render::Images;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The field manager of everything `deploy` applies.
pub const FIELD_MANAGER: &str = "underlay-deploy";

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Kubeconfig file to use (default: $KUBECONFIG, ~/.kube/config, or the
    /// in-cluster service account).
    #[arg(long, env = "UNDERLAY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Registry (repository prefix) of the images, e.g. `myregistry.azurecr.io/underlay`
    /// (default: the one in deploy/base/kustomization.yaml).
    #[arg(long, env = "UNDERLAY_IMAGE_REGISTRY")]
    pub image_registry: Option<String>,
    /// Image tag (default: the workspace version).
    #[arg(long, env = "UNDERLAY_IMAGE_TAG")]
    pub image_tag: Option<String>,
    /// Print the rendered YAML and change nothing.
    #[arg(long, env = "UNDERLAY_DRY_RUN")]
    pub dry_run: bool,
    /// Delete the objects instead of applying them.
    #[arg(long, env = "UNDERLAY_DELETE")]
    pub delete: bool,
    /// Do not wait for the rollout.
    #[arg(long, env = "UNDERLAY_NO_WAIT")]
    pub no_wait: bool,
    /// How long to wait for the rollout, in seconds.
    #[arg(long, default_value_t = 300, env = "UNDERLAY_TIMEOUT")]
    pub timeout: u64,
    /// The kustomize base to render.
    #[arg(long, default_value = "deploy/base", env = "UNDERLAY_MANIFESTS")]
    pub manifests: PathBuf,
}

/// What applying one object did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
    Deleted,
    Absent,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
            Outcome::Deleted => "deleted",
            Outcome::Absent => "already absent",
        })
    }
}

pub fn images(args: &Args) -> Result<Images> {
    let tag = match &args.image_tag {
        Some(t) => t.clone(),
        None => {
            let manifest = std::fs::read_to_string(root().join("Cargo.toml"))?;
            crate::build::workspace_version(&manifest)
                .context("the root Cargo.toml has no [workspace.package] version")?
        }
    };
    Ok(Images {
        registry: args.image_registry.clone(),
        tag: Some(tag),
    })
}

pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("read the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("use the kubeconfig {}", path.display()))?
        }
        None => Config::infer()
            .await
            .context("find a cluster: pass --kubeconfig or set KUBECONFIG")?,
    };
    Client::try_from(config).context("create a Kubernetes client")
}

fn gvk(obj: &Value) -> Result<GroupVersionKind> {
    let api_version = obj["apiVersion"]
        .as_str()
        .context("object without apiVersion")?;
    let kind = obj["kind"].as_str().context("object without kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    Ok(GroupVersionKind::gvk(group, version, kind))
}

/// The API of one object's kind, namespaced or not as the server says.
async fn api_for(client: &Client, obj: &Value) -> Result<(Api<DynamicObject>, ApiResource)> {
    let gvk = gvk(obj)?;
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| {
            format!(
                "the API server does not serve {} {}/{}; is the cluster new enough?",
                gvk.kind, gvk.group, gvk.version
            )
        })?;
    let api = match caps.scope {
        Scope::Namespaced => {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .with_context(|| format!("{} needs metadata.namespace", render::describe(obj)))?;
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    Ok((api, resource))
}

fn name(obj: &Value) -> Result<&str> {
    obj["metadata"]["name"]
        .as_str()
        .with_context(|| format!("{} has no metadata.name", render::describe(obj)))
}

/// Server-side applies one object, telling whether it was created, changed
/// or left as it was (same resourceVersion before and after).
pub async fn apply_one(client: &Client, obj: &Value) -> Result<Outcome> {
    let (api, _) = api_for(client, obj).await?;
    let name = name(obj)?;
    let before = api
        .get_opt(name)
        .await
        .with_context(|| format!("read {}", render::describe(obj)))?
        .and_then(|o| o.metadata.resource_version);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let after = api
        .patch(name, &params, &Patch::Apply(obj))
        .await
        .with_context(|| format!("apply {}", render::describe(obj)))?;
    Ok(match before {
        None => Outcome::Created,
        Some(rv) if Some(&rv) == after.metadata.resource_version.as_ref() => Outcome::Unchanged,
        Some(_) => Outcome::Configured,
    })
}

pub async fn delete_one(client: &Client, obj: &Value) -> Result<Outcome> {
    let (api, _) = api_for(client, obj).await?;
    match api.delete(name(obj)?, &DeleteParams::background()).await {
        Ok(_) => Ok(Outcome::Deleted),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Outcome::Absent),
        Err(e) => Err(e).with_context(|| format!("delete {}", render::describe(obj))),
    }
}

/// The rollout state of one workload or CustomResourceDefinition (None for
/// kinds without one).
/// The object is read through discovery like everything applied, and only
/// its metadata, spec and status are interpreted, so the same rules hold for
/// any group serving the kind.
pub async fn progress(client: &Client, obj: &Value) -> Result<Option<(String, rollout::Progress)>> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    if !["Deployment", "DaemonSet", "CustomResourceDefinition"].contains(&kind) {
        return Ok(None);
    }
    let what = render::describe(obj);
    let (api, _) = api_for(client, obj).await?;
    let live = api
        .get(name(obj)?)
        .await
        .with_context(|| format!("read {what}"))?;
    let metadata = live.metadata.clone();
    let part = |key: &str| live.data.get(key).cloned().unwrap_or(Value::Null);
    let p = if kind == "CustomResourceDefinition" {
        rollout::custom_resource_definition(&CustomResourceDefinition {
            metadata,
            spec: serde_json::from_value(part("spec"))
                .with_context(|| format!("{what} has a malformed spec"))?,
            status: serde_json::from_value(part("status"))
                .with_context(|| format!("{what} has a malformed status"))?,
        })
    } else if kind == "Deployment" {
        rollout::deployment(&Deployment {
            metadata,
            spec: serde_json::from_value(part("spec"))
                .with_context(|| format!("{what} has a malformed spec"))?,
            status: serde_json::from_value(part("status"))
                .with_context(|| format!("{what} has a malformed status"))?,
        })
    } else {
        rollout::daemon_set(&DaemonSet {
            metadata,
            spec: serde_json::from_value(part("spec"))
                .with_context(|| format!("{what} has a malformed spec"))?,
            status: serde_json::from_value(part("status"))
                .with_context(|| format!("{what} has a malformed status"))?,
        })
    };
    Ok(Some((what, p)))
}

/// Polls every workload among `objects` until all are rolled out or
/// `timeout` passes; returns the last state of each.
pub async fn wait(
    client: &Client,
    objects: &[Value],
    timeout: Duration,
    interval: Duration,
) -> Result<Vec<(String, rollout::Progress)>> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut states = Vec::new();
        for obj in objects {
            if let Some(state) = progress(client, obj).await? {
                states.push(state);
            }
        }
        let pending: Vec<String> = states
            .iter()
            .filter(|(_, p)| !p.is_done())
            .map(|(w, p)| format!("{w}: {}", p.message()))
            .collect();
        if pending.is_empty() {
            return Ok(states);
        }
        if Instant::now() >= deadline {
            bail!(
                "the rollout did not finish in {}s ({}); check the pods with kubectl -n underlay-system get pods",
                timeout.as_secs(),
                pending.join("; ")
            );
        }
        eprintln!("deploy: waiting: {}", pending.join("; "));
        tokio::time::sleep(interval).await;
    }
}

/// Everything `deploy` did, in order.
#[derive(Debug, Default)]
pub struct Report {
    pub objects: Vec<(String, Outcome)>,
    pub rollout: Vec<(String, rollout::Progress)>,
}

pub async fn deploy(args: &Args, objects: &[Value]) -> Result<Report> {
    let client = client(args.kubeconfig.as_deref()).await?;
    let mut report = Report::default();
    if args.delete {
        for obj in objects.iter().rev() {
            let outcome = delete_one(&client, obj).await?;
            report.objects.push((render::describe(obj), outcome));
        }
        return Ok(report);
    }
    for obj in objects {
        let outcome = apply_one(&client, obj).await?;
        report.objects.push((render::describe(obj), outcome));
    }
    if !args.no_wait {
        report.rollout = wait(
            &client,
            objects,
            Duration::from_secs(args.timeout),
            Duration::from_secs(2),
        )
        .await?;
    }
    Ok(report)
}

pub fn run(args: &Args) -> Result<()> {
    let dir = if args.manifests.is_absolute() {
        args.manifests.clone()
    } else {
        root().join(&args.manifests)
    };
    let objects = render::render(&dir, &images(args)?)?;
    let mut stdout = std::io::stdout().lock();
    if args.dry_run {
        stdout.write_all(render::to_yaml(&objects)?.as_bytes())?;
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let report = runtime.block_on(deploy(args, &objects))?;
    for (what, outcome) in &report.objects {
        writeln!(stdout, "{what}: {outcome}")?;
    }
    for (what, progress) in &report.rollout {
        writeln!(stdout, "{what}: rolled out, {}", progress.message())?;
    }
    Ok(())
}
