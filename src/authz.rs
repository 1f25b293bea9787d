//! Authorization (SPEC §4.3): the route's scope and tenant rules against an identity.
//! Checked on every request, cached credential or not.

use crate::auth::Identity;
use crate::error::GatewayError;
use crate::routes::Route;

/// Ok when the identity may use the route; else 403 with the code SPEC §4.3 names.
pub fn authorize(route: &Route, identity: &Identity) -> Result<(), GatewayError> {
    let has = |scope: &String| identity.has_scope(scope);
    let rule = &route.scopes;
    if !rule.any_of.is_empty() && !rule.any_of.iter().any(has) {
        return Err(GatewayError::InsufficientScope(rule.any_of.join(" ")));
    }
    if !rule.all_of.iter().all(has) {
        return Err(GatewayError::InsufficientScope(rule.all_of.join(" ")));
    }
    if let Some(tenants) = &route.tenants {
        let allowed = identity
            .tenant_id()
            .is_some_and(|tenant| tenants.iter().any(|t| t == tenant));
        if !allowed {
            return Err(GatewayError::TenantNotAllowed);
        }
    }
    Ok(())
}
