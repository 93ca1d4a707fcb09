//! Retries with exponential backoff and jitter, shared by the DynamoDB store and the Lambda
//! invoke transport. The SDK clients of this crate have the SDK's own retries turned off, so a
//! request is never retried twice over.

use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

use crate::config::ConfigError;

/// The error codes AWS services use for throttling and for their own transient failures.
const TRANSIENT_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "InternalServerError",
    "ServiceException",
    "SlowDown",
];

/// Whether an SDK failure is worth another try: throttling (HTTP 429 or a throttling code), the
/// service's own failures (5xx), and timeouts or connections that failed or dropped. A request
/// the service refused on its merits (not found, access denied, invalid) is not.
pub fn is_transient<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    match error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            status == 429
                || status >= 500
                || error
                    .code()
                    .is_some_and(|code| TRANSIENT_CODES.contains(&code))
        }
        _ => false,
    }
}

/// How often and how patiently a failed request is tried again.
///
/// The delay before retry *n* (from 0) is `min(max_delay, initial_delay × 2ⁿ)` less a random part
/// of up to half of it ([`trebuchet::client::backoff_delay`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// How many times a request is sent at most, the first time included (default 3).
    pub max_attempts: u32,
    /// The delay before the first retry (default 0.5 s).
    pub initial_delay: Duration,
    /// The longest delay between two attempts (default 30 s).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A policy of `max_attempts` attempts with delays from `initial_delay` up to `max_delay`.
    pub fn new(
        max_attempts: u32,
        initial_delay: Duration,
        max_delay: Duration,
    ) -> Result<Self, ConfigError> {
        let policy = RetryPolicy {
            max_attempts,
            initial_delay,
            max_delay,
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Checks the settings: at least one attempt, and `initial_delay <= max_delay`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::Invalid {
                field: "max_attempts",
                reason: "must be at least 1".into(),
            });
        }
        if self.initial_delay > self.max_delay {
            return Err(ConfigError::Invalid {
                field: "initial_delay",
                reason: format!(
                    "{:?} is longer than max_delay {:?}",
                    self.initial_delay, self.max_delay
                ),
            });
        }
        Ok(())
    }

    /// The delay before retry `retry` (counting from 0), jitter included.
    pub fn delay(&self, retry: u32) -> Duration {
        trebuchet::client::backoff_delay(self.initial_delay, self.max_delay, retry)
    }

    /// Runs `attempt` until it succeeds, fails with an error `retryable` says no to, or
    /// `max_attempts` are spent; sleeps [`delay`](Self::delay) between attempts. Returns the last
    /// outcome and how many attempts were made.
    pub async fn run<T, E, F, Fut>(
        &self,
        mut attempt: F,
        retryable: impl Fn(&E) -> bool,
    ) -> (Result<T, E>, u32)
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut made = 0;
        loop {
            let outcome = attempt(made).await;
            made += 1;
            match outcome {
                Err(error) if made < self.max_attempts && retryable(&error) => {
                    let delay = self.delay(made - 1);
                    tracing::debug!(attempt = made, ?delay, "retrying after a retryable failure");
                    tokio::time::sleep(delay).await;
                }
                outcome => return (outcome, made),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_within_their_jitter_window_up_to_the_cap() {
        let policy = RetryPolicy::default();
        for _ in 0..100 {
            let first = policy.delay(0);
            assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
            let second = policy.delay(1);
            assert!(second >= Duration::from_millis(500) && second <= Duration::from_secs(1));
            let late = policy.delay(20);
            assert!(late >= Duration::from_secs(15) && late <= Duration::from_secs(30));
        }
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let error = RetryPolicy::new(0, Duration::ZERO, Duration::ZERO).unwrap_err();
        assert!(error.to_string().contains("max_attempts"), "{error}");
        let error =
            RetryPolicy::new(3, Duration::from_secs(2), Duration::from_secs(1)).unwrap_err();
        assert!(error.to_string().contains("initial_delay"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_a_permanent_error_and_after_max_attempts() {
        let policy = RetryPolicy::default();
        let (outcome, attempts) = policy
            .run(|_| async { Err::<(), _>("permanent") }, |_| false)
            .await;
        assert_eq!((outcome, attempts), (Err("permanent"), 1));
        let (outcome, attempts) = policy
            .run(|_| async { Err::<(), _>("transient") }, |_| true)
            .await;
        assert_eq!((outcome, attempts), (Err("transient"), 3));
        let (outcome, attempts) = policy
            .run(
                |n| async move { if n < 2 { Err("transient") } else { Ok(n) } },
                |_| true,
            )
            .await;
        assert_eq!((outcome, attempts), (Ok(2), 3));
    }
}
