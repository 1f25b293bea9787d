//! Who may use a route: the credential kinds it accepts, the scopes and tenants it requires.
//! A route owns its policy; authentication reads the kinds, authorization the rest.

/// Which credential kinds a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPolicy {
    /// `auth = "none"`: forwarded without identity (client identity headers still stripped).
    Public,
    /// `auth = [...]`: at least one kind is accepted.
    Required { api_key: bool, jwt: bool },
}

impl AuthPolicy {
    pub fn is_public(self) -> bool {
        matches!(self, Self::Public)
    }
}

/// The scopes a route requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeRule {
    /// `scopes`: the caller needs at least one of these (when non-empty).
    pub any_of: Vec<String>,
    /// `all_scopes`: the caller needs every one of these.
    pub all_of: Vec<String>,
}

impl ScopeRule {
    pub fn is_empty(&self) -> bool {
        self.any_of.is_empty() && self.all_of.is_empty()
    }
}

/// A route's whole access policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    pub auth: AuthPolicy,
    pub scopes: ScopeRule,
    /// `tenants`: only these tenants may call (`None`: any tenant).
    pub tenants: Option<Vec<String>>,
}
