//! Who may do what with keys: one function per rule, pure, so every rule is tested alone.
//!
//! | caller | sees and manages | creates for | may grant |
//! |---|---|---|---|
//! | operator (admin token) | every tenant | any tenant and user | anything |
//! | tenant admin (`admin_scope`) | every key of its tenant | any user of its tenant, or the tenant | at most what it holds |
//! | anyone else | its own keys | itself only | at most what it holds |
//!
//! "At most what it holds": scopes a subset of the caller's, a rate limit and a token budget
//! no looser than the caller's own (when it has one), an expiry no later than the caller's,
//! custom claims only as the caller carries them. A key can never grant more than its creator
//! had. Keys of another tenant, or of another user for a non-admin, are answered as unknown
//! (404), so their existence does not leak.

use std::collections::BTreeMap;

use super::model::{KeyFilter, StoredKey};
use crate::auth::{AuthMethod, Identity};
use crate::keys::Timestamp;
use crate::keys::record::RecordRate;

/// The caller of a management call.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub role: Role,
    /// `None` only for the operator.
    pub tenant_id: Option<String>,
    /// The user the caller acts as, whose keys are "its own": a JWT's `sub`; an API key's
    /// `user_id`, or its `key_id` for a key that belongs to no user; `admin` for the operator.
    pub subject: String,
    /// The credential, for the audit log: `<key_id or sub>@<tenant>`, `admin`.
    pub actor: String,
    /// What the caller holds (ignored for the operator).
    pub holds: Grant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The admin listener's token: every tenant.
    Operator,
    /// Holds the configured admin scope: every key of its tenant.
    TenantAdmin,
    /// Its own keys only.
    User,
}

/// What a key grants: what the policy bounds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grant {
    pub scopes: Vec<String>,
    pub rate_limit: Option<RecordRate>,
    pub tokens_per_minute: Option<u64>,
    pub expires_at: Option<Timestamp>,
    pub custom_claims: BTreeMap<String, String>,
}

/// Why a call is refused; `api.rs` maps each to its status and code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 403 `TENANT_NOT_ALLOWED`: no tenant to act in, or another tenant named.
    #[error("{0}")]
    Tenant(&'static str),
    /// 403 `INSUFFICIENT_SCOPE`: beyond the caller's role or what it holds.
    #[error("{0}")]
    Scope(String),
    /// 404 `NOT_FOUND`: unknown, or not the caller's to see.
    #[error("no such key")]
    NotFound,
}

impl Caller {
    /// The operator: the admin listener's bearer token.
    pub fn operator() -> Self {
        Self {
            role: Role::Operator,
            tenant_id: None,
            subject: "admin".to_owned(),
            actor: "admin".to_owned(),
            holds: Grant::default(),
        }
    }

    /// A caller the gateway authenticated on the management route. Without a tenant it may
    /// do nothing: keys always belong to a tenant.
    pub fn authenticated(identity: &Identity, admin_scope: &str) -> Result<Self, Refusal> {
        let tenant_id = identity.tenant_id().ok_or(Refusal::Tenant(
            "the credential names no tenant; keys belong to a tenant",
        ))?;
        let role = if identity.has_scope(admin_scope) {
            Role::TenantAdmin
        } else {
            Role::User
        };
        let subject = match identity.method {
            AuthMethod::ApiKey => identity.user_id().unwrap_or(identity.subject()),
            AuthMethod::Jwt => identity.subject(),
        };
        Ok(Self {
            role,
            tenant_id: Some(tenant_id.to_owned()),
            subject: subject.to_owned(),
            actor: format!("{}@{tenant_id}", identity.subject()),
            holds: Grant {
                scopes: identity.scopes().map(str::to_owned).collect(),
                rate_limit: identity.rate_limit.map(|rate| RecordRate {
                    requests_per_second: rate.per_second,
                    burst: rate.burst.get(),
                }),
                tokens_per_minute: identity.tokens_per_minute,
                // A key may not outlive the key that made it; a JWT's expiry ends a session,
                // not what the session may create.
                expires_at: match identity.method {
                    AuthMethod::ApiKey => identity.expires_at,
                    AuthMethod::Jwt => None,
                },
                custom_claims: identity
                    .claims()
                    .map(|(name, value)| (name.to_owned(), value.to_owned()))
                    .collect(),
            },
        })
    }

