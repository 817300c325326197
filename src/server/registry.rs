//! Which agent tunnel serves which cluster. A new agent for a cluster takes new streams at
//! once; the one it replaced drains. Removal is compare-and-remove (B1): a session's cleanup
//! removes only its own registration, never a newer agent's.
//!
//! Newest wins, so a rolling update hands over without a gap; but two agents running for one
//! cluster (installed twice, or an old pod still up) would then take the route from each other
//! on every redial, ending each other's watches. So a route remembers the agent instance it
//! displaced, and that instance is refused while the route is live: it stands by and gets the
//! route once the serving agent is gone. Agents that name no instance (Go agents) are never
//! refused and keep newest-wins.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::mux::SessionHandle;

/// cluster id → the live tunnel.
#[derive(Default)]
pub struct Registry {
    routes: Mutex<HashMap<String, Route>>,
    next_registration: AtomicU64,
    /// Woken on every registration, for requests waiting for an agent to come back.
    registered: tokio::sync::Notify,
}

struct Route {
    registration: u64,
    session: SessionHandle,
    /// The serving agent's instance, if it named one.
    instance: Option<Instance>,
    /// Instances this route's agent and its predecessors displaced (newest last, at most
    /// [`MAX_DISPLACED`]): refused while this route is live, so three agents settle too.
    displaced: Vec<Instance>,
}

/// How many displaced instances a route remembers.
pub const MAX_DISPLACED: usize = 8;

/// An agent process's self-chosen id (`handshake::AGENT_INSTANCE_HEADER`); opaque, bounded.
pub type Instance = Box<str>;

/// Longer instance values are ignored (treated as absent), so a peer cannot make the registry
/// hold more than this per cluster.
pub const MAX_INSTANCE: usize = 64;

/// The instance an upgrade request names, if its value is usable.
pub fn instance_of(value: Option<&http::HeaderValue>) -> Option<Instance> {
    let bytes = value?.as_bytes();
    let usable = !bytes.is_empty()
        && bytes.len() <= MAX_INSTANCE
        && bytes.iter().all(|byte| byte.is_ascii_graphic());
    usable.then(|| String::from_utf8_lossy(bytes).into())
}

/// A registration's predecessor: its session (to retire) and agent instance (for the log).
pub struct Replaced {
    /// The replaced tunnel, to retire.
    pub session: SessionHandle,
    /// Its agent's instance, if it named one.
    pub instance: Option<Instance>,
}

/// Removes its registration when dropped, if it is still the current one.
pub struct RegistrationGuard {
    registry: Arc<Registry>,
    cluster: String,
    registration: u64,
}

impl Registry {
    /// Routes `cluster` to `session` of agent `instance`; returns the guard and what it
    /// replaced, if anything.
    pub fn register(
        self: &Arc<Self>,
        cluster: &str,
        session: SessionHandle,
        instance: Option<Instance>,
    ) -> (RegistrationGuard, Option<Replaced>) {
        let registration = self.next_registration.fetch_add(1, Ordering::Relaxed);
        let mut routes = self.lock();
        let previous = routes.remove(cluster);
        let mut displaced = Vec::new();
        if let Some(route) = &previous {
            displaced.extend(route.displaced.iter().cloned());
            displaced.extend(route.instance.clone());
            // An instance replacing its own stale session (it redialled before the server saw
            // the old tunnel die) displaces nobody, and is not displaced itself any more.
            displaced.retain(|old| Some(old) != instance.as_ref());
            let excess = displaced.len().saturating_sub(MAX_DISPLACED);
            displaced.drain(..excess);
        }
        routes.insert(
            cluster.to_owned(),
            Route {
                registration,
                session,
                instance,
                displaced,
            },
        );
        drop(routes);
        let guard = RegistrationGuard {
            registry: self.clone(),
            cluster: cluster.to_owned(),
            registration,
        };
        self.registered.notify_waiters();
        let replaced = previous.map(|route| Replaced {
            session: route.session,
            instance: route.instance,
        });
        (guard, replaced)
    }

    /// Whether agent `instance` must stand by: the cluster's live route displaced it, and
    /// is not its own.
    pub fn stands_by(&self, cluster: &str, instance: Option<&str>) -> bool {
        let Some(instance) = instance else {
            return false;
        };
        self.lock().get(cluster).is_some_and(|route| {
            !route.session.is_closed()
                && route.displaced.iter().any(|old| **old == *instance)
                && route.instance.as_deref() != Some(instance)
        })
    }

    /// The live tunnel for `cluster`. A dead session still registered (its cleanup is running)
    /// is not returned (B3/B4: never route to a zombie).
    pub fn lookup(&self, cluster: &str) -> Option<SessionHandle> {
        let routes = self.lock();
        let route = routes.get(cluster)?;
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
            .iter()
            .filter(|(_, route)| !route.session.is_closed())
            .map(|(cluster, route)| (cluster.clone(), route.session.clone()))
            .collect()
    }

    /// Registered tunnels, counting one whose cleanup is running. O(1): the status line asks on
    /// every connect and disconnect, and [`Self::connected`] there made 10,000 agents
    /// reconnecting cost 10,000² session checks.
    pub fn registered(&self) -> usize {
        self.lock().len()
    }

