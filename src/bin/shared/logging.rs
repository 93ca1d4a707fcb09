//! The Lambda functions' logging: `RUST_LOG` (default `info`), without timestamps, since
//! Lambda's log lines have their own time.

pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .without_time()
        .init();
}
