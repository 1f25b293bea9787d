//! The revocations in force: a bounded list for the admin API and an index the request path
//! reads without a lock.
//!
//! Writers (the admin API, the Redis subscriber, housekeeping) take one mutex and publish a
//! new immutable index; a request loads the current index (one atomic load) and, while no
//! revocation is in force, does nothing more.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;

use super::{ApplyError, Kind, Revocation, RevocationSettings, Target};
use crate::auth::{AuthMethod, Identity};
use crate::keys::{KeyHash, Timestamp};

/// A subject's revocations: each with its issuer (`None` = any) and expiry.
type SubjectRules = Vec<(Option<Box<str>>, Timestamp)>;

/// The request path's maps: a fast hasher with a per-process random seed (the keys are
/// chosen by admins, and a seeded hash keeps them from being aimed at one bucket).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What the request path looks up: each revoked value with its expiry.
#[derive(Debug, Default)]
struct Index {
    key_ids: FastMap<Box<str>, Timestamp>,
    key_hashes: FastMap<KeyHash, Timestamp>,
    subjects: FastMap<Box<str>, SubjectRules>,
    jwt_ids: FastMap<Box<str>, Timestamp>,
}

impl Index {
    fn build<'a>(revocations: impl Iterator<Item = &'a Revocation>) -> Self {
        let mut index = Self::default();
        for revocation in revocations {
            let target = &revocation.target;
            let expires = revocation.expires_at;
            match target.kind {
                Kind::KeyId => {
                    index.key_ids.insert(target.value.clone(), expires);
                }
                Kind::KeyHash => {
                    if let Some(hash) = KeyHash::from_hex(&target.value) {
                        index.key_hashes.insert(hash, expires);
                    }
                }
                Kind::Subject => index
                    .subjects
                    .entry(target.value.clone())
                    .or_default()
                    .push((target.issuer.clone(), expires)),
                Kind::JwtId => {
                    index.jwt_ids.insert(target.value.clone(), expires);
                }
            }
        }
        index
    }

    fn is_revoked(&self, identity: &Identity, now: impl Fn() -> Timestamp) -> bool {
        let live = |expires: &Timestamp| *expires > now();
        match identity.method {
            AuthMethod::ApiKey => {
                (!self.key_ids.is_empty()
                    && identity
                        .key_id()
                        .and_then(|id| self.key_ids.get(id))
                        .is_some_and(live))
                    || (!self.key_hashes.is_empty()
                        && identity
                            .key_hash
                            .and_then(|hash| self.key_hashes.get(&hash))
                            .is_some_and(live))
            }
            AuthMethod::Jwt => {
                let by_subject = self.subjects.get(identity.subject()).is_some_and(|rules| {
                    rules.iter().any(|(issuer, expires)| {
                        live(expires)
                            && issuer
                                .as_deref()
                                .is_none_or(|issuer| identity.issuer() == Some(issuer))
                    })
                });
                by_subject
                    || identity
                        .jwt_id()
                        .and_then(|id| self.jwt_ids.get(id))
                        .is_some_and(live)
            }
        }
    }
}

/// Other ids one entry answers to, at most: two instances (or another system) that revoke
/// the same credential each name it by their own id, and a lift by any of them must lift it.
const MAX_ALIASES: usize = 16;

/// The writers' view: every revocation by insertion order and by id, and by target (a
/// credential is revoked once; revoking it again extends the first revocation and makes the
/// new id an alias of it).
#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    by_seq: BTreeMap<u64, Arc<Revocation>>,
    /// Every id an entry answers to: its own and its aliases.
    seq_by_id: HashMap<Box<str>, u64>,
    seq_by_target: HashMap<Target, u64>,
    aliases: HashMap<u64, Vec<Box<str>>>,
}

impl State {
    /// Removes an entry and every id it answers to.
    fn forget(&mut self, seq: u64) -> Option<Arc<Revocation>> {
        let removed = self.by_seq.remove(&seq)?;
        self.seq_by_id.remove(&removed.id);
        for alias in self.aliases.remove(&seq).unwrap_or_default() {
            self.seq_by_id.remove(&alias);
        }
        self.seq_by_target.remove(&removed.target);
        Some(removed)
    }
}

/// One page of [`RevocationList::page`].
#[derive(Debug)]
pub struct Page {
    pub revocations: Vec<Arc<Revocation>>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<String>,
}

#[derive(Debug)]
pub struct RevocationList {
    settings: Mutex<RevocationSettings>,
    state: Mutex<State>,
    index: ArcSwap<Index>,
    /// Entries in the index; 0 lets the request path skip the index entirely.
    active: AtomicUsize,
}

impl RevocationList {
    pub fn new(settings: RevocationSettings) -> Self {
        Self {
            settings: Mutex::new(settings),
            state: Mutex::default(),
            index: ArcSwap::from_pointee(Index::default()),
            active: AtomicUsize::new(0),
        }
    }

