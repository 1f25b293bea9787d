//! What every section's compile step shares: the error collector that locates each error in
//! the file, relative paths resolved against the config's folder, and rate values.

use std::ops::Range;
use std::path::{Path, PathBuf};

use http::HeaderName;
use http::header::EXPECT;
use toml::Spanned;

use super::file::FileRate;
use super::{ConfigError, IdentitySettings};
use crate::http1::fields::is_controlled_request_field;
use crate::limits::settings::Rate;
use crate::location::line_col;

/// Collects errors with their source location.
pub(super) struct Errors<'a> {
    file: &'a Path,
    source: &'a str,
    pub(super) list: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    pub(super) fn new(file: &'a Path, source: &'a str) -> Self {
        Self {
            file,
            source,
            list: Vec::new(),
        }
    }

    pub(super) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.source, span.start);
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
        });
    }
}

/// A path from the config file, relative to the config file's folder unless absolute.
pub(super) fn resolve(base_dir: &Path, relative: &str) -> PathBuf {
    let path = Path::new(relative);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// A `{ requests_per_second, burst }` value, validated.
pub(super) fn compile_rate(rate: &Spanned<FileRate>, errors: &mut Errors<'_>) -> Option<Rate> {
    let value = rate.get_ref();
    Rate::new(value.requests_per_second, value.burst)
        .map_err(|message| errors.at(rate.span(), message))
        .ok()
}

/// A header name from the config, lowercased, for a header authgate reads or sets on
/// requests: a valid name without `_` (such spellings never reach authgate, and backends read
/// them like `-`), not one the HTTP layer or authgate itself controls (framing, hop-by-hop,
/// `Host`, `x-forwarded-*`, `x-request-id`..., and `Expect`, which would change how the
/// upstream exchange runs), not under the identity prefix, not the assertion header. `Err`
/// says why, naming `what` (the config field).
pub(super) fn request_header_name(
    raw: &str,
    what: &str,
    identity: &IdentitySettings,
) -> Result<HeaderName, String> {
    let lower = raw.to_ascii_lowercase();
    let name = match HeaderName::from_bytes(lower.as_bytes()) {
        Ok(name) if !lower.contains('_') => name,
        _ => {
            return Err(format!(
                "{what}: {raw:?} is not a header name (letters, digits and '-', no '_')"
            ));
        }
    };
    if name == EXPECT || is_controlled_request_field(lower.as_bytes()) {
        return Err(format!(
            "{what}: {lower:?} is a hop-by-hop, framing or forwarding header that authgate controls itself"
        ));
    }
    if crate::headers::name_has_prefix(&lower, &identity.header_prefix) {
        return Err(format!(
            "{what}: {lower:?} is an identity header (under identity.header_prefix {:?}): authgate removes the client's and sets its own",
            identity.header_prefix
        ));
    }
    if identity
        .assertion
        .as_ref()
        .is_some_and(|a| a.header == name)
    {
        return Err(format!(
            "{what}: {lower:?} is an identity header (identity.assertion.header): authgate removes the client's and sets its own"
        ));
    }
    Ok(name)
}