    /// The audit log's actor: the credential (`<key_id or sub>@<tenant>`), or `admin`.
    pub fn actor(&self) -> String {
        self.actor.clone()
    }

    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }

    /// The tenant and user a new key belongs to. The operator must name the tenant; others
    /// create in their own, and only a tenant admin for someone else (or for the tenant).
    pub fn owner_of_new_key(
        &self,
        tenant_id: Option<&str>,
        user_id: Option<&str>,
    ) -> Result<(String, Option<String>), Refusal> {
        match self.role {
            Role::Operator => {
                let tenant = tenant_id.ok_or(Refusal::Tenant(
                    "tenant_id is required on the admin listener",
                ))?;
                Ok((tenant.to_owned(), user_id.map(str::to_owned)))
            }
            Role::TenantAdmin | Role::User => {
                let own = self.tenant_id.clone().ok_or(Refusal::Tenant("no tenant"))?;
                if tenant_id.is_some_and(|tenant| tenant != own) {
                    return Err(Refusal::Tenant(
                        "keys can only be created in your own tenant",
                    ));
                }
                if self.role == Role::TenantAdmin {
                    return Ok((own, user_id.map(str::to_owned)));
                }
                match user_id {
                    None => Ok((own, Some(self.subject.clone()))),
                    Some(user) if user == self.subject => Ok((own, Some(user.to_owned()))),
                    Some(_) => Err(Refusal::Scope(
                        "creating keys for another user needs the admin scope".to_owned(),
                    )),
                }
            }
        }
    }

    /// What a new key (or a key after a change) may grant: `wanted`, checked against what the
    /// caller holds. Fields left out take the caller's own bound, so a key never outlives or
    /// outpaces its creator.
    pub fn bound_grant(&self, wanted: Grant) -> Result<Grant, Refusal> {
        if self.is_operator() {
            return Ok(wanted);
        }
        let holds = &self.holds;
        if let Some(scope) = wanted
            .scopes
            .iter()
            .find(|scope| !holds.scopes.contains(scope))
        {
            return Err(Refusal::Scope(format!(
                "scope {scope:?} is not one you hold; a key can only grant scopes of its creator"
            )));
        }
        let rate_limit = match (wanted.rate_limit, holds.rate_limit) {
            (wanted, None) => wanted,
            (None, Some(own)) => Some(own),
            (Some(rate), Some(own)) => {
                if rate.requests_per_second > own.requests_per_second || rate.burst > own.burst {
                    return Err(Refusal::Scope(
                        "rate_limit is looser than your own".to_owned(),
                    ));
                }
                Some(rate)
            }
        };
        let tokens_per_minute = match (wanted.tokens_per_minute, holds.tokens_per_minute) {
            (wanted, None) => wanted,
            (None, Some(own)) => Some(own),
            (Some(tokens), Some(own)) => {
                if tokens > own {
                    return Err(Refusal::Scope(
                        "tokens_per_minute is above your own".to_owned(),
                    ));
                }
                Some(tokens)
            }
        };
        let expires_at = match (wanted.expires_at, holds.expires_at) {
            (wanted, None) => wanted,
            (None, Some(own)) => Some(own),
            (Some(at), Some(own)) => {
                if at > own {
                    return Err(Refusal::Scope(
                        "expires_at is after your own credential expires".to_owned(),
                    ));
                }
                Some(at)
            }
        };
        for (name, value) in &wanted.custom_claims {
            if holds.custom_claims.get(name) != Some(value) {
                return Err(Refusal::Scope(format!(
                    "custom claim {name:?} is not one you carry with that value"
                )));
            }
        }
        Ok(Grant {
            scopes: wanted.scopes,
            rate_limit,
            tokens_per_minute,
            expires_at,
            custom_claims: wanted.custom_claims,
        })
    }

    /// Whether the caller may see (and so manage) `key`.
    pub fn may_see(&self, key: &StoredKey) -> bool {
        match self.role {
            Role::Operator => true,
            Role::TenantAdmin => self.tenant_id.as_deref() == Some(key.tenant_id()),
            Role::User => {
                self.tenant_id.as_deref() == Some(key.tenant_id())
                    && key.user_id() == Some(self.subject.as_str())
            }
        }
    }

    /// `key` if the caller may see it, else [`Refusal::NotFound`] (as for an unknown id).
    pub fn visible(&self, key: Option<StoredKey>) -> Result<StoredKey, Refusal> {
        key.filter(|key| self.may_see(key)).ok_or(Refusal::NotFound)
    }

    /// The keys a listing covers. `tenant_id` is honoured for the operator only (others list
    /// their own tenant); a non-admin may filter by its own user only.
    pub fn list_filter(
        &self,
        tenant_id: Option<&str>,
        user_id: Option<&str>,
    ) -> Result<KeyFilter, Refusal> {
        match self.role {
            Role::Operator => Ok(KeyFilter {
                tenant_id: tenant_id.map(str::to_owned),
                user_id: user_id.map(str::to_owned),
            }),
            Role::TenantAdmin | Role::User => {
                if tenant_id.is_some_and(|tenant| Some(tenant) != self.tenant_id.as_deref()) {
                    return Err(Refusal::Tenant("you can only list your own tenant's keys"));
                }
                if self.role == Role::User && user_id.is_some_and(|user| user != self.subject) {
                    return Err(Refusal::Scope(
                        "listing another user's keys needs the admin scope".to_owned(),
                    ));
                }
                Ok(KeyFilter {
                    tenant_id: self.tenant_id.clone(),
                    user_id: match self.role {
                        Role::User => Some(self.subject.clone()),
                        _ => user_id.map(str::to_owned),
                    },
                })
            }
        }
    }

    /// The audit log's tenant filter: `None` (all) for the operator, the own tenant for a
    /// tenant admin; users may not read it (it shows other users' actions).
    pub fn audit_scope(&self) -> Result<Option<String>, Refusal> {
        match self.role {
            Role::Operator => Ok(None),
            Role::TenantAdmin => Ok(self.tenant_id.clone()),
            Role::User => Err(Refusal::Scope(
                "the audit log needs the admin scope".to_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMethod, IdentityFields};
    use crate::key_service::model;
    use crate::keys::KeyHash;
    use crate::limits::settings::Rate;

    fn caller(role: Role, tenant: &str, subject: &str, scopes: &[&str]) -> Caller {
        Caller {
            role,
            tenant_id: Some(tenant.to_owned()),
            subject: subject.to_owned(),
            actor: format!("{subject}@{tenant}"),
            holds: Grant {
                scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
                ..Grant::default()
            },
        }
    }

    fn key(tenant: &str, user: Option<&str>) -> StoredKey {
        StoredKey {
            record: model::record("key_x", tenant, user, &["read"]),
            hash: KeyHash::of("sgk_x"),
            name: "x".into(),
            created_at: Timestamp(0),
            created_by: "test".into(),
            revoked_at: None,
            last_used_at: None,
            rotated_from: None,
            rotated_to: None,
        }
    }

    fn scopes(list: &[&str]) -> Grant {
        Grant {
            scopes: list.iter().map(|scope| (*scope).to_owned()).collect(),
            ..Grant::default()
        }
    }

    #[test]
    fn a_caller_is_built_from_its_identity_and_needs_a_tenant() {
        let scopes_held = ["read".to_owned(), "keys:admin".to_owned()];
        let rate = Rate::new(5.0, 10).unwrap();
        let identity = Identity::new(
            AuthMethod::ApiKey,
            &IdentityFields {
                subject: "key_a",
                key_id: Some("key_a"),
                user_id: Some("alice"),
                tenant_id: Some("acme"),
                scopes: &scopes_held,
                claims: &[("team", "blue")],
                rate_limit: Some(rate),
                tokens_per_minute: Some(1000),
                expires_at: Some(Timestamp(2_000_000_000)),
                ..IdentityFields::default()
            },
        );
        let admin = Caller::authenticated(&identity, "keys:admin").unwrap();
        assert_eq!(admin.role, Role::TenantAdmin);
        assert_eq!(admin.actor(), "key_a@acme", "the credential acts");
        assert_eq!(admin.subject, "alice", "on behalf of its user");
        assert_eq!(admin.holds.expires_at, Some(Timestamp(2_000_000_000)));
        assert_eq!(
            admin.holds.rate_limit,
            Some(RecordRate {
                requests_per_second: 5.0,
                burst: 10
            })
        );
        assert_eq!(admin.holds.custom_claims["team"], "blue");
        let user = Caller::authenticated(&identity, "other:admin").unwrap();
        assert_eq!(user.role, Role::User);

        let tenantless = Identity::new(
            AuthMethod::Jwt,
            &IdentityFields {
                subject: "someone",
                ..IdentityFields::default()
            },
        );
        assert!(matches!(
            Caller::authenticated(&tenantless, "keys:admin"),
            Err(Refusal::Tenant(_))
        ));

        // A JWT acts as its subject; its expiry ends the session, not what it creates.
        let session = Identity::new(
            AuthMethod::Jwt,
            &IdentityFields {
                subject: "bob",
                tenant_id: Some("acme"),
                expires_at: Some(Timestamp(2_000_000_000)),
                ..IdentityFields::default()
            },
        );
        let bob = Caller::authenticated(&session, "keys:admin").unwrap();
        assert_eq!(
            (bob.subject.as_str(), bob.actor().as_str()),
            ("bob", "bob@acme")
        );
        assert_eq!(bob.holds.expires_at, None);

        // An API key of no user acts as itself.
        let service_key = Identity::new(
            AuthMethod::ApiKey,
            &IdentityFields {
                subject: "key_s",
                key_id: Some("key_s"),
                tenant_id: Some("acme"),
                ..IdentityFields::default()
            },
        );
        assert_eq!(
            Caller::authenticated(&service_key, "keys:admin")
                .unwrap()
                .subject,
            "key_s"
        );
    }

    #[test]
    fn owners_of_new_keys_by_role() {
        let user = caller(Role::User, "acme", "alice", &[]);
        assert_eq!(
            user.owner_of_new_key(None, None).unwrap(),
            ("acme".into(), Some("alice".into()))
        );
        assert_eq!(
            user.owner_of_new_key(None, Some("alice")).unwrap(),
            ("acme".into(), Some("alice".into()))
        );
        assert!(matches!(
            user.owner_of_new_key(None, Some("bob")),
            Err(Refusal::Scope(_))
        ));
        assert!(matches!(
            user.owner_of_new_key(Some("globex"), None),
            Err(Refusal::Tenant(_))
        ));

        let admin = caller(Role::TenantAdmin, "acme", "root", &[]);
        assert_eq!(
            admin.owner_of_new_key(None, Some("bob")).unwrap(),
            ("acme".into(), Some("bob".into()))
        );
        assert_eq!(
            admin.owner_of_new_key(Some("acme"), None).unwrap(),
            ("acme".into(), None)
        );
        assert!(matches!(
            admin.owner_of_new_key(Some("globex"), None),
            Err(Refusal::Tenant(_))
        ));

        let operator = Caller::operator();
        assert!(matches!(
            operator.owner_of_new_key(None, None),
            Err(Refusal::Tenant(_))
        ));
        assert_eq!(
            operator
                .owner_of_new_key(Some("globex"), Some("x"))
                .unwrap(),
            ("globex".into(), Some("x".into()))
        );
    }

    #[test]
    fn a_key_never_grants_more_scopes_than_its_creator_holds() {
        for role in [Role::User, Role::TenantAdmin] {
            let holder = caller(role, "acme", "alice", &["read", "write"]);
            assert!(holder.bound_grant(scopes(&["read"])).is_ok());
            assert!(holder.bound_grant(scopes(&["read", "write"])).is_ok());
            assert!(holder.bound_grant(scopes(&[])).is_ok());
            for escalation in [
                &["admin"][..],
                &["read", "admin"],
                &["keys:admin"],
                &["READ"],
            ] {
                assert!(
                    matches!(
                        holder.bound_grant(scopes(escalation)),
                        Err(Refusal::Scope(_))
                    ),
                    "{role:?} {escalation:?}"
                );
            }
        }
        assert!(
            Caller::operator()
                .bound_grant(scopes(&["anything"]))
                .is_ok()
        );
    }

    #[test]
    fn limits_expiry_and_claims_are_bounded_by_the_creators() {
        let mut holder = caller(Role::User, "acme", "alice", &[]);
        holder.holds.rate_limit = Some(RecordRate {
            requests_per_second: 10.0,
            burst: 20,
        });
        holder.holds.tokens_per_minute = Some(1000);
        holder.holds.expires_at = Some(Timestamp(2_000));
        holder.holds.custom_claims = [("team".to_owned(), "blue".to_owned())].into();

        // Left out: the creator's own bounds.
        let inherited = holder.bound_grant(Grant::default()).unwrap();
        assert_eq!(inherited.rate_limit, holder.holds.rate_limit);
        assert_eq!(inherited.tokens_per_minute, Some(1000));
        assert_eq!(inherited.expires_at, Some(Timestamp(2_000)));
        assert!(inherited.custom_claims.is_empty());

        let tighter = Grant {
            rate_limit: Some(RecordRate {
                requests_per_second: 1.0,
                burst: 2,
            }),
            tokens_per_minute: Some(10),
            expires_at: Some(Timestamp(1_000)),
            custom_claims: [("team".to_owned(), "blue".to_owned())].into(),
            ..Grant::default()
        };
        assert_eq!(holder.bound_grant(tighter.clone()).unwrap(), tighter);

        let looser = [
            Grant {
                rate_limit: Some(RecordRate {
                    requests_per_second: 11.0,
                    burst: 2,
                }),
                ..Grant::default()
            },
            Grant {
                rate_limit: Some(RecordRate {
                    requests_per_second: 1.0,
                    burst: 21,
                }),
                ..Grant::default()
            },
            Grant {
                tokens_per_minute: Some(1001),
                ..Grant::default()
            },
            Grant {
                expires_at: Some(Timestamp(2_001)),
                ..Grant::default()
            },
            Grant {
                custom_claims: [("team".to_owned(), "red".to_owned())].into(),
                ..Grant::default()
            },
            Grant {
                custom_claims: [("role".to_owned(), "admin".to_owned())].into(),
                ..Grant::default()
            },
        ];
        for grant in looser {
            assert!(
                matches!(holder.bound_grant(grant.clone()), Err(Refusal::Scope(_))),
                "{grant:?}"
            );
        }
    }

    #[test]
    fn who_sees_which_key() {
        let alice = caller(Role::User, "acme", "alice", &[]);
        let admin = caller(Role::TenantAdmin, "acme", "root", &[]);
        let foreign_admin = caller(Role::TenantAdmin, "globex", "root", &[]);
        let own = key("acme", Some("alice"));
        let bobs = key("acme", Some("bob"));
        let tenant_wide = key("acme", None);
        let foreign = key("globex", Some("alice"));

        assert!(alice.may_see(&own));
        assert!(!alice.may_see(&bobs));
        assert!(!alice.may_see(&tenant_wide));
        assert!(!alice.may_see(&foreign), "same user name, other tenant");
        for key in [&own, &bobs, &tenant_wide] {
            assert!(admin.may_see(key));
            assert!(!foreign_admin.may_see(key));
            assert!(Caller::operator().may_see(key));
        }
        assert!(!admin.may_see(&foreign));
        assert_eq!(alice.visible(Some(bobs)), Err(Refusal::NotFound));
        assert_eq!(alice.visible(None), Err(Refusal::NotFound));
    }

    #[test]
    fn listings_and_the_audit_log_by_role() {
        let alice = caller(Role::User, "acme", "alice", &[]);
        assert_eq!(
            alice.list_filter(None, None).unwrap(),
            KeyFilter {
                tenant_id: Some("acme".into()),
                user_id: Some("alice".into())
            }
        );
        assert!(alice.list_filter(None, Some("alice")).is_ok());
        assert!(matches!(
            alice.list_filter(None, Some("bob")),
            Err(Refusal::Scope(_))
        ));
        assert!(matches!(
            alice.list_filter(Some("globex"), None),
            Err(Refusal::Tenant(_))
        ));
        assert!(matches!(alice.audit_scope(), Err(Refusal::Scope(_))));

        let admin = caller(Role::TenantAdmin, "acme", "root", &[]);
        assert_eq!(
            admin.list_filter(None, Some("bob")).unwrap(),
            KeyFilter {
                tenant_id: Some("acme".into()),
                user_id: Some("bob".into())
            }
        );
        assert_eq!(admin.audit_scope().unwrap(), Some("acme".into()));

        let operator = Caller::operator();
        assert_eq!(
            operator.list_filter(Some("globex"), None).unwrap(),
            KeyFilter {
                tenant_id: Some("globex".into()),
                user_id: None
            }
        );
        assert_eq!(operator.audit_scope().unwrap(), None);
    }
}
