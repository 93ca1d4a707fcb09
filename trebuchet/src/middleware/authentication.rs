//! Authentication: API keys and JWT bearer tokens.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{Check, CheckLayer, Principal};
use crate::protocol::{ErrorCode, RemoteError};
use crate::server::Call;

/// A credential a caller presented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Bearer <token>` (or `?token=` on a WebSocket URL).
    Bearer(String),
    /// `Authorization: ApiKey <key>`, or `x-api-key: <key>` (or `?api_key=`).
    ApiKey(String),
}

impl Credential {
    /// The credential of `call`, looked for in this order: the invocation's `metadata`
    /// (`authorization`, `x-api-key`), then the WebSocket upgrade request's headers (the same
    /// names), then its query (`token`, `api_key`), so a browser can authenticate once per
    /// connection.
    pub fn of(call: &Call) -> Option<Credential> {
        let metadata = &call.invocation.metadata;
        let headers = &call.connection.headers;
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        metadata
            .get("authorization")
            .and_then(|value| Self::from_authorization(value))
            .or_else(|| {
                metadata
                    .get("x-api-key")
                    .map(|key| Credential::ApiKey(key.clone()))
            })
            .or_else(|| header("authorization").and_then(Self::from_authorization))
            .or_else(|| header("x-api-key").map(|key| Credential::ApiKey(key.to_owned())))
            .or_else(|| {
                let query = call.connection.uri.as_ref()?.query()?;
                query
                    .split('&')
                    .find_map(|pair| match pair.split_once('=')? {
                        ("token", token) => Some(Credential::Bearer(token.to_owned())),
                        ("api_key", key) => Some(Credential::ApiKey(key.to_owned())),
                        _ => None,
                    })
            })
    }

    fn from_authorization(value: &str) -> Option<Credential> {
        let (scheme, rest) = value.trim().split_once(' ')?;
        let rest = rest.trim().to_owned();
        if scheme.eq_ignore_ascii_case("bearer") {
            Some(Credential::Bearer(rest))
        } else if scheme.eq_ignore_ascii_case("apikey") {
            Some(Credential::ApiKey(rest))
        } else {
            None
        }
    }
}

fn unauthenticated(message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorCode::Unauthenticated, message)
}

/// Turns a credential into a principal (or refuses it with `unauthenticated`).
pub trait Authenticator: Send + Sync + 'static {
    /// The principal `credential` stands for.
    fn authenticate<'a>(
        &'a self,
        credential: &'a Credential,
    ) -> BoxFuture<'a, Result<Principal, RemoteError>>;
}

type KeyLookup = Arc<dyn Fn(String) -> BoxFuture<'static, Option<Principal>> + Send + Sync>;

/// API keys: a fixed set, or a lookup of your own (a database, a secrets store).
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: HashMap<String, Principal>,
    lookup: Option<KeyLookup>,
}

impl ApiKeys {
    /// No keys yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `key` as `principal`.
    pub fn key(mut self, key: impl Into<String>, principal: Principal) -> Self {
        self.keys.insert(key.into(), principal);
        self
    }

    /// Looks keys that are not in the fixed set up with `lookup`.
    pub fn lookup<F, Fut>(mut self, lookup: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<Principal>> + Send + 'static,
    {
        self.lookup = Some(Arc::new(move |key| Box::pin(lookup(key))));
        self
    }
}

impl Authenticator for ApiKeys {
    fn authenticate<'a>(
        &'a self,
        credential: &'a Credential,
    ) -> BoxFuture<'a, Result<Principal, RemoteError>> {
        Box::pin(async move {
            let Credential::ApiKey(key) = credential else {
                return Err(unauthenticated("an API key is required"));
            };
            if let Some(principal) = self.keys.get(key) {
                return Ok(principal.clone());
            }
            if let Some(lookup) = &self.lookup
                && let Some(principal) = lookup(key.clone()).await
            {
                return Ok(principal);
            }
            Err(unauthenticated("unknown API key"))
        })
    }
}

/// JWT bearer tokens (`jsonwebtoken`): HS256 with a shared secret, or RS256/ES256 with a public
/// key. `exp` is required and checked, `nbf` is checked when present, and `aud`/`iss` when
/// configured. The principal is the `sub` claim, with the roles of the `roles` claim.
#[derive(Clone)]
pub struct Jwt {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
}

/// A key could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid key: {0}")]
pub struct KeyError(#[from] jsonwebtoken::errors::Error);

impl Jwt {
    fn with(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.validate_aud = false;
        Jwt { key, validation }
    }

    /// HS256 with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// RS256 with an RSA public key in PEM.
    pub fn rs256(public_key_pem: &[u8]) -> Result<Self, KeyError> {
        Ok(Self::with(
            DecodingKey::from_rsa_pem(public_key_pem)?,
            Algorithm::RS256,
        ))
    }

    /// ES256 with an EC (P-256) public key in PEM.
    pub fn es256(public_key_pem: &[u8]) -> Result<Self, KeyError> {
        Ok(Self::with(
            DecodingKey::from_ec_pem(public_key_pem)?,
            Algorithm::ES256,
        ))
    }

    /// Requires the `aud` claim to be one of `audiences`.
    pub fn audience(mut self, audiences: &[&str]) -> Self {
        self.validation.set_audience(audiences);
        self.validation.validate_aud = true;
        self
    }

    /// Requires the `iss` claim to be one of `issuers`.
    pub fn issuer(mut self, issuers: &[&str]) -> Self {
        self.validation.set_issuer(issuers);
        self
    }

    /// Allows `seconds` of clock difference for `exp` and `nbf` (default 60).
    pub fn leeway(mut self, seconds: u64) -> Self {
        self.validation.leeway = seconds;
        self
    }
}

impl Authenticator for Jwt {
    fn authenticate<'a>(
        &'a self,
        credential: &'a Credential,
    ) -> BoxFuture<'a, Result<Principal, RemoteError>> {
        Box::pin(async move {
            let Credential::Bearer(token) = credential else {
                return Err(unauthenticated("a bearer token is required"));
            };
            let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
                .map_err(|error| unauthenticated(format!("invalid token: {error}")))?;
            Ok(Principal {
                id: data.claims.sub,
                roles: data.claims.roles,
            })
        })
    }
}

/// Authenticates every call with an [`Authenticator`]; a call without valid credentials gets
/// `unauthenticated`, unless anonymous callers are allowed (then it goes on with no
/// [`Principal`], which authorization sees as the role `anonymous`).
pub struct Authentication<A> {
    authenticator: A,
    allow_anonymous: bool,
}

/// The authentication layer.
pub type AuthenticationLayer<A> = CheckLayer<Authentication<A>>;

impl<A: Authenticator> CheckLayer<Authentication<A>> {
    /// Requires every call to authenticate with `authenticator`.
    pub fn new(authenticator: A) -> Self {
        CheckLayer::from_check(Authentication {
            authenticator,
            allow_anonymous: false,
        })
    }

    /// Lets calls without any credential through, with no principal.
    pub fn allow_anonymous(authenticator: A) -> Self {
        CheckLayer::from_check(Authentication {
            authenticator,
            allow_anonymous: true,
        })
    }
}

impl<A: Authenticator> Check for Authentication<A> {
    fn check<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(async move {
            match Credential::of(call) {
                Some(credential) => {
                    let principal = self.authenticator.authenticate(&credential).await?;
                    call.extensions.insert(principal);
                    Ok(())
                }
                None if self.allow_anonymous => Ok(()),
                None => Err(unauthenticated("credentials are required")),
            }
        })
    }
}
