//! Per-cluster request rate limits: a token bucket each. Over the limit a request is refused
//! at once (429), never queued (B13); one cluster's limit never touches another's traffic.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::config::ClusterConfig;

/// Token buckets by cluster id.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// Takes a token for `cluster` if its limit allows; always true without a limit.
    pub fn allow(&self, cluster: &ClusterConfig) -> bool {
        self.allow_key(&cluster.id, cluster.rate_limit)
    }

    /// Takes a token from the bucket `key` (a cluster id, `extension:<name>`) under `limit`
    /// (rate per second, burst); always true without a limit.
    pub fn allow_key(&self, key: &str, limit: Option<(u32, u32)>) -> bool {
        let Some((rate, burst)) = limit else {
            return true;
        };
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: f64::from(burst),
            last: now,
        });
        let refill = now.duration_since(bucket.last).as_secs_f64() * f64::from(rate);
        bucket.tokens = (bucket.tokens + refill).min(f64::from(burst));
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Impersonation, TokenHash};

    fn cluster(id: &str, limit: Option<(u32, u32)>) -> ClusterConfig {
        ClusterConfig {
            id: id.into(),
            token: Some(TokenHash::of(id.as_bytes())),
            impersonation: Impersonation::User,
            rate_limit: limit,
            target: "x:1".into(),
        }
    }

    /// B13: past the burst, refusals are immediate; tokens come back at the rate; another
    /// cluster is untouched.
    #[tokio::test(start_paused = true)]
    async fn buckets_refuse_at_once_and_refill_per_cluster() {
        let limiter = RateLimiter::default();
        let limited = cluster("a", Some((2, 3)));
        let free = cluster("b", None);
        let allowed = (0..10).filter(|_| limiter.allow(&limited)).count();
        assert_eq!(allowed, 3, "the burst, then refusals");
        assert!((0..100).all(|_| limiter.allow(&free)));
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert!(limiter.allow(&limited), "one token back after 1/rate");
        assert!(!limiter.allow(&limited));
    }
}
