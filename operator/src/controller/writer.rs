//! Carries out a [`Plan`]: server-side apply and delete, each write retried a
//! few times, one object's failure never stopping the others, and never
//! breaking what an agent reads:
//!
//! * a shard that fails stops the rest of **its** set (its predecessors would
//!   name it in `spec.next`); other sets go on;
//! * a share naming a set whose shards failed waits (the agent would not find
//!   the set);
//! * the old shards of a set that failed stay, and so do those of a gone set
//!   that some applied share still names.
//!
//! What was held back or failed comes back as [`Dirty`] for the next pass.
//! Before every write the caller's `go_on` is asked (still leader, not
//! shutting down): by the plan's order, stopping between two writes is safe.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::Api;
use kube_nft_crds::resources::{referenced_sets, AddressSetShard, NodePolicyShare};

use super::desired::{Applied, Dirty, Plan, MANAGER};
use super::metrics::Metrics;

/// Attempts per write, and the pause before the first retry (doubling).
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// One write.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    ApplyShard(&'a AddressSetShard),
    ApplyShare(&'a NodePolicyShare),
    DeleteShard(&'a str),
    DeleteShare(&'a str),
}

impl Op<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::ApplyShard(_) | Op::DeleteShard(_) => "AddressSetShard",
            Op::ApplyShare(_) | Op::DeleteShare(_) => "NodePolicyShare",
        }
    }

    pub fn verb(&self) -> &'static str {
        match self {
            Op::ApplyShard(_) | Op::ApplyShare(_) => "apply",
            Op::DeleteShard(_) | Op::DeleteShare(_) => "delete",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Op::ApplyShard(s) => s.metadata.name.as_deref().unwrap_or_default(),
            Op::ApplyShare(s) => s.metadata.name.as_deref().unwrap_or_default(),
            Op::DeleteShard(n) | Op::DeleteShare(n) => n,
        }
    }
}

/// Why a write failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WriteError {
    pub retryable: bool,
    pub message: String,
}

impl From<kube::Error> for WriteError {
    fn from(e: kube::Error) -> Self {
        let retryable = match &e {
            // Throttled, conflicting, or the server's own trouble.
            kube::Error::Api(s) => s.code == 429 || s.code == 409 || s.code >= 500,
            // Connection and transport problems.
            _ => true,
        };
        WriteError {
            retryable,
            message: e.to_string(),
        }
    }
}

/// Where writes go: the API server, or a fake in tests.
pub trait Store {
    fn write(&self, op: Op<'_>) -> impl Future<Output = Result<(), WriteError>> + Send;
}

/// The API server, through server-side apply under the operator's field
/// manager (forced: the operator owns these objects, and a hand edit must not
/// block it).
#[derive(Clone)]
pub struct KubeStore {
    shares: Api<NodePolicyShare>,
    shards: Api<AddressSetShard>,
}

impl KubeStore {
    pub fn new(client: kube::Client) -> KubeStore {
        KubeStore {
            shares: Api::all(client.clone()),
            shards: Api::all(client),
        }
    }
}

impl Store for KubeStore {
    async fn write(&self, op: Op<'_>) -> Result<(), WriteError> {
        let apply = PatchParams::apply(MANAGER).force();
        let result = match op {
            Op::ApplyShard(s) => self
                .shards
                .patch(op.name(), &apply, &Patch::Apply(s))
                .await
                .map(drop),
            Op::ApplyShare(s) => self
                .shares
                .patch(op.name(), &apply, &Patch::Apply(s))
                .await
                .map(drop),
            Op::DeleteShard(n) => self
                .shards
                .delete(n, &DeleteParams::default())
                .await
                .map(drop),
            Op::DeleteShare(n) => self
                .shares
                .delete(n, &DeleteParams::default())
                .await
                .map(drop),
        };
        match result {
            // Already gone is what a delete wants.
            Err(kube::Error::Api(s)) if s.code == 404 && op.verb() == "delete" => Ok(()),
            other => other.map_err(WriteError::from),
        }
    }
}

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub written: usize,
    pub failed: usize,
    /// Held back or failed: for the next pass.
    pub retry: Dirty,
    /// `go_on` said stop before the plan was done.
    pub interrupted: bool,
}

