//! The embedded API server through kube-rs: CRUD, errors, lists, watches,
//! watchers and reflectors, as the underlay daemons use it.

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use http::Method;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::api::{api_status, start};
use underlay_lab::apiserver::{Failure, Match};

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox:1"}]},
    }))
    .unwrap()
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

/// Wait (bounded) until `check` holds, polling an async condition.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn crud_with_kube_api_and_error_statuses() {
    let (_h, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    assert!(created.uid().is_some());
    assert!(created.creation_timestamp().is_some());
    let rv1: u64 = created.resource_version().unwrap().parse().unwrap();

    let (code, reason) = api_status(
        cms.create(&PostParams::default(), &cm("a"))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    let mut got = cms.get("a").await.unwrap();
    assert_eq!(got.data.as_ref().unwrap()["k"], "v");
    got.data = Some([("k".to_string(), "w".to_string())].into());
    let updated = cms
        .replace("a", &PostParams::default(), &got)
        .await
        .unwrap();
    let rv2: u64 = updated.resource_version().unwrap().parse().unwrap();
    assert!(rv2 > rv1);

    // A write based on the old version is refused.
    let (code, reason) = api_status(
        cms.replace("a", &PostParams::default(), &got)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    cms.delete("a", &DeleteParams::default()).await.unwrap();
    let (code, reason) = api_status(cms.get("a").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    let (code, _) = api_status(cms.delete("a", &DeleteParams::default()).await.unwrap_err());
    assert_eq!(code, 404);

    // Invalid names are 422 Invalid.
    let (code, reason) = api_status(
        cms.create(&PostParams::default(), &cm("Not_Valid"))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));

    // Creating in a namespace that does not exist is 404.
    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    let (code, _) = api_status(
        missing
            .create(&PostParams::default(), &cm("x"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404);
}

#[tokio::test]
async fn namespaces_are_labeled_and_deleting_one_deletes_its_contents() {
    let (_h, client) = start().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
    let ns = nss.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(ns.labels()["kubernetes.io/metadata.name"], "team");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    cms.create(&PostParams::default(), &cm("inside"))
        .await
        .unwrap();
    // The default service account appears, so pods can be created.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    pods.create(&PostParams::default(), &pod("p", json!({})))
        .await
        .unwrap();
    nss.delete("team", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_status(cms.get("inside").await.unwrap_err()).0, 404);
    assert_eq!(api_status(nss.get("team").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn lists_select_and_page_consistently() {
    let (_h, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..25 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        pods.create(
            &PostParams::default(),
            &pod(
                &format!("p{i:02}"),
                json!({"tier": tier, "n": i.to_string()}),
            ),
        )
        .await
        .unwrap();
    }
    let even = pods
        .list(&ListParams::default().labels("tier=even"))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 13);
    let some = pods
        .list(&ListParams::default().labels("tier in (odd),n notin (1,3)"))
        .await
        .unwrap();
    assert_eq!(some.items.len(), 10);
    let one = pods
        .list(&ListParams::default().fields("metadata.name=p07"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    let pending = pods
        .list(&ListParams::default().fields("status.phase=Pending"))
        .await
        .unwrap();
    assert_eq!(pending.items.len(), 25);

    // Pages come from one snapshot: a pod created mid-way is not in them.
    let first = pods.list(&ListParams::default().limit(10)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.metadata.remaining_item_count, Some(15));
    pods.create(&PostParams::default(), &pod("p99", json!({})))
        .await
        .unwrap();
    let mut names: Vec<String> = first.items.iter().map(|p| p.name_any()).collect();
    let mut token = first.metadata.continue_.clone();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = pods
            .list(&ListParams::default().limit(10).continue_token(&t))
            .await
            .unwrap();
        names.extend(page.items.iter().map(|p| p.name_any()));
        token = page.metadata.continue_.clone();
    }
    assert_eq!(names.len(), 25);
    assert!(!names.contains(&"p99".to_string()));
    let (code, reason) = api_status(
        pods.list(&ListParams::default().continue_token("bogus"))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (410, "Expired"));
    let (code, _) = api_status(
        pods.list(&ListParams::default().labels("a in ()"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);
}

#[tokio::test]
async fn raw_watch_resumes_from_a_version_and_filters_by_label() {
    let (_h, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let a = cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    let rv = a.resource_version().unwrap();
    cms.create(&PostParams::default(), &cm("b")).await.unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Added(o)) => assert_eq!(o.name_any(), "b"),
        other => panic!("expected ADDED b, got {other:?}"),
    }
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Deleted(o)) => assert_eq!(o.name_any(), "a"),
        other => panic!("expected DELETED a, got {other:?}"),
    }

    // A label watch sees an object leave its selection as a deletion.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p = pods
        .create(&PostParams::default(), &pod("p", json!({"app": "web"})))
        .await
        .unwrap();
    let mut stream = pods
        .watch(
            &WatchParams::default().labels("app=web").timeout(5),
            &p.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    let patch = kube::api::Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}}));
    pods.patch("p", &kube::api::PatchParams::default(), &patch)
        .await
        .unwrap();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Deleted(o)) => assert_eq!(o.labels()["app"], "db"),
        other => panic!("expected DELETED, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_ends_after_timeout_seconds_with_a_bookmark() {
    let (_h, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap()
        .boxed();
    cms.create(&PostParams::default(), &cm("x")).await.unwrap();
    let mut saw_bookmark = false;
    let mut saw_added = false;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
        .await
        .expect("watch ends")
        .unwrap()
    {
        match ev {
            WatchEvent::Added(_) => saw_added = true,
            WatchEvent::Bookmark(b) => {
                assert!(
                    b.metadata.resource_version.parse::<u64>().unwrap()
                        > rv.parse::<u64>().unwrap()
                );
                saw_bookmark = true
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_added && saw_bookmark);
}

#[tokio::test]
async fn watch_from_compacted_version_gets_410_expired() {
    let (h, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let a = cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    cms.create(&PostParams::default(), &cm("b")).await.unwrap();
    h.compact();
    let mut stream = cms
        .watch(&WatchParams::default(), &a.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn reflector_follows_changes_and_survives_forced_disconnects() {
    let (h, client) = start().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let (reader, writer) = reflector::store::<Node>();
    let stream = reflector::reflector(
        writer,
        watcher(nodes.clone(), watcher::Config::default().timeout(30)),
    )
    .applied_objects()
    .for_each(|_| async {});
    let task = tokio::spawn(stream);
    reader.wait_until_ready().await.unwrap();
    let node =
        |n: &str| -> Node { serde_json::from_value(json!({"metadata": {"name": n}})).unwrap() };
    nodes
        .create(&PostParams::default(), &node("n1"))
        .await
        .unwrap();
    eventually("n1 in the store", || async { reader.state().len() == 1 }).await;

    // The server drops every watch; the watcher resumes from its last version.
    h.faults().close_watches();
    nodes
        .create(&PostParams::default(), &node("n2"))
        .await
        .unwrap();
    eventually("n2 after resume", || async { reader.state().len() == 2 }).await;

    // History is gone and the watch dropped: the watcher relists (410) and
    // still converges, including a deletion it never saw as an event.
    h.compact();
    h.faults().close_watches();
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    nodes
        .create(&PostParams::default(), &node("n3"))
        .await
        .unwrap();
    h.compact();
    eventually("relisted state", || async {
        let mut names: Vec<String> = reader.state().iter().map(|n| n.name_any()).collect();
        names.sort();
        names == ["n2", "n3"]
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn watcher_relists_after_410_and_streaming_lists_work() {
    let (h, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("before"))
        .await
        .unwrap();
    for streaming in [false, true] {
        let mut cfg = watcher::Config::default().timeout(30);
        if streaming {
            cfg = cfg.streaming_lists();
        }
        let mut events = watcher(cms.clone(), cfg).boxed();
        let mut inits = 0;
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let marker = format!("after-{streaming}");
        let mut created = false;
        let mut compacted = false;
        while tokio::time::Instant::now() < deadline {
            let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("event")
                .expect("stream");
            match ev {
                Ok(watcher::Event::Init) => inits += 1,
                Ok(watcher::Event::InitApply(o)) | Ok(watcher::Event::Apply(o)) => {
                    seen.push(o.name_any())
                }
                Ok(watcher::Event::InitDone) => {
                    if !compacted {
                        // Force a 410 on the next watch: keep the watcher from
                        // reconnecting, drop its watch, change something it
                        // cannot see, and forget the history.
                        compacted = true;
                        let gets = Match {
                            method: Some(Method::GET),
                            path_contains: Some("/configmaps".into()),
                        };
                        h.faults().fail_next(u32::MAX, Failure::Internal, gets);
                        h.faults().close_watches();
                        cms.create(&PostParams::default(), &cm(&format!("mid-{streaming}")))
                            .await
                            .unwrap();
                        h.compact();
                        h.faults().clear();
                    } else if !created {
                        created = true;
                        cms.create(&PostParams::default(), &cm(&marker))
                            .await
                            .unwrap();
                    }
                }
                Ok(watcher::Event::Delete(_)) => {}
                Err(_) => {}
            }
            if seen.contains(&marker) {
                break;
            }
        }
        assert!(
            inits >= 2,
            "streaming={streaming}: expected a relist, saw {inits} inits"
        );
        assert!(seen.contains(&"before".to_string()));
        assert!(seen.contains(&marker), "streaming={streaming}: {seen:?}");
    }
}

#[tokio::test]
async fn pod_bound_to_a_node_is_deleted_gracefully() {
    let (_h, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut p = pod("bound", json!({}));
    p.spec.as_mut().unwrap().node_name = Some("node-1".into());
    pods.create(&PostParams::default(), &p).await.unwrap();
    pods.delete("bound", &DeleteParams::default())
        .await
        .unwrap();
    let still = pods.get("bound").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_some());
    assert_eq!(still.metadata.deletion_grace_period_seconds, Some(30));
    pods.delete("bound", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(api_status(pods.get("bound").await.unwrap_err()).0, 404);
    // An unscheduled pod goes at once.
    pods.create(&PostParams::default(), &pod("free", json!({})))
        .await
        .unwrap();
    pods.delete("free", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_status(pods.get("free").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn wrong_or_missing_token_is_401() {
    let (h, _client) = start().await;
    let mut config = h.kube_config().unwrap();
    config.auth_info = serde_json::from_value(json!({"token": "wrong"})).unwrap();
    let bad = Client::try_from(config).unwrap();
    let nodes: Api<Node> = Api::all(bad);
    let (code, reason) = api_status(nodes.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (401, "Unauthorized"));
    let mut config = h.kube_config().unwrap();
    config.auth_info = Default::default();
    let anonymous = Client::try_from(config).unwrap();
    let nodes: Api<Node> = Api::all(anonymous);
    assert_eq!(
        api_status(nodes.list(&ListParams::default()).await.unwrap_err()).0,
        401
    );
}