    /// Live tunnels (visits every route: for metrics and reloads, not per connect).
    pub fn connected(&self) -> usize {
        self.lock()
            .values()
            .filter(|route| !route.session.is_closed())
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for RegistrationGuard {
    fn drop(&mut self) {
        let mut routes = self.registry.lock();
        if routes
            .get(&self.cluster)
            .is_some_and(|route| route.registration == self.registration)
        {
            routes.remove(&self.cluster);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::testing::session_pair;
    use crate::mux::Limits;
    use crate::protocol::Version;

    /// B1: agent B replaces agent A; A's cleanup must not remove B.
    #[tokio::test]
    async fn stale_cleanup_never_removes_the_newer_agent() {
        let registry = Arc::new(Registry::default());
        let (a, _a_agent) = session_pair(Version::V2, Limits::default(), Limits::default());
        let (b, _b_agent) = session_pair(Version::V2, Limits::default(), Limits::default());
        let (guard_a, replaced) = registry.register("c1", a.handle.clone(), None);
        assert!(replaced.is_none());
        let (guard_b, replaced) = registry.register("c1", b.handle.clone(), None);
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
        let (a, _a_agent) = session_pair(Version::V2, Limits::default(), Limits::default());
        let (_guard, _) = registry.register("c1", a.handle.clone(), None);
        a.handle.close();
        a.handle.closed().await;
        assert!(registry.lookup("c1").is_none());
        assert_eq!(registry.connected(), 0);
    }

    fn instance(name: &str) -> Option<Instance> {
        Some(name.into())
    }

    /// Two agents for one cluster: the displaced one stands by while the route is live, and
    /// is welcome again once the serving agent's tunnel is gone.
    #[tokio::test]
    async fn a_displaced_instance_stands_by_until_the_route_dies() {
        let registry = Arc::new(Registry::default());
        let (a, _a_agent) = session_pair(Version::V2, Limits::default(), Limits::default());
        let (b, _b_agent) = session_pair(Version::V2, Limits::default(), Limits::default());
        let (_guard_a, _) = registry.register("c1", a.handle.clone(), instance("A"));
        assert!(!registry.stands_by("c1", Some("B")), "nobody displaced B");
        let (_guard_b, replaced) = registry.register("c1", b.handle.clone(), instance("B"));
        assert_eq!(replaced.unwrap().instance.as_deref(), Some("A"));
        assert!(registry.stands_by("c1", Some("A")));
        assert!(
            !registry.stands_by("c1", Some("B")),
            "B redialling its own route"
        );
        assert!(
            !registry.stands_by("c1", Some("C")),
            "a third, new agent still wins"
        );
        assert!(
            !registry.stands_by("c1", None),
            "a Go agent (no instance) still wins"
        );
        assert!(
            !registry.stands_by("c2", Some("A")),
            "other clusters are untouched"
        );
        b.handle.close();
        b.handle.closed().await;
        assert!(
            !registry.stands_by("c1", Some("A")),
            "B's tunnel is gone: A takes over"
        );
    }

    /// Three agents settle too: each newcomer inherits the displaced list; the serving
    /// instance redialling over its own stale session displaces nobody; the list is bounded.
    #[tokio::test]
    async fn displaced_instances_are_inherited_and_bounded() {
        let registry = Arc::new(Registry::default());
        let mut guards = Vec::new();
        let mut peers = Vec::new();
        for name in ["A", "B", "C", "C"] {
            let (session, peer) = session_pair(Version::V2, Limits::default(), Limits::default());
            guards.push(
                registry
                    .register("c1", session.handle.clone(), instance(name))
                    .0,
            );
            peers.push((session, peer));
        }
        assert!(registry.stands_by("c1", Some("A")));
        assert!(registry.stands_by("c1", Some("B")));
        assert!(!registry.stands_by("c1", Some("C")));
        for n in 0..2 * MAX_DISPLACED {
            let (session, peer) = session_pair(Version::V2, Limits::default(), Limits::default());
            let name = format!("N{n}");
            guards.push(
                registry
                    .register("c1", session.handle.clone(), instance(&name))
                    .0,
            );
            peers.push((session, peer));
        }
        let remembered = (0..2 * MAX_DISPLACED - 1)
            .filter(|n| registry.stands_by("c1", Some(&format!("N{n}"))))
            .count();
        assert_eq!(remembered, MAX_DISPLACED);
        assert!(
            !registry.stands_by("c1", Some("A")),
            "the oldest are forgotten"
        );
    }

    #[test]
    fn only_short_visible_instance_values_are_used() {
        let value = |text: &str| http::HeaderValue::from_str(text).unwrap();
        assert_eq!(instance_of(Some(&value("a1b2"))).as_deref(), Some("a1b2"));
        assert_eq!(instance_of(None), None);
        assert_eq!(instance_of(Some(&value(""))), None);
        assert_eq!(instance_of(Some(&value("has space"))), None);
        let longest = "x".repeat(MAX_INSTANCE);
        assert!(instance_of(Some(&value(&longest))).is_some());
        assert_eq!(instance_of(Some(&value(&format!("{longest}x")))), None);
        let high = http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
        assert_eq!(instance_of(Some(&high)), None);
    }
}
