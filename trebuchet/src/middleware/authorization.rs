//! Authorization: role-based rules on actors and methods.

use futures_util::future::BoxFuture;

use super::{Check, CheckLayer, Principal};
use crate::protocol::{ErrorCode, RemoteError};
use crate::quoted;
use crate::server::Call;

/// Role-based access rules: a principal may call `actor.method` if one of its roles has an
/// `allow` rule matching it and none of its roles has a `deny` rule matching it (deny wins).
/// Patterns are exact names, `*` (anything) or a prefix ending in `*` (`"game-*"`). A caller
/// without a principal has the single role `anonymous`.
#[derive(Clone, Debug, Default)]
pub struct Rbac {
    rules: Vec<Rule>,
}

#[derive(Clone, Debug)]
struct Rule {
    allow: bool,
    role: String,
    actor: String,
    method: String,
}

/// The role of callers without a principal.
pub const ANONYMOUS_ROLE: &str = "anonymous";

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

impl Rbac {
    /// No rules: everything is forbidden.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets `role` call methods matching `method` on actors matching `actor`.
    pub fn allow(mut self, role: &str, actor: &str, method: &str) -> Self {
        self.rules.push(Rule {
            allow: true,
            role: role.to_owned(),
            actor: actor.to_owned(),
            method: method.to_owned(),
        });
        self
    }

    /// Forbids `role` to call methods matching `method` on actors matching `actor`, whatever
    /// other rules allow.
    pub fn deny(mut self, role: &str, actor: &str, method: &str) -> Self {
        self.rules.push(Rule {
            allow: false,
            role: role.to_owned(),
            actor: actor.to_owned(),
            method: method.to_owned(),
        });
        self
    }

    /// Whether `roles` may call `actor.method`.
    pub fn permits(&self, roles: &[String], actor: &str, method: &str) -> bool {
        let applies = |rule: &&Rule| {
            roles
                .iter()
                .any(|role| rule.role == "*" || *role == rule.role)
                && matches(&rule.actor, actor)
                && matches(&rule.method, method)
        };
        let mut matching = self.rules.iter().filter(applies).peekable();
        matching.peek().is_some() && matching.all(|rule| rule.allow)
    }
}

impl Check for Rbac {
    fn check<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<(), RemoteError>> {
        let anonymous = [ANONYMOUS_ROLE.to_owned()];
        let (who, roles) = match Principal::of(call) {
            Some(principal) => (principal.id.as_str(), principal.roles.as_slice()),
            None => ("an anonymous caller", &anonymous[..]),
        };
        let invocation = &call.invocation;
        let result = if self.permits(roles, &invocation.actor_id, &invocation.method) {
            Ok(())
        } else {
            Err(RemoteError::new(
                ErrorCode::Forbidden,
                format!(
                    "{who} may not call {}.{}",
                    quoted::name(&invocation.actor_id),
                    quoted::name(&invocation.method)
                ),
            ))
        };
        Box::pin(std::future::ready(result))
    }
}

/// The authorization layer.
pub type AuthorizationLayer = CheckLayer<Rbac>;

impl CheckLayer<Rbac> {
    /// Checks every call against `rules`.
    pub fn new(rules: Rbac) -> Self {
        CheckLayer::from_check(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn deny_wins_and_patterns_match() {
        let rules = Rbac::new()
            .allow("player", "game-*", "*")
            .deny("player", "game-admin", "*")
            .allow("admin", "*", "*")
            .allow("anonymous", "lobby", "list");
        assert!(rules.permits(&roles(&["player"]), "game-room", "join"));
        assert!(!rules.permits(&roles(&["player"]), "game-admin", "reset"));
        assert!(!rules.permits(&roles(&["player", "admin"]), "game-admin", "reset"));
        assert!(rules.permits(&roles(&["admin"]), "game-admin", "reset"));
        assert!(rules.permits(&roles(&["anonymous"]), "lobby", "list"));
        assert!(!rules.permits(&roles(&["anonymous"]), "lobby", "create"));
        assert!(!rules.permits(&roles(&[]), "lobby", "list"));
    }
}
