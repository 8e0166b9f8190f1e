//! The objects the test API server knows (pods and nodes), with resource versions and a
//! bounded event log that watches replay from.
//!
//! Every change bumps one global resource version, as etcd does for kube-apiserver, and
//! appends a pod event. A watch from resource version `rv` replays the events after `rv` that
//! its field selector sees, turning "started / stopped matching" into ADDED / DELETED the way
//! kube-apiserver's watch cache does. A resource version older than the log is answered with
//! the `410 Expired` error event, so clients exercise their re-list path.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tokio::sync::watch;

/// Events kept for watches to replay.
const EVENT_LOG: usize = 10_000;

/// A pod as the test API server serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestPod {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.nodeName`; `None` while unscheduled.
    pub node: Option<String>,
    /// `spec.containers[*].name`, in order (the first is kubectl's default).
    pub containers: Vec<String>,
    /// `status.phase` (`Running` unless set otherwise).
    pub phase: String,
}

impl TestPod {
    /// A running pod on `node` with the given containers.
    pub fn running(namespace: &str, name: &str, node: &str, containers: &[&str]) -> TestPod {
        TestPod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: Some(node.to_owned()),
            containers: containers.iter().map(|c| (*c).to_owned()).collect(),
            phase: "Running".to_owned(),
        }
    }

    /// A pending pod that no scheduler has placed yet.
    pub fn unscheduled(namespace: &str, name: &str, containers: &[&str]) -> TestPod {
        TestPod {
            node: None,
            phase: "Pending".to_owned(),
            ..TestPod::running(namespace, name, "", containers)
        }
    }
}

/// A node as the test API server serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestNode {
    /// `metadata.name`.
    pub name: String,
    /// The `InternalIP` address, which kube-apiserver dials (with `--kubelet-preferred-address-types`
    /// preferring it, as kubeadm sets it).
    pub internal_ip: IpAddr,
    /// `status.daemonEndpoints.kubeletEndpoint.Port`.
    pub kubelet_port: u16,
}

#[derive(Debug, Clone)]
struct Stored<T> {
    object: T,
    uid: String,
    rv: u64,
}

/// One pod change: the object before and after (either may be absent).
#[derive(Debug, Clone)]
pub(crate) struct PodEvent {
    rv: u64,
    old: Option<Stored<TestPod>>,
    new: Option<Stored<TestPod>>,
}

#[derive(Debug, Default)]
struct Inner {
    rv: u64,
    next_uid: u64,
    pods: BTreeMap<(String, String), Stored<TestPod>>,
    nodes: BTreeMap<String, Stored<TestNode>>,
    log: VecDeque<PodEvent>,
}

/// The object store.
#[derive(Debug)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
    /// The latest resource version, for watches to wait on.
    changed: watch::Sender<u64>,
}

/// What a watch from some resource version gets.
pub(crate) enum Replay {
    /// Events to send, each already rendered, and the resource version reached.
    Events(Vec<Value>, u64),
    /// The resource version is older than the log: send `410 Expired` and end.
    Expired,
}

