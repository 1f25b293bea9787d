//! `[database]` and `[key_management]` compiled: the key service's store and its rules.

use std::path::Path;
use std::time::Duration;

use super::file::{FileConfig, FileDatabase};
use super::support::Errors;
use crate::key_service::settings::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_USAGE_FLUSH, DatabaseSettings, DatabaseUrl, ManagementSettings,
};
use toml::Spanned;

/// Connections a pool may open, at most: a database serves many gateways.
const MAX_CONNECTIONS: u32 = 1000;

/// `[database]`, with relative SQLite paths resolved against the config folder.
pub(super) fn compile_database(
    file: &FileConfig,
    base_dir: &Path,
    errors: &mut Errors<'_>,
) -> Option<DatabaseSettings> {
    let spanned = file.database.as_ref()?;
    let database: &FileDatabase = spanned.get_ref();
    let url = match DatabaseUrl::resolve(database.url.get_ref().as_str(), base_dir) {
        Ok(url) => url,
        Err(message) => {
            errors.at(database.url.span(), format!("database.url: {message}"));
            return None;
        }
    };
    let mut settings = DatabaseSettings::new(url);
    settings.max_connections = DEFAULT_MAX_CONNECTIONS;
    settings.usage_flush = DEFAULT_USAGE_FLUSH;
    if let Some(max) = &database.max_connections {
        if (1..=MAX_CONNECTIONS).contains(max.get_ref()) {
            settings.max_connections = *max.get_ref();
        } else {
            errors.at(
                max.span(),
                format!("database.max_connections must be 1 to {MAX_CONNECTIONS}"),
            );
        }
    }
    if let Some(flush) = &database.usage_flush {
        let every = flush.get_ref().0;
        if (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&every) {
            settings.usage_flush = every;
        } else {
            errors.at(
                flush.span(),
                "database.usage_flush must be between 1s and 1h",
            );
        }
    }
    Some(settings)
}

/// `[key_management]`.
pub(super) fn compile_key_management(
    file: &FileConfig,
    errors: &mut Errors<'_>,
) -> ManagementSettings {
    let mut settings = ManagementSettings::default();
    let Some(management) = &file.key_management else {
        return settings;
    };
    for (name, field, target) in [
        (
            "admin_scope",
            &management.admin_scope,
            &mut settings.admin_scope,
        ),
        (
            "lookup_scope",
            &management.lookup_scope,
            &mut settings.lookup_scope,
        ),
    ] {
        let Some(scope) = field else {
            continue;
        };
        let value = scope.get_ref().as_str();
        if value.is_empty() || value.len() > 256 || value.contains(char::is_whitespace) {
            errors.at(
                scope.span(),
                format!("key_management.{name} must be one scope: 1 to 256 characters, no spaces"),
            );
        } else {
            value.clone_into(target);
        }
    }
    // Only where a lookup route exists: a config without one stays valid as it was.
    let serves_lookups = file.routes.iter().any(|route| {
        route
            .get_ref()
            .upstream
            .get_ref()
            .0
            .iter()
            .any(|url| url.as_str() == "builtin:key-lookup")
    });
    if serves_lookups && settings.lookup_scope == settings.admin_scope {
        errors.at(
            management
                .lookup_scope
                .as_ref()
                .or(management.admin_scope.as_ref())
                .map_or(0..0, Spanned::span),
            "key_management.lookup_scope must differ from admin_scope: a tenant admin could \
             otherwise read every tenant's keys through builtin:key-lookup",
        );
    }
    if let Some(max) = &management.max_keys_per_user {
        if (1..=1_000_000).contains(max.get_ref()) {
            settings.max_keys_per_user = *max.get_ref();
        } else {
            errors.at(
                max.span(),
                "key_management.max_keys_per_user must be 1 to 1000000",
            );
        }
    }
    settings
}
