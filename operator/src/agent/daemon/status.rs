//! Reporting on the node's `NodePolicyShare` status: which generation of the
//! share is in the kernel and the `Enforced` condition.
//!
//! [`next`] computes the status (pure); [`Reporter`] writes it by server-side
//! apply of the status subresource (field manager `kube-nft-agent`) on a task
//! of its own, so an unreachable API server never holds up enforcement: the
//! task keeps retrying the newest status with backoff.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use kube_nft_crds::resources::{NodePolicyShare, NodePolicyShareStatus, ENFORCED_CONDITION};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::render::{TABLE_FAMILY, TABLE_NAME};

pub const FIELD_MANAGER: &str = "kube-nft-agent";

/// Conditions carry at most this much text (the API allows 32 KiB; a
/// status is read by people).
const MAX_MESSAGE: usize = 1024;

/// How a sync of one share generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// In the kernel, every address set complete.
    Enforced,
    /// In the kernel, but some sets kept old members or are empty (why, one
    /// line each).
    Incomplete(Vec<String>),
    /// The kernel refused the sync (it kept the previous ruleset).
    Failed(String),
}

/// The status after a sync of `generation` that ended in `outcome`, given the
/// status last written (`prev`). Times only move when something changed, so
/// the same outcome twice gives the same status (and no write).
pub fn next(
    prev: &NodePolicyShareStatus,
    generation: i64,
    outcome: &Outcome,
    now: &Time,
) -> NodePolicyShareStatus {
    let (enforced, reason, message) = match outcome {
        Outcome::Enforced => (
            true,
            "Enforced",
            format!("generation {generation} is in the kernel (table {TABLE_FAMILY} {TABLE_NAME})"),
        ),
        Outcome::Incomplete(why) => (
            false,
            "AddressSetsIncomplete",
            format!(
                "generation {generation} is in the kernel with incomplete address sets: {}",
                why.join("; ")
            ),
        ),
        Outcome::Failed(error) => (
            false,
            "SyncFailed",
            format!("the kernel keeps the previous ruleset: {error}"),
        ),
    };
    let (enforced_generation, enforced_time) = if enforced {
        let time = match prev.enforced_generation {
            Some(g) if g == generation => prev.enforced_time.clone(),
            _ => None,
        };
        (Some(generation), Some(time.unwrap_or_else(|| now.clone())))
    } else {
        (prev.enforced_generation, prev.enforced_time.clone())
    };
    let status = if enforced { "True" } else { "False" };
    let old = prev
        .conditions
        .iter()
        .find(|c| c.type_ == ENFORCED_CONDITION);
    let last_transition_time = old
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    // Only our condition: server-side apply merges the list by type, so
    // conditions others own stay as they are.
    let conditions = vec![Condition {
        type_: ENFORCED_CONDITION.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: truncate(message),
        observed_generation: Some(generation),
        last_transition_time,
    }];
    NodePolicyShareStatus {
        observed_generation: Some(generation),
        enforced_generation,
        enforced_time,
        conditions,
    }
}

fn truncate(mut message: String) -> String {
    if message.trim().is_empty() {
        // The API server rejects empty strings in custom resources.
        return "no detail".to_string();
    }
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    message
}

/// The server-side apply body for the status of share `name`: only the
/// fields this agent owns.
pub fn apply_body(name: &str, status: &NodePolicyShareStatus) -> serde_json::Value {
    json!({
        "apiVersion": format!("{}/{}", kube_nft_crds::resources::GROUP, kube_nft_crds::resources::VERSION),
        "kind": "NodePolicyShare",
        "metadata": {"name": name},
        "status": status,
    })
}

/// The status writer task; see the module doc.
pub struct Reporter {
    latest: watch::Sender<Option<NodePolicyShareStatus>>,
    task: JoinHandle<()>,
}