/// The field selectors the test server understands on pods (what kubelets, schedulers and our
/// pod resolver send). Anything else is refused with 400, as an unknown field is by
/// kube-apiserver.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses `spec.nodeName!=,metadata.name=x`.
    pub(crate) fn parse(text: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for term in text.split(',').filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            if !matches!(
                field,
                "spec.nodeName" | "metadata.name" | "metadata.namespace" | "status.phase"
            ) {
                return Err(format!(
                    "field label not supported: {field} (test API server)"
                ));
            }
            terms.push((field.to_owned(), equal, value.to_owned()));
        }
        Ok(FieldSelector { terms })
    }

    fn matches(&self, pod: &TestPod) -> bool {
        self.terms.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "spec.nodeName" => pod.node.as_deref().unwrap_or(""),
                "metadata.name" => pod.name.as_str(),
                "metadata.namespace" => pod.namespace.as_str(),
                _ => pod.phase.as_str(),
            };
            (actual == value) == *equal
        })
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    pub(crate) fn new() -> Store {
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                ..Inner::default()
            }),
            changed: watch::channel(1).0,
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes every watch without changing anything (they re-check availability).
    pub(crate) fn wake(&self) {
        self.changed.send_modify(|_| {});
    }

    /// Creates or replaces a pod.
    pub(crate) fn put_pod(&self, pod: TestPod) {
        let mut inner = lock(&self.inner);
        inner.rv += 1;
        let rv = inner.rv;
        let key = (pod.namespace.clone(), pod.name.clone());
        let old = inner.pods.get(&key).cloned();
        let uid = match &old {
            Some(old) => old.uid.clone(),
            None => {
                inner.next_uid += 1;
                format!("00000000-0000-4000-8000-{:012}", inner.next_uid)
            }
        };
        let new = Stored {
            object: pod,
            uid,
            rv,
        };
        inner.pods.insert(key, new.clone());
        push_event(
            &mut inner,
            PodEvent {
                rv,
                old,
                new: Some(new),
            },
        );
        drop(inner);
        self.changed.send_replace(rv);
    }

    /// Deletes a pod; `false` if there was none.
    pub(crate) fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        let mut inner = lock(&self.inner);
        let Some(old) = inner.pods.remove(&(namespace.to_owned(), name.to_owned())) else {
            return false;
        };
        inner.rv += 1;
        let rv = inner.rv;
        push_event(
            &mut inner,
            PodEvent {
                rv,
                old: Some(old),
                new: None,
            },
        );
        drop(inner);
        self.changed.send_replace(rv);
        true
    }

    pub(crate) fn put_node(&self, node: TestNode) {
        let mut inner = lock(&self.inner);
        inner.rv += 1;
        let rv = inner.rv;
        inner.next_uid += 1;
        let uid = format!("00000000-0000-4000-9000-{:012}", inner.next_uid);
        inner.nodes.insert(
            node.name.clone(),
            Stored {
                object: node,
                uid,
                rv,
            },
        );
        drop(inner);
        self.changed.send_replace(rv);
    }

    pub(crate) fn pod(&self, namespace: &str, name: &str) -> Option<TestPod> {
        lock(&self.inner)
            .pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|s| s.object.clone())
    }

    pub(crate) fn node(&self, name: &str) -> Option<TestNode> {
        lock(&self.inner).nodes.get(name).map(|s| s.object.clone())
    }

    pub(crate) fn pod_json(&self, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.inner)
            .pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(pod_json)
    }

    pub(crate) fn node_json(&self, name: &str) -> Option<Value> {
        lock(&self.inner).nodes.get(name).map(node_json)
    }

    /// A `PodList` of the pods in `namespace` (all when `None`) that `selector` matches.
    pub(crate) fn pod_list(&self, namespace: Option<&str>, selector: &FieldSelector) -> Value {
        let inner = lock(&self.inner);
        let items: Vec<Value> = inner
            .pods
            .values()
            .filter(|p| namespace.is_none_or(|ns| p.object.namespace == ns))
            .filter(|p| selector.matches(&p.object))
            .map(pod_json)
            .collect();
        json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": inner.rv.to_string()},
            "items": items,
        })
    }

    /// A `NodeList` of every node.
    pub(crate) fn node_list(&self) -> Value {
        let inner = lock(&self.inner);
        let items: Vec<Value> = inner.nodes.values().map(node_json).collect();
        json!({
            "kind": "NodeList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": inner.rv.to_string()},
            "items": items,
        })
    }

    /// The watch events after `from` for pods in `namespace` matching `selector`.
    pub(crate) fn replay(
        &self,
        from: u64,
        namespace: Option<&str>,
        selector: &FieldSelector,
    ) -> Replay {
        let inner = lock(&self.inner);
        let oldest = inner.log.front().map_or(inner.rv, |e| e.rv);
        if from + 1 < oldest {
            return Replay::Expired;
        }
        fn seen<'s>(
            s: &'s Option<Stored<TestPod>>,
            namespace: Option<&str>,
            selector: &FieldSelector,
        ) -> Option<&'s Stored<TestPod>> {
            s.as_ref().filter(|s| {
                namespace.is_none_or(|ns| s.object.namespace == ns) && selector.matches(&s.object)
            })
        }
        let mut events = Vec::new();
        for event in inner.log.iter().filter(|e| e.rv > from) {
            let (kind, object) = match (
                seen(&event.old, namespace, selector),
                seen(&event.new, namespace, selector),
            ) {
                (None, Some(new)) => ("ADDED", pod_json(new)),
                (Some(_), Some(new)) => ("MODIFIED", pod_json(new)),
                (Some(old), None) => {
                    // A deleted (or no longer matching) object carries the event's version.
                    let mut gone = old.clone();
                    gone.rv = event.rv;
                    ("DELETED", pod_json(&gone))
                }
                (None, None) => continue,
            };
            events.push(json!({"type": kind, "object": object}));
        }
        Replay::Events(events, inner.rv)
    }
}

