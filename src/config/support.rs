//! What every section's compile step shares: the error collector that locates each error in
//! the file, relative paths resolved against the config's folder, and rate values.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::ConfigError;
use super::file::FileRate;
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
