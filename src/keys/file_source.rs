//! The key file: `[[keys]]` records with their `hash`, hot-reloaded, and edited atomically by
//! `authgate keys add/revoke`.
//!
//! A reload that fails (syntax, bad record, duplicate `key_id` or `hash`) is reported and the
//! previous key set stays in force. Writes go to a temporary file in the same folder, are
//! synced, then renamed over the old file, so a reader never sees half a file.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use toml::Spanned;

use super::{KeyHash, KeyMap, KeyRecord, KeyStore};
use crate::location::line_col;
use crate::telemetry::ResultLabels;

/// How often the key file is checked for changes (SPEC: changes apply within 2 s).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileDoc {
    #[serde(default)]
    keys: Vec<Spanned<toml::Table>>,
}

/// One problem in a key file, located as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", file.display())]
pub struct KeyFileError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every problem found in one key file, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileErrors(pub Vec<KeyFileError>);

impl std::fmt::Display for KeyFileErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KeyFileErrors {}

fn error_at(path: &Path, source: &str, offset: usize, message: impl Into<String>) -> KeyFileError {
    let (line, column) = line_col(source, offset);
    KeyFileError {
        file: path.to_path_buf(),
        line,
        column,
        message: message.into(),
    }
}

/// Parses key-file text into a key set; every problem is reported with its location.
pub fn parse_key_file(path: &Path, source: &str) -> Result<KeyMap, Vec<KeyFileError>> {
    let doc: KeyFileDoc = toml::from_str(source).map_err(|error| {
        let offset = error.span().map_or(0, |span| span.start);
        vec![error_at(path, source, offset, error.message().trim())]
    })?;
    let mut errors = Vec::new();
    let mut keys = KeyMap::with_capacity(doc.keys.len());
    let mut ids = std::collections::HashSet::with_capacity(doc.keys.len());
    for entry in doc.keys {
        let offset = entry.span().start;
        let mut table = entry.into_inner();
        let hash = match table.remove("hash") {
            Some(toml::Value::String(text)) => match KeyHash::from_hex(&text) {
                Some(hash) => hash,
                None => {
                    errors.push(error_at(
                        path,
                        source,
                        offset,
                        "hash must be 64 hex characters (SHA-256 of the key)",
                    ));
                    continue;
                }
            },
            Some(_) => {
                errors.push(error_at(path, source, offset, "hash must be a string"));
                continue;
            }
            None => {
                errors.push(error_at(path, source, offset, "key record without hash"));
                continue;
            }
        };
        let record: KeyRecord = match toml::Value::Table(table).try_into() {
            Ok(record) => record,
            Err(error) => {
                errors.push(error_at(
                    path,
                    source,
                    offset,
                    format!("key record: {}", error.message().trim()),
                ));
                continue;
            }
        };
        if let Err(message) = record.validate() {
            errors.push(error_at(
                path,
                source,
                offset,
                format!("key record {:?}: {message}", record.key_id),
            ));
            continue;
        }
        if !ids.insert(record.key_id.clone()) {
            errors.push(error_at(
                path,
                source,
                offset,
                format!("duplicate key_id {:?}", record.key_id),
            ));
            continue;
        }
        if keys.insert(hash, record).is_some() {
            errors.push(error_at(
                path,
                source,
                offset,
                format!("duplicate hash {}…", hash.short()),
            ));
        }
    }
    if errors.is_empty() {
        Ok(keys)
    } else {
        Err(errors)
    }
}

/// Reads and parses a key file.
pub fn load_key_file(path: &Path) -> Result<KeyMap, Vec<KeyFileError>> {
    let source = std::fs::read_to_string(path).map_err(|error| {
        vec![KeyFileError {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            message: format!("cannot read key file: {error}"),
        }]
    })?;
    parse_key_file(path, &source)
}

/// Reads a key file that may not exist yet: `Ok(None)` when it is missing (a fresh install
/// before the first `authgate keys add`, which creates it). Any other read or parse error is an
/// error: a file that is there must be right.
pub fn load_key_file_if_present(path: &Path) -> Result<Option<KeyMap>, Vec<KeyFileError>> {
    match std::fs::metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => load_key_file(path).map(Some),
    }
}

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let metadata = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Fingerprint {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode,
    })
}

/// The key set from a file, swapped atomically on each successful reload.
#[derive(Debug)]
pub struct FileKeys {
    path: PathBuf,
    keys: ArcSwap<KeyMap>,
    seen: Mutex<Option<Fingerprint>>,
    reloads: Family<ResultLabels, Counter>,
}

