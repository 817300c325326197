//! Which of two agents of one cluster serves, as a pure rule the registry applies.
//!
//! Newest wins, so a rolling update hands over without a gap. But two agents that both stay up
//! (the token installed twice, on a jump host and in the cluster; an old pod still running)
//! would then take the route from each other on every redial, each swap ending the streams
//! (watches, `logs -f`) of the tunnel it retires. So each cluster keeps a short history: the
//! agent instance serving it and the instances it and its predecessors displaced. A displaced
//! instance is refused (409) and stands by while the serving agent's tunnel is up, and for
//! [`SERVING_AGENT_GRACE`] after it ends, so the serving agent's own redial after a blip wins
//! the race; then the standby's next attempt takes over. The history outlives the tunnel for
//! that reason. Two exceptions keep this from locking anyone out: an agent that names no
//! instance (the Go agent) is never refused, and neither is one holding a newer token than the
//! serving agent's (after a rotation, the agent with the new token wins: a leaked old token
//! must not keep the route).

use std::time::Duration;

use tokio::time::Instant;

/// An agent process's self-chosen id (`handshake::AGENT_INSTANCE_HEADER`); opaque, bounded.
pub type Instance = Box<str>;

/// Longer instance values are ignored (treated as absent), so a peer cannot make the registry
/// hold more than this per remembered instance.
pub const MAX_INSTANCE: usize = 64;

/// How many displaced instances a cluster remembers (newest kept).
pub const MAX_DISPLACED: usize = 8;

/// How long after the serving agent's tunnel ends its displaced agents are still refused: its
/// first redial after a connection that lasted comes within 0.5 s (`agent::backoff`).
pub const SERVING_AGENT_GRACE: Duration = Duration::from_secs(5);

/// The instance an upgrade request names, if its value is usable.
pub fn instance_of(value: Option<&http::HeaderValue>) -> Option<Instance> {
    let bytes = value?.as_bytes();
    let usable = !bytes.is_empty()
        && bytes.len() <= MAX_INSTANCE
        && bytes.iter().all(|byte| byte.is_ascii_graphic());
    usable.then(|| String::from_utf8_lossy(bytes).into())
}

/// Who asks for a cluster's route.
#[derive(Clone, Copy)]
pub struct Applicant<'a> {
    /// Its instance, if it named one.
    pub instance: Option<&'a str>,
    /// The hash of the token it authenticated with.
    pub credential: &'a [u8; 32],
}

/// The serving agent's tunnel, as the registry sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tunnel {
    /// Registered and open.
    Up,
    /// Registered but closed (its cleanup is running): it just ended.
    Closing,
    /// Not registered since this time.
    EndedAt(Instant),
    /// Never registered.
    Never,
}

/// One cluster's serving history.
#[derive(Default)]
pub struct History {
    /// The instance of the current or last registration.
    serving: Option<Instance>,
    /// The token hash the current or last registration authenticated with.
    credential: Option<[u8; 32]>,
    /// Instances displaced by the serving agent and its predecessors (newest last).
    displaced: Vec<Instance>,
}

impl History {
    /// Whether `applicant` must stand by.
    pub fn refuses(&self, applicant: Applicant<'_>, tunnel: Tunnel, now: Instant) -> bool {
        let Some(instance) = applicant.instance else {
            return false;
        };
        let displaced = self.serving.as_deref() != Some(instance)
            && self.displaced.iter().any(|old| **old == *instance);
        let same_token = self.credential.as_ref() == Some(applicant.credential);
        let serving = match tunnel {
            Tunnel::Up | Tunnel::Closing => true,
            Tunnel::EndedAt(ended) => now.saturating_duration_since(ended) < SERVING_AGENT_GRACE,
            Tunnel::Never => false,
        };
        displaced && same_token && serving
    }

    /// `applicant` now serves; whoever served before (unless it is the same instance
    /// redialling over its own stale tunnel) joins the displaced.
    pub fn serve(&mut self, applicant: Applicant<'_>) {
        let instance: Option<Instance> = applicant.instance.map(Into::into);
        self.displaced.extend(self.serving.take());
        self.displaced.retain(|old| Some(old) != instance.as_ref());
        let excess = self.displaced.len().saturating_sub(MAX_DISPLACED);
        self.displaced.drain(..excess);
        self.serving = instance;
        self.credential = Some(*applicant.credential);
    }

    /// The instance of the current or last registration (for the log).
    pub fn serving(&self) -> Option<&str> {
        self.serving.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: [u8; 32] = [1; 32];
    const ROTATED: [u8; 32] = [2; 32];

    fn agent(instance: &str) -> Applicant<'_> {
        Applicant {
            instance: Some(instance),
            credential: &TOKEN,
        }
    }

    #[test]
    fn a_displaced_instance_stands_by_while_the_serving_one_is_up_or_just_ended() {
        let now = Instant::now();
        let mut history = History::default();
        assert!(!history.refuses(agent("A"), Tunnel::Never, now));
        history.serve(agent("A"));
        history.serve(agent("B"));
        assert_eq!(history.serving(), Some("B"));
        for tunnel in [Tunnel::Up, Tunnel::Closing, Tunnel::EndedAt(now)] {
            assert!(history.refuses(agent("A"), tunnel, now), "{tunnel:?}");
            assert!(
                !history.refuses(agent("B"), tunnel, now),
                "B over its own tunnel"
            );
            assert!(
                !history.refuses(agent("C"), tunnel, now),
                "a new agent wins"
            );
        }
        let go_agent = Applicant {
            instance: None,
            credential: &TOKEN,
        };
        assert!(
            !history.refuses(go_agent, Tunnel::Up, now),
            "no instance: newest wins"
        );
        let later = now + SERVING_AGENT_GRACE;
        assert!(
            !history.refuses(agent("A"), Tunnel::EndedAt(now), later),
            "B is gone"
        );
    }

    #[test]
    fn a_newer_token_is_never_refused() {
        let now = Instant::now();
        let mut history = History::default();
        history.serve(agent("A"));
        history.serve(agent("B")); // e.g. a leaked token's holder
        let rotated = Applicant {
            instance: Some("A"),
            credential: &ROTATED,
        };
        assert!(!history.refuses(rotated, Tunnel::Up, now));
        history.serve(rotated);
        let b_rotated = Applicant {
            instance: Some("B"),
            credential: &ROTATED,
        };
        assert!(
            history.refuses(b_rotated, Tunnel::Up, now),
            "B is displaced now"
        );
    }

    #[test]
    fn the_taker_over_displaces_the_last_server_and_the_list_is_bounded() {
        let now = Instant::now();
        let mut history = History::default();
        history.serve(agent("A"));
        history.serve(agent("B"));
        history.serve(agent("C"));
        assert!(history.refuses(agent("A"), Tunnel::Up, now));
        assert!(
            history.refuses(agent("B"), Tunnel::Up, now),
            "three agents settle"
        );
        // C left; A, a standby, took over after the grace: C is displaced, A no longer is.
        history.serve(agent("A"));
        assert!(history.refuses(agent("C"), Tunnel::Up, now));
        assert!(!history.refuses(agent("A"), Tunnel::Up, now));
        let names: Vec<String> = (0..2 * MAX_DISPLACED).map(|n| format!("N{n}")).collect();
        for name in &names {
            history.serve(agent(name));
        }
        let remembered = names[..names.len() - 1]
            .iter()
            .filter(|name| history.refuses(agent(name), Tunnel::Up, now))
            .count();
        assert_eq!(remembered, MAX_DISPLACED);
        assert!(
            !history.refuses(agent("A"), Tunnel::Up, now),
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