    pub fn settings(&self) -> RevocationSettings {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// New settings (a reload): the next revocation uses the new ttl; a smaller
    /// `max_entries` refuses new revocations until enough expire, it never drops one.
    pub fn set_settings(&self, settings: RevocationSettings) {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = settings;
    }

    pub fn len(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The request path. The clock is read only when a revoked value matches. Inlined: with
    /// an empty list (the usual case) it is one load, cheaper than the call (a plain
    /// `#[inline]` was not taken once a second caller appeared).
    #[inline(always)]
    pub fn is_revoked(&self, identity: &Identity) -> bool {
        if self.active.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.index.load().is_revoked(identity, Timestamp::now)
    }

    /// Enters a revocation. The same target again keeps the first entry (its id) and the
    /// later expiry of the two.
    pub fn insert(&self, revocation: Revocation) -> Result<Arc<Revocation>, ApplyError> {
        let now = Timestamp::now();
        if revocation.is_expired(now) {
            return Err(ApplyError::Expired);
        }
        let mut state = self.lock();
        // An expired entry for the target is gone already: the new revocation starts afresh.
        if let Some(&seq) = state.seq_by_target.get(&revocation.target)
            && state.by_seq[&seq].is_expired(now)
        {
            state.forget(seq);
        }
        if let Some(&seq) = state.seq_by_target.get(&revocation.target) {
            let existing = state.by_seq[&seq].clone();
            let aliases = state.aliases.entry(seq).or_default();
            if revocation.id != existing.id
                && aliases.len() < MAX_ALIASES
                && !aliases.contains(&revocation.id)
            {
                aliases.push(revocation.id.clone());
                state.seq_by_id.insert(revocation.id.clone(), seq);
            }
            if existing.expires_at >= revocation.expires_at {
                return Ok(existing);
            }
            let extended = Arc::new(Revocation {
                expires_at: revocation.expires_at,
                ..(*existing).clone()
            });
            state.by_seq.insert(seq, extended.clone());
            self.publish(&state);
            return Ok(extended);
        }
        let max_entries = self.settings().max_entries;
        if state.by_seq.len() >= max_entries {
            // Expired entries make room before a revocation is refused.
            Self::purge_locked(&mut state, now);
            if state.by_seq.len() >= max_entries {
                return Err(ApplyError::Full(state.by_seq.len()));
            }
        }
        let revocation = Arc::new(revocation);
        let seq = state.next_seq;
        state.next_seq += 1;
        state.seq_by_id.insert(revocation.id.clone(), seq);
        state.seq_by_target.insert(revocation.target.clone(), seq);
        state.by_seq.insert(seq, revocation.clone());
        self.publish(&state);
        Ok(revocation)
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Revocation>> {
        let mut state = self.lock();
        let seq = *state.seq_by_id.get(id)?;
        let removed = state.forget(seq)?;
        self.publish(&state);
        // An expired revocation was no longer in force: nothing was lifted.
        (!removed.is_expired(Timestamp::now())).then_some(removed)
    }

    /// The revocation in force with this id (or alias): an expired one is not, even before
    /// housekeeping forgets it (as in [`Self::page`]).
    pub fn get(&self, id: &str) -> Option<Arc<Revocation>> {
        let now = Timestamp::now();
        let state = self.lock();
        let seq = state.seq_by_id.get(id)?;
        state
            .by_seq
            .get(seq)
            .filter(|revocation| !revocation.is_expired(now))
            .cloned()
    }

    /// Up to `limit` revocations in force, in the order they were entered, starting after the
    /// page token `after` (opaque to callers; an unknown token starts from the beginning of
    /// what is left after it).
    pub fn page(&self, after: Option<&str>, limit: usize) -> Page {
        let start = after
            .and_then(|token| token.parse::<u64>().ok())
            .map_or(0, |seq| seq.saturating_add(1));
        let now = Timestamp::now();
        let state = self.lock();
        let mut revocations = Vec::with_capacity(limit.min(state.by_seq.len()));
        let mut next = None;
        let mut last = None;
        for (&seq, revocation) in state.by_seq.range(start..) {
            if revocation.is_expired(now) {
                continue;
            }
            if revocations.len() == limit {
                next = last;
                break;
            }
            revocations.push(revocation.clone());
            last = Some(seq);
        }
        Page {
            revocations,
            next: next.map(|seq| seq.to_string()),
        }
    }

    pub fn purge_expired(&self, now: Timestamp) -> usize {
        let mut state = self.lock();
        let purged = Self::purge_locked(&mut state, now);
        if purged > 0 {
            self.publish(&state);
        }
        purged
    }

    fn purge_locked(state: &mut State, now: Timestamp) -> usize {
        let expired: Vec<u64> = state
            .by_seq
            .iter()
            .filter(|(_, revocation)| revocation.is_expired(now))
            .map(|(&seq, _)| seq)
            .collect();
        for &seq in &expired {
            state.forget(seq);
        }
        expired.len()
    }

    /// A new index for the request path; the count is stored last, so a request that sees
    /// it non-zero finds the entry in the index.
    fn publish(&self, state: &State) {
        self.index
            .store(Arc::new(Index::build(state.by_seq.values().map(|r| &**r))));
        self.active.store(state.by_seq.len(), Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every write leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::IdentityFields;
    use crate::revocation::Source;

    fn revocation(id: &str, kind: Kind, value: &str, issuer: Option<&str>) -> Revocation {
        let now = Timestamp::now();
        Revocation {
            id: id.into(),
            target: Target {
                kind,
                value: value.into(),
                issuer: issuer.map(Into::into),
            },
            created_at: now,
            expires_at: Timestamp(now.0 + 3600),
            source: Source::Api,
        }
    }

    fn api_key(key_id: &str, key: &str) -> Identity {
        Identity::new(
            AuthMethod::ApiKey,
            &IdentityFields {
                subject: key_id,
                key_id: Some(key_id),
                key_hash: Some(KeyHash::of(key)),
                ..IdentityFields::default()
            },
        )
    }

    fn jwt(sub: &str, iss: &str, jti: Option<&str>) -> Identity {
        Identity::new(
            AuthMethod::Jwt,
            &IdentityFields {
                subject: sub,
                issuer: Some(iss),
                jwt_id: jti,
                ..IdentityFields::default()
            },
        )
    }

    fn list(max_entries: usize) -> RevocationList {
        RevocationList::new(RevocationSettings {
            max_entries,
            ..RevocationSettings::default()
        })
    }

    #[test]
    fn each_kind_matches_its_credential_only() {
        let list = list(10);
        let key = api_key("key_a", "sgk_a");
        let other_key = api_key("key_b", "sgk_b");
        assert!(!list.is_revoked(&key));
        list.insert(revocation("1", Kind::KeyId, "key_a", None))
            .unwrap();
        assert!(list.is_revoked(&key));
        assert!(!list.is_revoked(&other_key));
        list.insert(revocation(
            "2",
            Kind::KeyHash,
            &KeyHash::of("sgk_b").to_hex(),
            None,
        ))
        .unwrap();
        assert!(list.is_revoked(&other_key));

        let alice = jwt("alice", "https://idp", Some("t1"));
        let alice_elsewhere = jwt("alice", "https://other", None);
        let bob = jwt("bob", "https://idp", Some("t2"));
        list.insert(revocation("3", Kind::Subject, "alice", Some("https://idp")))
            .unwrap();
        assert!(list.is_revoked(&alice));
        assert!(!list.is_revoked(&alice_elsewhere), "issuer-bound");
        assert!(!list.is_revoked(&bob));
        list.insert(revocation("4", Kind::JwtId, "t2", None))
            .unwrap();
        assert!(list.is_revoked(&bob));
        // A JWT whose sub equals a revoked key_id is not an API key.
        assert!(!list.is_revoked(&jwt("key_a", "https://idp", None)));
    }

    #[test]
    fn expired_entries_are_ignored_purged_and_make_room() {
        let list = list(1);
        let mut old = revocation("1", Kind::KeyId, "key_a", None);
        old.expires_at = Timestamp(Timestamp::now().0 - 1);
        assert_eq!(list.insert(old), Err(ApplyError::Expired));
        list.insert(revocation("2", Kind::KeyId, "key_b", None))
            .unwrap();
        assert_eq!(
            list.insert(revocation("3", Kind::KeyId, "key_c", None)),
            Err(ApplyError::Full(1))
        );
        assert_eq!(list.purge_expired(Timestamp(Timestamp::now().0 + 7200)), 1);
        assert!(list.is_empty());
        list.insert(revocation("3", Kind::KeyId, "key_c", None))
            .unwrap();
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn the_same_target_twice_keeps_one_entry_with_the_later_expiry() {
        let list = list(10);
        let first = list
            .insert(revocation("1", Kind::KeyId, "key_a", None))
            .unwrap();
        let mut again = revocation("2", Kind::KeyId, "key_a", None);
        again.expires_at = Timestamp(first.expires_at.0 + 60);
        let kept = list.insert(again).unwrap();
        assert_eq!(&*kept.id, "1");
        assert_eq!(kept.expires_at.0, first.expires_at.0 + 60);
        assert_eq!(list.len(), 1);
        // The second id is an alias: lifting by it lifts the credential, and both ids go.
        assert_eq!(&*list.get("2").unwrap().id, "1");
        assert!(list.remove("2").is_some());
        assert!(list.remove("1").is_none());
        assert!(list.get("2").is_none());
        assert!(!list.is_revoked(&api_key("key_a", "sgk_a")));
    }

    #[test]
    fn pages_walk_every_entry_once() {
        let list = list(100);
        for n in 0..25 {
            list.insert(revocation(
                &n.to_string(),
                Kind::JwtId,
                &format!("t{n}"),
                None,
            ))
            .unwrap();
        }
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let page = list.page(token.as_deref(), 10);
            seen.extend(page.revocations.iter().map(|r| r.id.to_string()));
            match page.next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        let expected: Vec<String> = (0..25).map(|n| n.to_string()).collect();
        assert_eq!(seen, expected);
        assert!(list.page(Some("not-a-token"), 10).revocations.len() == 10);
    }
}
