//! The key database as a key source: the key cache's miss lookup, one indexed query. A
//! database that fails is a failing source (stale-if-error, then 503), never "unknown".

use super::database::{DbError, KeyDatabase};
use crate::keys::{KeyHash, RecordLookup, RecordSource, SourceError};

impl RecordSource for KeyDatabase {
    fn lookup<'a>(&'a self, hash: &'a KeyHash) -> RecordLookup<'a> {
        Box::pin(async move {
            self.key_by_hash(hash)
                .await
                .map(|found| found.map(|key| key.record))
                .map_err(|error: DbError| SourceError(error.to_string()))
        })
    }

    fn kind(&self) -> &'static str {
        "database"
    }
}