/// Runs `plan` (see the module doc), recording each success in `applied`.
pub async fn execute<S: Store>(
    store: &S,
    plan: Plan,
    applied: &mut Applied,
    metrics: &Metrics,
    go_on: &(dyn Fn() -> bool + Sync),
) -> Outcome {
    let mut out = Outcome::default();
    let mut failed_sets = BTreeSet::new();

    for (set, shards) in &plan.shard_applies {
        for shard in shards {
            if !go_on() {
                out.interrupted = true;
                return out;
            }
            if write(store, Op::ApplyShard(shard), metrics, &mut out).await {
                let name = shard.metadata.name.clone().unwrap_or_default();
                applied.put_shard(name, shard.spec.clone());
            } else {
                failed_sets.insert(set.clone());
                out.retry.sets.insert(set.clone());
                break;
            }
        }
    }

    for share in &plan.share_applies {
        let name = share.metadata.name.clone().unwrap_or_default();
        if referenced_sets(&share.spec.policy)
            .iter()
            .any(|s| failed_sets.contains(*s))
        {
            tracing::debug!(share = %name, "held back: a set it names failed to write");
            out.retry.nodes.insert(name);
            continue;
        }
        if !go_on() {
            out.interrupted = true;
            return out;
        }
        if write(store, Op::ApplyShare(share), metrics, &mut out).await {
            applied.put_share(name, share.spec.clone());
        } else {
            out.retry.nodes.insert(name);
        }
    }

    // Sets some applied share still names (only needed for whole-set deletes).
    let still_named: BTreeSet<String> = if plan.shard_deletes.iter().any(|d| d.whole_set) {
        applied
            .shares
            .values()
            .flat_map(|s| referenced_sets(&s.policy))
            .map(str::to_string)
            .collect()
    } else {
        BTreeSet::new()
    };
    for del in &plan.shard_deletes {
        if failed_sets.contains(&del.set) {
            continue;
        }
        if del.whole_set && still_named.contains(&del.set) {
            tracing::debug!(set = %del.set, "shards kept: an applied share still names the set");
            out.retry.sets.insert(del.set.clone());
            continue;
        }
        for name in &del.names {
            if !go_on() {
                out.interrupted = true;
                return out;
            }
            if write(store, Op::DeleteShard(name), metrics, &mut out).await {
                applied.remove_shard(name);
            } else {
                out.retry.sets.insert(del.set.clone());
            }
        }
    }

    for name in &plan.share_deletes {
        if !go_on() {
            out.interrupted = true;
            return out;
        }
        if write(store, Op::DeleteShare(name), metrics, &mut out).await {
            applied.remove_share(name);
        } else {
            out.retry.nodes.insert(name.clone());
        }
    }
    out
}

/// One write with its retries; true on success.
async fn write<S: Store>(store: &S, op: Op<'_>, metrics: &Metrics, out: &mut Outcome) -> bool {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        match store.write(op).await {
            Ok(()) => {
                metrics.wrote(op.kind(), op.verb());
                out.written += 1;
                tracing::debug!(
                    kind = op.kind(),
                    name = op.name(),
                    op = op.verb(),
                    "written"
                );
                return true;
            }
            Err(e) if e.retryable && attempt < ATTEMPTS => {
                tracing::debug!(kind = op.kind(), name = op.name(), op = op.verb(), error = %e, attempt, "retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => {
                metrics.error(op.kind(), "write");
                out.failed += 1;
                tracing::warn!(kind = op.kind(), name = op.name(), op = op.verb(), error = %e, "write failed");
                return false;
            }
        }
    }
    false
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