impl FileKeys {
    /// Loads the file once; fails when it is there but cannot be read or parsed. A missing
    /// file is an empty key set (every API key is refused) until it appears, which the
    /// watcher notices like any change.
    pub fn open(
        path: &Path,
        reloads: Family<ResultLabels, Counter>,
    ) -> Result<Arc<Self>, Vec<KeyFileError>> {
        let seen = fingerprint(path);
        let keys = load_key_file_if_present(path)?.unwrap_or_else(|| {
            tracing::warn!(
                path = %path.display(),
                "The key file does not exist: no API key is accepted until it is created (`authgate keys add --file` creates it)."
            );
            KeyMap::default()
        });
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            keys: ArcSwap::from_pointee(keys),
            seen: Mutex::new(seen),
            reloads,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, hash: &KeyHash) -> Option<KeyRecord> {
        self.keys.load().get(hash).cloned()
    }

    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reloads if the file changed since the last look. `Some(true)` when a new set is in force.
    pub fn reload_if_changed(&self) -> Option<bool> {
        let now = fingerprint(&self.path);
        {
            let mut seen = self.seen.lock().ok()?;
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        match load_key_file(&self.path) {
            Ok(keys) => {
                let count = keys.len();
                self.keys.store(Arc::new(keys));
                self.reloads
                    .get_or_create(&ResultLabels { result: "success" })
                    .inc();
                tracing::info!(path = %self.path.display(), keys = count, "Key file reloaded.");
                Some(true)
            }
            Err(errors) => {
                self.reloads
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
                for error in &errors {
                    tracing::error!(error = %error, "Key file is invalid; the previous key set stays in force.");
                }
                Some(false)
            }
        }
    }

    /// Polls the file and, after each successful reload, drops the store's cached decisions so
    /// added, changed and revoked keys apply at once. Stops when the store is gone.
    pub fn spawn_watcher(self: &Arc<Self>, store: Weak<KeyStore>) {
        let file = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { return };
                let file = file.clone();
                // Reading and parsing a large file must not stall a runtime worker.
                let changed = tokio::task::spawn_blocking(move || file.reload_if_changed())
                    .await
                    .ok()
                    .flatten();
                if changed == Some(true) {
                    store.invalidate_all();
                }
            }
        });
    }
}

/// Serializes a record (with its hash) as one `[[keys]]` block.
pub fn format_record(hash: &KeyHash, record: &KeyRecord) -> Result<String, String> {
    let mut table = toml::Table::new();
    table.insert("hash".into(), toml::Value::String(hash.to_hex()));
    let value = toml::Value::try_from(record).map_err(|e| e.to_string())?;
    if let toml::Value::Table(fields) = value {
        table.extend(fields);
    }
    // A native TOML datetime reads better than a string (both are accepted).
    if let Some(expires) = record.expires_at
        && let Ok(datetime) = expires.to_rfc3339().parse::<toml::value::Datetime>()
    {
        table.insert("expires_at".into(), toml::Value::Datetime(datetime));
    }
    let mut doc = toml::Table::new();
    doc.insert(
        "keys".into(),
        toml::Value::Array(vec![toml::Value::Table(table)]),
    );
    toml::to_string(&doc).map_err(|e| e.to_string())
}

/// Holds an exclusive lock on `<file>.lock` so concurrent `keys` commands do not interleave.
fn lock_for(path: &Path) -> std::io::Result<std::fs::File> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PathBuf::from(lock_path))?;
    file.lock()?;
    Ok(file)
}

