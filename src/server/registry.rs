//! Which agent tunnel serves which cluster. A new agent for a cluster takes new streams at
//! once; the one it replaced drains. Removal is compare-and-remove (B1): a session's cleanup
//! removes only its own registration, never a newer agent's.

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
}

/// Removes its registration when dropped, if it is still the current one.
pub struct RegistrationGuard {
    registry: Arc<Registry>,
    cluster: String,
    registration: u64,
}

impl Registry {
    /// Routes `cluster` to `session`; returns the guard and the session it replaced, if any.
    pub fn register(
        self: &Arc<Self>,
        cluster: &str,
        session: SessionHandle,
    ) -> (RegistrationGuard, Option<SessionHandle>) {
        let registration = self.next_registration.fetch_add(1, Ordering::Relaxed);
        let previous = self.lock().insert(
            cluster.to_owned(),
            Route {
                registration,
                session,
            },
        );
        let guard = RegistrationGuard {
            registry: self.clone(),
            cluster: cluster.to_owned(),
            registration,
        };
        self.registered.notify_waiters();
        (guard, previous.map(|route| route.session))
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
        let (guard_a, replaced) = registry.register("c1", a.handle.clone());
        assert!(replaced.is_none());
        let (guard_b, replaced) = registry.register("c1", b.handle.clone());
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
        let (_guard, _) = registry.register("c1", a.handle.clone());
        a.handle.close();
        a.handle.closed().await;
        assert!(registry.lookup("c1").is_none());
        assert_eq!(registry.connected(), 0);
    }
}
