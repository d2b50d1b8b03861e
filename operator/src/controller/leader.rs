//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go
//! does it, so two replicas never write at once.
//!
//! * A candidate takes the Lease when it is absent, has no holder (released),
//!   is held by itself, or has not changed for its `leaseDurationSeconds` **by
//!   the candidate's own clock** (it remembers when it last saw the Lease's
//!   `resourceVersion` change, so clock skew between machines does not
//!   matter). Takes and renewals are updates carrying the read
//!   `resourceVersion`: of two candidates, one wins and the other gets a
//!   conflict.
//! * The holder renews every `duration / 5`. It may write only until
//!   [`LeaseConfig::renew_deadline`] (2/3 of the duration) after the start of
//!   its last successful renewal: the [`Leadership`] it publishes is that
//!   deadline, so a leader cut off from the API server stops writing before
//!   any standby can take over.
//! * On shutdown the holder releases the Lease (no holder, a duration of one
//!   second), so a standby takes over at its next poll (every `duration / 10`,
//!   at least 200 ms) instead of waiting for the term to run out.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;
use tokio::sync::watch;
use tokio::time::Instant;

use super::metrics::Metrics;

/// `Some(deadline)`: this replica leads and may write until `deadline`.
pub type Leadership = Option<Instant>;

/// Whether `leadership` allows writing now.
pub fn may_write(leadership: &Leadership) -> bool {
    leadership.is_some_and(|until| Instant::now() < until)
}

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

impl LeaseConfig {
    /// How often the holder renews.
    pub fn renew_period(&self) -> Duration {
        self.duration / 5
    }

    /// How often a standby looks at the Lease.
    pub fn poll_period(&self) -> Duration {
        (self.duration / 10).max(Duration::from_millis(200))
    }

    /// How long after a successful renewal the holder may still write.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// What a candidate does with a Lease it has read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It holds the Lease: renew.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Someone else holds it.
    Wait,
}

/// The step for a Lease held by `holder` (`None` or empty: released).
pub fn step(holder: Option<&str>, me: &str, expired: bool) -> Step {
    match holder.filter(|h| !h.is_empty()) {
        Some(h) if h == me => Step::Renew,
        None => Step::Acquire,
        Some(_) if expired => Step::Acquire,
        Some(_) => Step::Wait,
    }
}

/// When the Lease last changed, by this process's clock.
#[derive(Debug, Default)]
pub struct Observer {
    seen: Option<(String, Instant)>,
}

impl Observer {
    /// Records the Lease at `version` seen at `now`; true when it has not
    /// changed for `duration`.
    pub fn expired(&mut self, version: &str, duration: Duration, now: Instant) -> bool {
        let since = match &self.seen {
            Some((v, since)) if v == version => *since,
            _ => {
                self.seen = Some((version.to_string(), now));
                now
            }
        };
        now.duration_since(since) >= duration
    }
}