/// Replaces `path` with `contents` atomically (temp file in the same folder, fsync, rename).
pub fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        // Keep the key file's permissions (it is often readable by the gateway user only).
        if let Ok(metadata) = std::fs::metadata(path) {
            file.set_permissions(metadata.permissions())?;
        }
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Appends a record to the key file (created if missing), keeping the rest of the text and
/// its comments; refuses if the result would not load.
pub fn append_record(path: &Path, hash: &KeyHash, record: &KeyRecord) -> Result<(), String> {
    let _lock = lock_for(path).map_err(|e| format!("{}: cannot lock: {e}", path.display()))?;
    let mut text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(&format_record(hash, record)?);
    load_key_file_text_ok(path, &text)?;
    write_atomically(path, &text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Marks the record with `key_id` revoked, editing only that record's block.
pub fn revoke_record(path: &Path, key_id: &str) -> Result<(), String> {
    let _lock = lock_for(path).map_err(|e| format!("{}: cannot lock: {e}", path.display()))?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    load_key_file_text_ok(path, &text)?;
    // Split into the preamble and one chunk per `[[keys]]` header.
    let mut chunks: Vec<String> = vec![String::new()];
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("[[keys]]") {
            chunks.push(String::new());
        }
        if let Some(last) = chunks.last_mut() {
            last.push_str(line);
        }
    }
    let mut found = false;
    for chunk in chunks.iter_mut().skip(1) {
        let Ok(doc) = toml::from_str::<KeyFileDoc>(chunk) else {
            continue;
        };
        let matches = doc.keys.first().is_some_and(|entry| {
            entry.get_ref().get("key_id").and_then(toml::Value::as_str) == Some(key_id)
        });
        if !matches {
            continue;
        }
        found = true;
        // Only the record's own `revoked = …` line, not e.g. a `revoked_by` claim in a
        // `[keys.custom_claims]` sub-table further down.
        let own_table = chunk
            .lines()
            .enumerate()
            .take_while(|(i, line)| *i == 0 || !line.trim_start().starts_with('['))
            .count();
        let mut lines: Vec<&str> = chunk
            .lines()
            .enumerate()
            .filter(|(i, line)| {
                let is_revoked = line
                    .trim_start()
                    .strip_prefix("revoked")
                    .is_some_and(|rest| rest.trim_start().starts_with('='));
                !(*i < own_table && is_revoked)
            })
            .map(|(_, line)| line)
            .collect();
        // Insert right after the header so it stays inside this record's table.
        lines.insert(1, "revoked = true");
        let mut rebuilt = lines.join("\n");
        rebuilt.push('\n');
        *chunk = rebuilt;
    }
    if !found {
        return Err(format!("{}: no key with key_id {key_id:?}", path.display()));
    }
    let new_text: String = chunks.concat();
    let keys = load_key_file_text_ok(path, &new_text)?;
    if !keys
        .values()
        .any(|record| record.key_id == key_id && record.revoked)
    {
        return Err(format!(
            "{}: could not mark {key_id:?} revoked",
            path.display()
        ));
    }
    write_atomically(path, &new_text).map_err(|e| format!("{}: {e}", path.display()))
}

fn load_key_file_text_ok(path: &Path, text: &str) -> Result<KeyMap, String> {
    parse_key_file(path, text).map_err(|errors| KeyFileErrors(errors).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key_id: &str) -> KeyRecord {
        serde_json::from_str(&format!(
            r#"{{"key_id":"{key_id}","tenant_id":"acme","scopes":["a","b"]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn parses_records_and_reports_located_errors() {
        let hash = KeyHash::of("sgk_x").to_hex();
        let good = format!(
            "# comment\n[[keys]]\nhash = \"{hash}\"\nkey_id = \"k1\"\ntenant_id = \"acme\"\nexpires_at = 2030-01-01T00:00:00Z\n"
        );
        let keys = parse_key_file(Path::new("keys.toml"), &good).unwrap();
        assert_eq!(keys.len(), 1);

        let cases = [
            (
                "[[keys]]\nkey_id = \"k\"\ntenant_id = \"t\"\n",
                "without hash",
            ),
            (
                "[[keys]]\nhash = \"abc\"\nkey_id = \"k\"\ntenant_id = \"t\"\n",
                "64 hex",
            ),
            (
                &*format!("[[keys]]\nhash = \"{hash}\"\ntenant_id = \"t\"\n"),
                "key_id",
            ),
            (
                &*format!(
                    "[[keys]]\nhash = \"{hash}\"\nkey_id = \"k\"\ntenant_id = \"t\"\nbogus = 1\n"
                ),
                "bogus",
            ),
            (
                &*format!(
                    "[[keys]]\nhash = \"{hash}\"\nkey_id = \"k\"\ntenant_id = \"t\"\n[[keys]]\nhash = \"{hash}\"\nkey_id = \"k2\"\ntenant_id = \"t\"\n"
                ),
                "duplicate hash",
            ),
            ("[[keys]\n", "unclosed"),
        ];
        for (text, expected) in cases {
            let errors = parse_key_file(Path::new("keys.toml"), text).unwrap_err();
            let joined = KeyFileErrors(errors).to_string();
            assert!(
                joined.to_lowercase().contains(&expected.to_lowercase()),
                "{joined}"
            );
            assert!(joined.starts_with("keys.toml:"), "{joined}");
        }
        let dup_ids = format!(
            "[[keys]]\nhash = \"{hash}\"\nkey_id = \"k\"\ntenant_id = \"t\"\n[[keys]]\nhash = \"{}\"\nkey_id = \"k\"\ntenant_id = \"t\"\n",
            KeyHash::of("sgk_y").to_hex()
        );
        let errors = parse_key_file(Path::new("keys.toml"), &dup_ids).unwrap_err();
        assert!(errors[0].message.contains("duplicate key_id"));
        assert_eq!(errors[0].line, 5);
    }

    #[test]
    fn append_then_revoke_edits_atomically_and_keeps_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, "# operator comment\n").unwrap();
        append_record(&path, &KeyHash::of("sgk_one"), &record("one")).unwrap();
        append_record(&path, &KeyHash::of("sgk_two"), &record("two")).unwrap();
        assert!(append_record(&path, &KeyHash::of("sgk_three"), &record("two")).is_err());
        revoke_record(&path, "one").unwrap();
        revoke_record(&path, "one").unwrap();
        assert!(revoke_record(&path, "missing").is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# operator comment\n"), "{text}");
        let keys = load_key_file(&path).unwrap();
        assert!(keys[&KeyHash::of("sgk_one")].revoked);
        assert!(!keys[&KeyHash::of("sgk_two")].revoked);
        assert_eq!(keys.len(), 2);
    }
}
