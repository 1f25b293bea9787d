//! The compiled route table: match a normalized request to exactly one route, or none.
//!
//! Precedence (SPEC §3): an exact `path` beats any `path_prefix`; a longer prefix beats a
//! shorter one; a route with a `host` beats one without; remaining ties go to file order.
//! Lookups cost one hash probe per candidate prefix of the path (its segment boundaries),
//! whatever the number of routes.

pub mod cors;
pub mod normalize;
pub mod policy;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::forward::UpstreamSpec;
use crate::limits::settings::{Rate, UsageRule};
use policy::AccessPolicy;

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// `match.path`: the normalized path equals it.
    Exact(String),
    /// `match.path_prefix`: the path starts with it at a segment boundary.
    Prefix(String),
}

/// An upstream authgate implements itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `builtin:key-management`: the key service's management API.
    KeyManagement,
    /// `builtin:key-lookup`: the SPEC §4.1 control-plane protocol (`GET /v1/keys/{hash}`)
    /// over the key service's store, for edge gateways without database access.
    KeyLookup,
}

impl Builtin {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyManagement => "builtin:key-management",
            Self::KeyLookup => "builtin:key-lookup",
        }
    }
}

/// Everything a route matches on.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub path: PathPattern,
    /// Lowercase, without port.
    pub host: Option<String>,
    pub methods: Option<Vec<Method>>,
}

impl RouteMatch {
    fn accepts(&self, host: Option<&str>, method: &Method) -> bool {
        if let Some(wanted) = &self.host {
            match host {
                Some(host) if host.eq_ignore_ascii_case(wanted) => {}
                _ => return false,
            }
        }
        match &self.methods {
            Some(methods) => methods.contains(method),
            None => true,
        }
    }

    /// Whether `path` (already normalized) is matched by this pattern.
    pub fn path_matches(&self, path: &str) -> bool {
        match &self.path {
            PathPattern::Exact(exact) => path == exact,
            PathPattern::Prefix(prefix) => prefix_matches(prefix, path),
        }
    }
}

/// `/v1/` matches `/v1/x`; `/v1` matches `/v1` and `/v1/x` but never `/v1x`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// One compiled `[[routes]]` entry.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    /// Position in the file (0-based), the last tie-breaker.
    pub index: usize,
    pub matcher: RouteMatch,
    /// Where requests go, as configured; the gateway holds the live clients for it.
    pub upstream: UpstreamSpec,
    /// Answered by authgate itself instead of an upstream (`upstream` then has no targets).
    pub builtin: Option<Builtin>,
    /// Accepted credentials, required scopes and tenants.
    pub access: AccessPolicy,
    pub rate_limit: Option<Rate>,
    pub usage: Option<UsageRule>,
    pub strip_prefix: Option<String>,
    pub forward_authorization: bool,
    pub preserve_host: bool,
    pub timeout: Duration,
    pub max_body_bytes: Option<u64>,
    pub websocket: bool,
    /// `upstream_headers`: set on every forwarded request after every strip, so the client's
    /// copies never survive. The values are secrets, marked sensitive: `Debug` prints
    /// `Sensitive`, and HTTP/2 never puts them in its header compression table.
    pub upstream_headers: Box<[(http::HeaderName, http::HeaderValue)]>,
    /// `cors`: browser origins that may call the route; `None`, no CORS (the default).
    pub cors: Option<Arc<cors::Cors>>,
    /// This route's duration histograms, resolved on its first request.
    pub histograms: std::sync::OnceLock<crate::telemetry::RouteHistograms>,
}

impl Route {
    /// The path sent upstream: `strip_prefix` removed (never leaving an empty path).
    pub fn upstream_path<'a>(&self, path: &'a str) -> &'a str {
        if let Some(strip) = &self.strip_prefix
            && prefix_matches(strip, path)
        {
            let rest = &path[strip.len()..];
            if rest.is_empty() {
                return "/";
            }
            // `strip_prefix = "/v1/"` leaves `x` from `/v1/x`: keep the slash.
            if !rest.starts_with('/') {
                return &path[strip.len() - 1..];
            }
            return rest;
        }
        path
    }
}

/// Path -> route indexes. foldhash rather than SipHash: the keys are the operator's own
/// route paths, so flooding resistance buys nothing, and lookups run several times per request.
type RouteMap = HashMap<String, Vec<usize>, foldhash::fast::RandomState>;

