//! Per-tenant token buckets, in events: `rate_limit_eps` tokens per second up to `burst`.
//!
//! A batch larger than the burst is let through when the bucket is full and leaves it in debt,
//! so such a client is slowed to the tenant's rate instead of being refused forever; the long-run
//! rate stays `rate_limit_eps` either way.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ve_schema::Tenant;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes `events` tokens from the tenant's bucket, or says how long until it could.
    /// A tenant with `rate_limit_eps <= 0` is not limited.
    pub(crate) fn take(
        &self,
        tenant: &Tenant,
        events: usize,
        now: Instant,
    ) -> Result<(), Duration> {
        if tenant.rate_limit_eps <= 0 || events == 0 {
            return Ok(());
        }
        let rate = f64::from(tenant.rate_limit_eps);
        let capacity = if tenant.burst > 0 {
            f64::from(tenant.burst)
        } else {
            rate
        };
        let wanted = events as f64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(tenant.tenant_id.clone()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.updated = now;
        let needed = wanted.min(capacity);
        if bucket.tokens >= needed {
            bucket.tokens -= wanted;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((needed - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(rate: i32, burst: i32) -> Tenant {
        Tenant {
            tenant_id: "t".into(),
            name: "t".into(),
            plan: "free".into(),
            retention_days: 1,
            rate_limit_eps: rate,
            burst,
            api_keys: vec![],
            currency: "USD".into(),
        }
    }

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::default();
        let t = tenant(10, 20);
        let start = Instant::now();
        assert!(limiter.take(&t, 15, start).is_ok());
        assert!(limiter.take(&t, 5, start).is_ok());
        let wait = limiter.take(&t, 5, start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        assert!(
            limiter
                .take(&t, 5, start + Duration::from_millis(500))
                .is_ok()
        );
    }

    #[test]
    fn a_batch_above_the_burst_passes_on_a_full_bucket_and_leaves_debt() {
        let limiter = RateLimiter::default();
        let t = tenant(10, 10);
        let start = Instant::now();
        assert!(limiter.take(&t, 30, start).is_ok());
        // 20 in debt: one more event needs 2.1 s of refill.
        let wait = limiter.take(&t, 1, start).unwrap_err();
        assert!((wait.as_secs_f64() - 2.1).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn zero_rate_is_unlimited_and_zero_burst_means_rate() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        assert!(limiter.take(&tenant(0, 0), 1_000_000, start).is_ok());
        let t = tenant(5, 0);
        assert!(limiter.take(&t, 5, start).is_ok());
        assert!(limiter.take(&t, 1, start).is_err());
    }
}
