//! Which agent tunnel serves which cluster. A new agent for a cluster takes new streams at
//! once; the one it replaced drains. Removal is compare-and-remove (B1): a session's cleanup
//! removes only its own registration, never a newer agent's. Each cluster also keeps its
//! serving history, so a displaced agent stands by instead of taking the route back
//! ([`super::standby`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::standby::{Applicant, History, Instance, Tunnel};
use crate::mux::SessionHandle;

/// cluster id → its tunnel and serving history.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    next_registration: AtomicU64,
    /// Woken on every registration, for requests waiting for an agent to come back.
    registered: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    /// One slot per cluster that ever had an agent; [`Registry::forget_unless`] drops those of
    /// clusters a reload removed.
    slots: HashMap<String, Slot>,
    /// Slots with a route, kept so the status line counts in O(1).
    routed: usize,
}

#[derive(Default)]
struct Slot {
    route: Option<Route>,
    /// When the last route ended (`None` while routed or never routed).
    ended: Option<Instant>,
    history: History,
}

impl Slot {
    fn tunnel(&self) -> Tunnel {
        match (&self.route, self.ended) {
            (Some(route), _) if route.session.is_closed() => Tunnel::Closing,
            (Some(_), _) => Tunnel::Up,
            (None, Some(ended)) => Tunnel::EndedAt(ended),
            (None, None) => Tunnel::Never,
        }
    }
}

struct Route {
    registration: u64,
    session: SessionHandle,
}

/// A registration's predecessor: its session (to retire) and agent instance (for the log).
pub struct Replaced {
    /// The replaced tunnel, to retire.
    pub session: SessionHandle,
    /// Its agent's instance, if it named one.
    pub instance: Option<Instance>,
}

/// The applicant must stand by: a newer agent of the cluster serves.
#[derive(Debug)]
pub struct StandBy;

/// Removes its registration when dropped, if it is still the current one.
pub struct RegistrationGuard {
    registry: Arc<Registry>,
    cluster: String,
    registration: u64,
}

impl Registry {
    /// Whether `applicant` must stand by for `cluster` (checked before the upgrade, so a
    /// standby's poll costs a 409, not a tunnel).
    pub fn stands_by(&self, cluster: &str, applicant: Applicant<'_>) -> bool {
        let inner = self.lock();
        inner.slots.get(cluster).is_some_and(|slot| {
            slot.history
                .refuses(applicant, slot.tunnel(), Instant::now())
        })
    }

    /// Routes `cluster` to `session` of `applicant`; returns the guard and what it replaced.
    /// Checks [`Self::stands_by`] again under the lock: another agent may have registered
    /// since the check before the upgrade.
    pub fn register(
        self: &Arc<Self>,
        cluster: &str,
        session: SessionHandle,
        applicant: Applicant<'_>,
    ) -> Result<(RegistrationGuard, Option<Replaced>), StandBy> {
        let registration = self.next_registration.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        let slot = inner.slots.entry(cluster.to_owned()).or_default();
        if slot
            .history
            .refuses(applicant, slot.tunnel(), Instant::now())
        {
            return Err(StandBy);
        }
        let previous_instance = slot.history.serving().map(Instance::from);
        slot.history.serve(applicant);
        slot.ended = None;
        let previous = slot.route.replace(Route {
            registration,
            session,
        });
        if previous.is_none() {
            inner.routed += 1;
        }
        drop(inner);
        let guard = RegistrationGuard {
            registry: self.clone(),
            cluster: cluster.to_owned(),
            registration,
        };
        self.registered.notify_waiters();
        let replaced = previous.map(|route| Replaced {
            session: route.session,
            instance: previous_instance,
        });
        Ok((guard, replaced))
    }

    /// The live tunnel for `cluster`. A dead session still registered (its cleanup is running)
    /// is not returned (B3/B4: never route to a zombie).
    pub fn lookup(&self, cluster: &str) -> Option<SessionHandle> {
        let inner = self.lock();
        let route = inner.slots.get(cluster)?.route.as_ref()?;
        (!route.session.is_closed()).then(|| route.session.clone())
    }