/// The route table. Routes are kept in file order; indexes point into it.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Exact path -> candidates, best first (host-specific, then file order).
    exact: RouteMap,
    /// Prefix -> candidates, best first.
    prefixes: RouteMap,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        let mut exact = RouteMap::default();
        let mut prefixes = RouteMap::default();
        for (index, route) in routes.iter().enumerate() {
            match &route.matcher.path {
                PathPattern::Exact(path) => exact.entry(path.clone()).or_default().push(index),
                PathPattern::Prefix(prefix) => {
                    prefixes.entry(prefix.clone()).or_default().push(index)
                }
            }
        }
        let rank = |routes: &[Arc<Route>], list: &mut Vec<usize>| {
            // Stable sort: host-specific first; file order is kept within each group.
            list.sort_by_key(|&i| routes[i].matcher.host.is_none());
        };
        for list in exact.values_mut().chain(prefixes.values_mut()) {
            rank(&routes, list);
        }
        Self {
            routes,
            exact,
            prefixes,
        }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route for a normalized path, a lowercase host without port, and a method.
    pub fn find(&self, host: Option<&str>, method: &Method, path: &str) -> Option<&Arc<Route>> {
        if let Some(found) = self.pick(self.exact.get(path), host, method) {
            return Some(found);
        }
        if self.prefixes.is_empty() {
            return None;
        }
        // Candidate prefixes, longest first: the whole path, then at each '/' from the end
        // the part including the slash and the part before it.
        if let Some(found) = self.pick(self.prefixes.get(path), host, method) {
            return Some(found);
        }
        let bytes = path.as_bytes();
        let mut end = path.len();
        while let Some(slash) = bytes[..end].iter().rposition(|&b| b == b'/') {
            if slash + 1 < path.len()
                && let Some(found) = self.pick(self.prefixes.get(&path[..=slash]), host, method)
            {
                return Some(found);
            }
            if slash > 0
                && let Some(found) = self.pick(self.prefixes.get(&path[..slash]), host, method)
            {
                return Some(found);
            }
            end = slash;
        }
        None
    }

    fn pick(
        &self,
        candidates: Option<&Vec<usize>>,
        host: Option<&str>,
        method: &Method,
    ) -> Option<&Arc<Route>> {
        candidates?
            .iter()
            .map(|&i| &self.routes[i])
            .find(|route| route.matcher.accepts(host, method))
    }

    /// Routes that can never be chosen because an earlier or more specific route always wins.
    /// Returns `(shadowed, by)` name pairs, for `authgate check` warnings.
    pub fn shadowed(&self) -> Vec<(Arc<str>, Arc<str>)> {
        let mut found = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            let by = self
                .routes
                .iter()
                .enumerate()
                .find(|(j, other)| *j != i && same_pattern_shadows(other, route, *j < i));
            if let Some((_, other)) = by {
                found.push((route.name.clone(), other.name.clone()));
            }
        }
        found
    }
}

/// Whether `winner` takes every request `loser` would match: same path pattern, a host filter
/// at least as broad, a method set at least as broad, and it ranks first.
fn same_pattern_shadows(winner: &Route, loser: &Route, winner_earlier: bool) -> bool {
    if winner.matcher.path != loser.matcher.path {
        return false;
    }
    let host_covers = match (&winner.matcher.host, &loser.matcher.host) {
        (None, None) => winner_earlier,
        (Some(a), Some(b)) => a == b && winner_earlier,
        // A host-less route never outranks a host-specific one.
        (None, Some(_)) => false,
        // A host-specific route only covers requests for its own host.
        (Some(_), None) => false,
    };
    let methods_cover = match (&winner.matcher.methods, &loser.matcher.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(w), Some(l)) => l.iter().all(|m| w.contains(m)),
    };
    host_covers && methods_cover
}

/// The Host used for matching: lowercase, port removed, IPv6 brackets kept.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    // A port is the run of digits after the last `:`. Scanned back over bytes: this runs for
    // every request, and the generic reverse `char` search costs several times more.
    let bytes = host.as_bytes();
    let digits = bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    match bytes.len().checked_sub(digits + 1) {
        Some(colon) if bytes[colon] == b':' => &host[..colon],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::host_without_port;

    #[test]
    fn a_port_is_the_digits_after_the_last_colon() {
        for (host, expected) in [
            ("api.example", "api.example"),
            ("api.example:8080", "api.example"),
            ("api.example:", "api.example"),
            ("127.0.0.1:58265", "127.0.0.1"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("[::1", "[::1"),
            // Not a port: letters after the colon, or no colon before the digits.
            ("api.example:http", "api.example:http"),
            ("a:b:12", "a:b"),
            ("8080", "8080"),
            (":8080", ""),
            ("", ""),
        ] {
            assert_eq!(host_without_port(host), expected, "{host:?}");
        }
    }
}
