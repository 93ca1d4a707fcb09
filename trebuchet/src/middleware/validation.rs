//! Validation: argument size and nesting limits, and per-method validators.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{Check, CheckLayer};
use crate::protocol::{Encoding, ErrorCode, RemoteError};
use crate::server::Call;

type Validator = Arc<dyn Fn(&Call) -> Result<(), String> + Send + Sync>;

/// Limits on arguments, and validators of your own for given methods. Too-large arguments get
/// `payload_too_large`; too-deep JSON arguments and arguments a validator rejects get
/// `bad_request` with the validator's message.
#[derive(Clone, Default)]
pub struct Validation {
    max_args_bytes: Option<usize>,
    max_depth: Option<usize>,
    validators: HashMap<(String, String), Vec<Validator>>,
}

/// The validation layer.
pub type ValidationLayer = CheckLayer<Validation>;

impl CheckLayer<Validation> {
    /// No limits and no validators yet.
    pub fn new() -> Self {
        CheckLayer::from_check(Validation::default())
    }

    fn with(self, change: impl FnOnce(&mut Validation)) -> Self {
        let mut validation = Arc::try_unwrap(self.check).unwrap_or_else(|shared| (*shared).clone());
        change(&mut validation);
        CheckLayer::from_check(validation)
    }

    /// Refuses arguments over `bytes` (encoded).
    pub fn max_args_bytes(self, bytes: usize) -> Self {
        self.with(|validation| validation.max_args_bytes = Some(bytes))
    }

    /// Refuses JSON arguments nested deeper than `depth` arrays/objects (the arguments object
    /// itself is depth 1).
    pub fn max_depth(self, depth: usize) -> Self {
        self.with(|validation| validation.max_depth = Some(depth))
    }

    /// Runs `validator` on every call of `actor.method`; an `Err` message is sent back as
    /// `bad_request`.
    pub fn validate<F>(self, actor: &str, method: &str, validator: F) -> Self
    where
        F: Fn(&Call) -> Result<(), String> + Send + Sync + 'static,
    {
        self.with(|validation| {
            validation
                .validators
                .entry((actor.to_owned(), method.to_owned()))
                .or_default()
                .push(Arc::new(validator));
        })
    }
}

impl Default for CheckLayer<Validation> {
    fn default() -> Self {
        Self::new()
    }
}

/// The nesting depth of JSON text (strings are skipped, so brackets inside them don't count).
fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

impl Validation {
    fn run(&self, call: &Call) -> Result<(), RemoteError> {
        let args = &call.invocation.args;
        if let Some(max) = self.max_args_bytes
            && args.len() > max
        {
            return Err(RemoteError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "arguments of {} bytes exceed the limit of {max} bytes",
                    args.len()
                ),
            ));
        }
        if let Some(max) = self.max_depth
            && args.encoding() == Encoding::Json
        {
            let depth = json_depth(args.as_bytes());
            if depth > max {
                return Err(RemoteError::bad_request(format!(
                    "arguments nested {depth} deep exceed the limit of {max}"
                )));
            }
        }
        let key = (
            call.invocation.actor_id.clone(),
            call.invocation.method.clone(),
        );
        for validator in self.validators.get(&key).into_iter().flatten() {
            validator(call).map_err(RemoteError::bad_request)?;
        }
        Ok(())
    }
}

impl Check for Validation {
    fn check<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(std::future::ready(self.run(call)))
    }
}

#[cfg(test)]
mod tests {
    use super::json_depth;

    #[test]
    fn measures_json_depth() {
        assert_eq!(json_depth(br#"{}"#), 1);
        assert_eq!(json_depth(br#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(json_depth(br#"{"a":"[[[[{{{"}"#), 1);
        assert_eq!(json_depth(br#"{"a":"\"[[["}"#), 1);
    }
}