impl Reporter {
    pub fn spawn(client: Client, share: &str) -> Reporter {
        let (latest, rx) = watch::channel(None);
        let api: Api<NodePolicyShare> = Api::all(client);
        let task = tokio::spawn(write_loop(api, share.to_string(), rx));
        Reporter { latest, task }
    }

    /// Write `status` (replacing any not yet written).
    pub fn report(&self, status: NodePolicyShareStatus) {
        self.latest.send_replace(Some(status));
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn write_loop(
    api: Api<NodePolicyShare>,
    name: String,
    mut rx: watch::Receiver<Option<NodePolicyShareStatus>>,
) {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    while rx.changed().await.is_ok() {
        let mut delay = Duration::from_millis(500);
        loop {
            let Some(status) = rx.borrow_and_update().clone() else {
                break;
            };
            let body = apply_body(&name, &status);
            match api.patch_status(&name, &params, &Patch::Apply(&body)).await {
                Ok(_) => break,
                // The share went away: nothing to report on until it is back
                // (its next sync reports again).
                Err(kube::Error::Api(e)) if e.code == 404 => break,
                Err(e) => {
                    tracing::warn!(share = %name, error = %e, "writing the NodePolicyShare status; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        changed = rx.changed() => if changed.is_err() { return },
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn enforced(s: &NodePolicyShareStatus) -> &Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == ENFORCED_CONDITION)
            .unwrap()
    }

    #[test]
    fn an_enforced_generation_is_reported_once() {
        let first = next(&Default::default(), 3, &Outcome::Enforced, &time(10));
        assert_eq!(first.enforced_generation, Some(3));
        assert_eq!(first.observed_generation, Some(3));
        assert_eq!(first.enforced_time, Some(time(10)));
        let c = enforced(&first);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Enforced"));
        assert!(!c.message.is_empty());
        // The same outcome later: identical, so nothing is written.
        assert_eq!(next(&first, 3, &Outcome::Enforced, &time(20)), first);
    }

    #[test]
    fn a_failure_keeps_the_enforced_generation_and_flips_the_condition() {
        let ok = next(&Default::default(), 3, &Outcome::Enforced, &time(10));
        let failed = next(&ok, 4, &Outcome::Failed("EPERM".into()), &time(20));
        assert_eq!(failed.enforced_generation, Some(3));
        assert_eq!(failed.enforced_time, Some(time(10)));
        assert_eq!(failed.observed_generation, Some(4));
        let c = enforced(&failed);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SyncFailed")
        );
        assert!(c.message.contains("EPERM"), "{}", c.message);
        assert_eq!(c.last_transition_time, time(20));
        let again = next(&failed, 4, &Outcome::Enforced, &time(30));
        assert_eq!(again.enforced_generation, Some(4));
        assert_eq!(enforced(&again).last_transition_time, time(30));
    }

    #[test]
    fn incomplete_sets_are_not_enforced_and_messages_are_never_empty() {
        let s = next(
            &Default::default(),
            1,
            &Outcome::Incomplete(vec!["address set a: no shard".into()]),
            &time(1),
        );
        assert_eq!(s.enforced_generation, None);
        assert_eq!(enforced(&s).reason, "AddressSetsIncomplete");
        let s = next(&s, 1, &Outcome::Failed(String::new()), &time(2));
        assert!(!enforced(&s).message.trim().is_empty());
        let long = next(&s, 1, &Outcome::Failed("x".repeat(5000)), &time(3));
        assert!(enforced(&long).message.len() <= MAX_MESSAGE);
    }

    #[test]
    fn the_apply_body_names_the_share_and_its_kind() {
        let s = next(&Default::default(), 2, &Outcome::Enforced, &time(1));
        let body = apply_body("n1", &s);
        assert_eq!(body["apiVersion"], "kubenft.io/v1alpha1");
        assert_eq!(body["metadata"]["name"], "n1");
        assert_eq!(body["status"]["enforcedGeneration"], 2);
        assert_eq!(body["status"]["conditions"][0]["type"], "Enforced");
    }
}