    /// [`Self::lookup`], waiting up to `wait` for the cluster's agent to (re)connect.
    pub async fn wait_for(
        &self,
        cluster: &str,
        wait: std::time::Duration,
    ) -> Option<SessionHandle> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered for the wake-up before looking, so a registration in between is seen.
            let registered = self.registered.notified();
            tokio::pin!(registered);
            registered.as_mut().enable();
            if let Some(session) = self.lookup(cluster) {
                return Some(session);
            }
            if tokio::time::timeout_at(deadline, registered).await.is_err() {
                return None;
            }
        }
    }

    /// Every live tunnel with its cluster id (for metrics).
    pub fn sessions(&self) -> Vec<(String, SessionHandle)> {
        self.lock()
            .slots
            .iter()
            .filter_map(|(cluster, slot)| Some((cluster, slot.route.as_ref()?)))
            .filter(|(_, route)| !route.session.is_closed())
            .map(|(cluster, route)| (cluster.clone(), route.session.clone()))
            .collect()
    }

    /// Registered tunnels, counting one whose cleanup is running. O(1): the status line asks on
    /// every connect and disconnect, and [`Self::connected`] there made 10,000 agents
    /// reconnecting cost 10,000² session checks.
    pub fn registered(&self) -> usize {
        self.lock().routed
    }

    /// Live tunnels (visits every route: for metrics and reloads, not per connect).
    pub fn connected(&self) -> usize {
        self.lock()
            .slots
            .values()
            .filter_map(|slot| slot.route.as_ref())
            .filter(|route| !route.session.is_closed())
            .count()
    }

    /// Drops the history of clusters without a tunnel that `configured` no longer names (after
    /// a reload removed them; the retired tunnels' slots go at the next reload).
    pub fn forget_unless(&self, configured: impl Fn(&str) -> bool) {
        self.lock()
            .slots
            .retain(|cluster, slot| slot.route.is_some() || configured(cluster));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for RegistrationGuard {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        let Some(slot) = inner.slots.get_mut(&self.cluster) else {
            return;
        };
        if slot
            .route
            .as_ref()
            .is_some_and(|route| route.registration == self.registration)
        {
            slot.route = None;
            slot.ended = Some(Instant::now());
            inner.routed -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::testing::session_pair;
    use crate::mux::{Limits, Session};
    use crate::protocol::Version;

    const TOKEN: [u8; 32] = [7; 32];

    fn agent(instance: Option<&str>) -> Applicant<'_> {
        Applicant {
            instance,
            credential: &TOKEN,
        }
    }

    fn tunnel() -> (Session, Session) {
        session_pair(Version::V2, Limits::default(), Limits::default())
    }

    /// B1: agent B replaces agent A; A's cleanup must not remove B.
    #[tokio::test]
    async fn stale_cleanup_never_removes_the_newer_agent() {
        let registry = Arc::new(Registry::default());
        let ((a, _a_agent), (b, _b_agent)) = (tunnel(), tunnel());
        let (guard_a, replaced) = registry
            .register("c1", a.handle.clone(), agent(None))
            .unwrap();
        assert!(replaced.is_none());
        let (guard_b, replaced) = registry
            .register("c1", b.handle.clone(), agent(None))
            .unwrap();
        assert!(replaced.is_some());
        drop(guard_a);
        assert!(registry.lookup("c1").is_some(), "A's cleanup removed B");
        assert_eq!(registry.connected(), 1);
        assert_eq!(registry.registered(), 1);
        drop(guard_b);
        assert!(registry.lookup("c1").is_none());
        assert_eq!(registry.registered(), 0);
    }

    #[tokio::test]
    async fn closed_sessions_are_not_routed_to() {
        let registry = Arc::new(Registry::default());
        let (a, _a_agent) = tunnel();
        let (_guard, _) = registry
            .register("c1", a.handle.clone(), agent(None))
            .unwrap();
        a.handle.close();
        a.handle.closed().await;
        assert!(registry.lookup("c1").is_none());
        assert_eq!(registry.connected(), 0);
    }

    /// A displaced agent is refused, by the check before the upgrade and again at
    /// registration, while the serving tunnel is up and for the grace after it ends (the
    /// serving agent's own redial wins that race, and keeps the history); then it takes over.
    #[tokio::test(start_paused = true)]
    async fn a_displaced_agent_stands_by_through_the_serving_agents_redial() {
        let registry = Arc::new(Registry::default());
        let ((a, _a_agent), (b, _b_agent)) = (tunnel(), tunnel());
        let (_guard_a, _) = registry
            .register("c1", a.handle.clone(), agent(Some("A")))
            .unwrap();
        let (guard_b, replaced) = registry
            .register("c1", b.handle.clone(), agent(Some("B")))
            .unwrap();
        assert_eq!(replaced.unwrap().instance.as_deref(), Some("A"));
        assert!(registry.stands_by("c1", agent(Some("A"))));
        assert!(
            !registry.stands_by("c2", agent(Some("A"))),
            "other clusters are untouched"
        );
        let (a2, _a2_agent) = tunnel();
        assert!(registry
            .register("c1", a2.handle.clone(), agent(Some("A")))
            .is_err());
        // B's tunnel ends; B redials within the grace and keeps the route and the history.
        drop(guard_b);
        assert_eq!(registry.registered(), 0);
        assert!(
            registry.stands_by("c1", agent(Some("A"))),
            "within the grace"
        );
        let (b2, _b2_agent) = tunnel();
        let (guard_b2, _) = registry
            .register("c1", b2.handle.clone(), agent(Some("B")))
            .unwrap();
        assert!(registry.stands_by("c1", agent(Some("A"))));
        // B leaves for good: after the grace A takes over, and B is the displaced one.
        drop(guard_b2);
        tokio::time::advance(crate::server::standby::SERVING_AGENT_GRACE).await;
        assert!(!registry.stands_by("c1", agent(Some("A"))));
        let (a3, _a3_agent) = tunnel();
        let (_guard_a3, _) = registry
            .register("c1", a3.handle.clone(), agent(Some("A")))
            .unwrap();
        assert!(registry.stands_by("c1", agent(Some("B"))));
    }

    #[tokio::test]
    async fn a_reload_forgets_removed_clusters_without_a_tunnel() {
        let registry = Arc::new(Registry::default());
        let ((a, _a_agent), (b, _b_agent)) = (tunnel(), tunnel());
        let (guard, _) = registry
            .register("gone", a.handle.clone(), agent(Some("A")))
            .unwrap();
        let (_kept, _) = registry
            .register("kept", b.handle.clone(), agent(Some("B")))
            .unwrap();
        registry.forget_unless(|cluster| cluster == "kept");
        assert_eq!(
            registry.lock().slots.len(),
            2,
            "a tunnel still up keeps its slot"
        );
        drop(guard);
        registry.forget_unless(|cluster| cluster == "kept");
        assert_eq!(registry.lock().slots.len(), 1);
        assert_eq!(registry.registered(), 1);
    }
}
