//! testbed-kube: kad-testbed's one door to the Kubernetes API (kube-rs), as testbed-docker is to
//! Docker's: the testbed's pods in a namespace, and their logs, for `testbed-check
//! --k8s-namespace`.
//!
//! * [`connect`]: a client from the usual configuration (kubeconfig, or in-cluster).
//! * [`pod_logs`]: every testbed pod of a namespace (label `app.kubernetes.io/part-of=kad-testbed`,
//!   as `deploy/k8s` sets it) with whether it runs and its whole log.
//!
//! Nothing here decides anything: the checker ingests the lines as it does a container's.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};

/// The label every pod of `deploy/k8s` carries.
pub const SELECTOR: &str = "app.kubernetes.io/part-of=kad-testbed";

/// What went wrong talking to Kubernetes.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No cluster configuration, or the API server did not answer.
    #[error(
        "cannot reach the Kubernetes API: {0}. Is KUBECONFIG (or ~/.kube/config) set, and the \
         cluster up (kubectl cluster-info)?"
    )]
    NoCluster(String),
    /// The API answered with an error.
    #[error("the Kubernetes API failed: {0}")]
    Api(String),
}

/// A client from the inferred configuration: `KUBECONFIG` or `~/.kube/config`, else the
/// in-cluster service account.
pub async fn connect() -> Result<kube::Client, KubeError> {
    kube::Client::try_default()
        .await
        .map_err(|e| KubeError::NoCluster(e.to_string()))
}

/// One pod's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLog {
    /// The pod's name (`bootstrap-0`, `peer-7c9d…`), the node's name in reports.
    pub name: String,
    /// Whether its phase is `Running`.
    pub running: bool,
    /// Its container's whole log (stdout and stderr, as the kubelet keeps them).
    pub text: String,
}

/// Every testbed pod in `namespace`, with its log; pods that have not started a container yet
/// (no log to read) are left out.
pub async fn pod_logs(client: &kube::Client, namespace: &str) -> Result<Vec<PodLog>, KubeError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(SELECTOR))
        .await
        .map_err(|e| match e {
            kube::Error::Api(status) => KubeError::Api(status.to_string()),
            other => KubeError::NoCluster(other.to_string()),
        })?;
    let mut logs = Vec::new();
    for pod in list.items {
        let Some(name) = pod.metadata.name.clone() else {
            continue;
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Pending") | None) {
            continue;
        }
        let text = pods
            .logs(&name, &LogParams::default())
            .await
            .map_err(|e| KubeError::Api(format!("logs of pod {name}: {e}")))?;
        logs.push(PodLog {
            running: phase == Some("Running"),
            name,
            text,
        });
    }
    logs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(logs)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::{Request, Response};
    use kube::client::Body;

    use super::*;

    /// The API server, as recorded: a pod list and two logs (responses as a kind cluster gives).
    async fn recorded(req: Request<Body>) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let (status, body) = match path.as_str() {
            "/api/v1/namespaces/kad/pods" => {
                assert!(
                    query.contains("labelSelector=app.kubernetes.io%2Fpart-of%3Dkad-testbed"),
                    "{query}"
                );
                (200, include_str!("../tests/recorded/pods.json").to_owned())
            }
            "/api/v1/namespaces/kad/pods/bootstrap-0/log" => (
                200,
                include_str!("../tests/recorded/bootstrap-0.log").to_owned(),
            ),
            "/api/v1/namespaces/kad/pods/peer-6d5f8b7c9-x2x8q/log" => (
                200,
                include_str!("../tests/recorded/peer-6d5f8b7c9-x2x8q.log").to_owned(),
            ),
            "/api/v1/namespaces/gone/pods" => (
                403,
                serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "pods is forbidden: User \"ci\" cannot list resource \"pods\" in the namespace \"gone\"",
                    "reason": "Forbidden", "code": 403
                })
                .to_string(),
            ),
            other => panic!("unexpected request {other}"),
        };
        Ok(Response::builder()
            .status(status)
            .body(Body::from(body.into_bytes()))
            .expect("a response"))
    }

    fn client() -> kube::Client {
        kube::Client::new(tower::service_fn(recorded), "kad")
    }

    #[tokio::test]
    async fn running_and_finished_pods_are_read_pending_ones_skipped() {
        let logs = pod_logs(&client(), "kad").await.expect("reads");
        let names: Vec<&str> = logs.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["bootstrap-0", "peer-6d5f8b7c9-x2x8q"]);
        assert!(logs[0].running);
        assert!(!logs[1].running, "a Succeeded pod is read but not running");
        assert!(
            logs[0]
                .text
                .lines()
                .next()
                .is_some_and(|l| l.contains("node_started"))
        );
    }

    #[tokio::test]
    async fn a_refusal_names_what_the_api_said() {
        let err = pod_logs(&client(), "gone").await.expect_err("forbidden");
        assert!(matches!(err, KubeError::Api(_)), "{err:?}");
        assert!(err.to_string().contains("cannot list resource"), "{err}");
    }
}
