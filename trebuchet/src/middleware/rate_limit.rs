//! Rate limiting: a token bucket per principal (`governor`).

use std::num::NonZeroU32;
use std::time::Duration;

use futures_util::future::BoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::{Check, CheckLayer, Principal, anonymous_key};
use crate::protocol::{ErrorCode, Payload, RemoteError};
use crate::server::Call;

/// A token bucket per principal, and per connection for callers without one. A call over the
/// limit gets `rate_limited`; its error's `data` is `{"retryAfterMs": N}` (the wait before the
/// next call would be let through), and the message says the same.
pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

/// The `data` of a `rate_limited` error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryAfter {
    /// How long to wait before the next call, in milliseconds.
    pub retry_after_ms: u64,
}

/// The rate-limiting layer.
pub type RateLimitLayer = CheckLayer<RateLimit>;

impl CheckLayer<RateLimit> {
    /// `quota` per caller (for example `Quota::per_second(n).allow_burst(m)`).
    pub fn new(quota: Quota) -> Self {
        CheckLayer::from_check(RateLimit {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        })
    }

    /// `calls` per second per caller, in bursts of up to `calls`.
    pub fn per_second(calls: NonZeroU32) -> Self {
        Self::new(Quota::per_second(calls))
    }
}

impl Check for RateLimit {
    fn check<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<(), RemoteError>> {
        let key = match Principal::of(call) {
            Some(principal) => format!("principal:{}", principal.id),
            None => anonymous_key(call),
        };
        let result = self.limiter.check_key(&key).map_err(|not_until| {
            let wait: Duration = not_until.wait_time_from(self.clock.now());
            let retry_after_ms = wait.as_millis().max(1) as u64;
            let encoding = call.invocation.args.encoding();
            RemoteError {
                code: ErrorCode::RateLimited,
                message: format!("too many calls; retry after {retry_after_ms} ms"),
                data: Payload::encode(&RetryAfter { retry_after_ms }, encoding).ok(),
            }
        });
        Box::pin(std::future::ready(result))
    }
}