/// Campaigns for the Lease until `release` turns true, publishing the
/// [`Leadership`] on `leader`; then releases the Lease if held, publishes
/// `None` and returns.
pub async fn run(
    api: Api<Lease>,
    config: LeaseConfig,
    leader: watch::Sender<Leadership>,
    mut release: watch::Receiver<bool>,
    metrics: Metrics,
) {
    let mut observer = Observer::default();
    let mut leading = false;
    loop {
        if *release.borrow() {
            break;
        }
        let started = Instant::now();
        let attempt = tokio::time::timeout(
            config.renew_period().max(Duration::from_millis(500)),
            attempt(&api, &config, &mut observer, started),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in time")));
        match attempt {
            Ok(true) => {
                if !leading {
                    tracing::info!(lease = %config.name, identity = %config.identity, "leading");
                }
                leading = true;
                leader.send_replace(Some(started + config.renew_deadline()));
            }
            Ok(false) => {
                if leading {
                    tracing::warn!(lease = %config.name, "lost the lease to another replica");
                }
                leading = false;
                leader.send_replace(None);
            }
            Err(e) => {
                metrics.error("Lease", "lease");
                tracing::warn!(lease = %config.name, error = %e, "lease update failed");
                // The published deadline fences writes already; say so once
                // it has passed.
                if leading && !may_write(&leader.borrow()) {
                    tracing::warn!(lease = %config.name, "stepping down: could not renew in time");
                    leading = false;
                    leader.send_replace(None);
                }
            }
        }
        metrics.set_leader(leading);
        let pause = if leading {
            config.renew_period()
        } else {
            config.poll_period()
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            r = release.changed() => if r.is_err() { break },
        }
    }
    if leading {
        match release_lease(&api, &config).await {
            Ok(()) => tracing::info!(lease = %config.name, "lease released"),
            Err(e) => {
                metrics.error("Lease", "lease");
                tracing::warn!(lease = %config.name, error = %e, "releasing the lease failed; a standby takes over when it expires");
            }
        }
    }
    metrics.set_leader(false);
    leader.send_replace(None);
}

/// One read and, if due, one update; true when this replica holds the Lease
/// afterwards.
async fn attempt(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observer: &mut Observer,
    now: Instant,
) -> anyhow::Result<bool> {
    let wall = MicroTime(Timestamp::now());
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(config.duration_seconds()),
                acquire_time: Some(wall.clone()),
                renew_time: Some(wall),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    let version = lease.metadata.resource_version.clone().unwrap_or_default();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let term = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(config.duration, Duration::from_secs);
    let expired = observer.expired(&version, term, now);
    match step(spec.holder_identity.as_deref(), &config.identity, expired) {
        Step::Wait => return Ok(false),
        Step::Renew => {
            spec.renew_time = Some(wall);
            spec.lease_duration_seconds = Some(config.duration_seconds());
        }
        Step::Acquire => {
            spec.holder_identity = Some(config.identity.clone());
            spec.acquire_time = Some(wall.clone());
            spec.renew_time = Some(wall);
            spec.lease_duration_seconds = Some(config.duration_seconds());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
    }
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        // Someone else updated it first; the next read tells who holds it.
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Clears the holder (if it is us) so a standby takes over at once.
async fn release_lease(api: &Api<Lease>, config: &LeaseConfig) -> anyhow::Result<()> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    api.replace(&config.name, &PostParams::default(), &lease)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps() {
        assert_eq!(step(Some("a"), "a", false), Step::Renew);
        assert_eq!(step(Some("a"), "a", true), Step::Renew);
        assert_eq!(step(None, "a", false), Step::Acquire);
        assert_eq!(step(Some(""), "a", false), Step::Acquire);
        assert_eq!(step(Some("b"), "a", false), Step::Wait);
        assert_eq!(step(Some("b"), "a", true), Step::Acquire);
    }

    #[test]
    fn expiry_runs_on_the_observers_clock() {
        let d = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut o = Observer::default();
        // A Lease seen for the first time is fresh, however old its
        // renewTime says it is.
        assert!(!o.expired("1", d, t0));
        assert!(!o.expired("1", d, t0 + Duration::from_secs(9)));
        assert!(o.expired("1", d, t0 + Duration::from_secs(10)));
        // A change (a renewal) restarts the term.
        assert!(!o.expired("2", d, t0 + Duration::from_secs(11)));
        assert!(!o.expired("2", d, t0 + Duration::from_secs(20)));
        assert!(o.expired("2", d, t0 + Duration::from_secs(21)));
    }

    #[test]
    fn a_leader_stops_writing_before_a_standby_may_take_over() {
        let c = LeaseConfig {
            name: "l".into(),
            identity: "a".into(),
            duration: Duration::from_secs(10),
        };
        assert!(c.renew_deadline() < c.duration);
        assert!(c.renew_period() < c.renew_deadline());
        assert_eq!(c.poll_period(), Duration::from_secs(1));
        let past = Some(Instant::now() - Duration::from_millis(1));
        assert!(!may_write(&past));
        assert!(!may_write(&None));
        assert!(may_write(&Some(Instant::now() + Duration::from_secs(1))));
    }
}
