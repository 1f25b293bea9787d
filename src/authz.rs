//! Authorization (SPEC §4.3): the route's scope and tenant rules against an identity.
//! Checked on every request, cached credential or not.

use crate::auth::Identity;
use crate::error::GatewayError;
use crate::routes::policy::AccessPolicy;

/// Ok when the identity may use a route with this policy; else 403 with the code SPEC §4.3
/// names.
pub fn authorize(access: &AccessPolicy, identity: &Identity) -> Result<(), GatewayError> {
    let has = |scope: &String| identity.has_scope(scope);
    let rule = &access.scopes;
    if !rule.any_of.is_empty() && !rule.any_of.iter().any(has) {
        return Err(GatewayError::InsufficientScope(rule.any_of.join(" ")));
    }
    if !rule.all_of.iter().all(has) {
        return Err(GatewayError::InsufficientScope(rule.all_of.join(" ")));
    }
    if let Some(tenants) = &access.tenants {
        let allowed = identity
            .tenant_id()
            .is_some_and(|tenant| tenants.iter().any(|t| t == tenant));
        if !allowed {
            return Err(GatewayError::TenantNotAllowed);
        }
    }
    Ok(())
}