fn push_event(inner: &mut Inner, event: PodEvent) {
    if inner.log.len() == EVENT_LOG {
        inner.log.pop_front();
    }
    inner.log.push_back(event);
}

const CREATED: &str = "2026-01-01T00:00:00Z";

fn pod_json(stored: &Stored<TestPod>) -> Value {
    let pod = &stored.object;
    let containers: Vec<Value> = pod
        .containers
        .iter()
        .map(|c| json!({"name": c, "image": "registry.example/test:1"}))
        .collect();
    let statuses: Vec<Value> = pod
        .containers
        .iter()
        .map(|c| {
            json!({
                "name": c,
                "ready": pod.phase == "Running",
                "restartCount": 0,
                "image": "registry.example/test:1",
                "imageID": "",
                "started": pod.phase == "Running",
                "state": {"running": {"startedAt": CREATED}},
            })
        })
        .collect();
    let mut spec = json!({"containers": containers, "restartPolicy": "Always"});
    if let Some(node) = &pod.node {
        spec["nodeName"] = json!(node);
    }
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": stored.uid,
            "resourceVersion": stored.rv.to_string(),
            "creationTimestamp": CREATED,
        },
        "spec": spec,
        "status": {"phase": pod.phase, "containerStatuses": statuses},
    })
}

fn node_json(stored: &Stored<TestNode>) -> Value {
    let node = &stored.object;
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": node.name,
            "uid": stored.uid,
            "resourceVersion": stored.rv.to_string(),
            "creationTimestamp": CREATED,
            "labels": {"kubernetes.io/hostname": node.name, "node-role.kubernetes.io/edge": ""},
        },
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.internal_ip.to_string()},
                {"type": "Hostname", "address": node.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": node.kubelet_port}},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn watch_replays_selector_transitions() {
        let store = Store::new();
        let from = *store.subscribe().borrow();
        store.put_pod(TestPod::unscheduled("ns", "a", &["c"]));
        store.put_pod(TestPod::running("ns", "a", "edge-1", &["c"]));
        store.put_pod(TestPod::running("other", "b", "edge-2", &["c"]));
        assert!(store.delete_pod("ns", "a"));
        let scheduled = FieldSelector::parse("spec.nodeName!=").unwrap();
        let Replay::Events(events, _) = store.replay(from, Some("ns"), &scheduled) else {
            panic!("expired");
        };
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        // Unscheduled: not seen; scheduled: ADDED; deleted: DELETED; other namespace: not seen.
        assert_eq!(kinds, ["ADDED", "DELETED"]);
        assert_eq!(events[0]["object"]["spec"]["nodeName"], "edge-1");
    }

    #[test]
    fn old_versions_expire() {
        let store = Store::new();
        for i in 0..EVENT_LOG + 5 {
            store.put_pod(TestPod::running("ns", &format!("p{i}"), "n", &["c"]));
        }
        assert!(matches!(
            store.replay(1, None, &FieldSelector::default()),
            Replay::Expired
        ));
    }

    #[test]
    fn selectors() {
        assert!(FieldSelector::parse("spec.nodeName=edge-1,metadata.name!=x").is_ok());
        assert!(FieldSelector::parse("spec.bogus=1").is_err());
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
