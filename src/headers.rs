//! Header rewriting at the trust boundary: hop-by-hop removal, client-sent identity and
//! routing-override headers stripped, `x-forwarded-*` and `x-request-id` set.
//!
//! Order matters and is fixed by the pipeline: hop-by-hop headers (and every header the client
//! names in `Connection`) go first, then client identity headers, and only after
//! authentication does authgate set its own. `Connection: x-auth-tenant-id` therefore cannot
//! delete what authgate sets.

use std::net::IpAddr;

use http::header::{
    CONNECTION, HOST, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, Method, Version};

use crate::http1::fields::{folded_starts_with, is_underscored_response_control};

pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Headers that only concern one connection (RFC 9110 §7.6.1) and are never forwarded.
static HOP_BY_HOP: [&HeaderName; 8] = [
    &CONNECTION,
    &KEEP_ALIVE,
    &PROXY_AUTHENTICATE,
    &PROXY_AUTHORIZATION,
    &TE,
    &TRAILER,
    &TRANSFER_ENCODING,
    &UPGRADE,
];

/// Client headers that some upstream frameworks use to override the routed path; authgate
/// routes on the request line only, so these would let a client point the upstream elsewhere.
static ROUTING_OVERRIDES: [HeaderName; 4] = [
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-forwarded-prefix"),
];

/// Removes hop-by-hop headers and every header named in `Connection`.
///
/// With `keep_upgrade` (a WebSocket upgrade on a route that allows it) the `Upgrade` header
/// survives and `Connection: upgrade` is set again afterwards.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip_connection_headers(headers, keep_upgrade, false);
}

/// The response side of [`strip_hop_by_hop`]: the upstream's `Trailer` announcement stays.
/// RFC 9110 does not make it hop-by-hop, authgate passes response trailers through, and
/// the HTTP/1 server only sends trailers to clients that asked for them.
pub fn strip_response_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip_connection_headers(headers, keep_upgrade, true);
}

/// Removes response fields spelled with `_` that a client folding `_` into `-` would read as
/// framing or hop-by-hop fields (`Content_Length`, `Transfer_Encoding`, `Keep_Alive`...):
/// authgate re-frames the response, and a second framing must not ride along. The HTTP/1.1
/// response parser already leaves them out; this is for responses from HTTP/2 upstreams.
pub fn strip_underscored_response_controls(headers: &mut HeaderMap) {
    if headers.keys().any(is_underscored_response_control) {
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| is_underscored_response_control(name))
            .cloned()
            .collect();
        for name in &doomed {
            headers.remove(name);
        }
    }
}

fn strip_connection_headers(headers: &mut HeaderMap, keep_upgrade: bool, keep_trailer: bool) {
    // One pass over the names present (a handful) finds which fixed hop-by-hop names occur;
    // most messages carry none of them, or only `Connection`, and then no lookup is hashed.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(index) = hop_by_hop_index(name) {
            present |= 1 << index;
        }
    }
    if present == 0 && !keep_upgrade {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        remove_connection_named(headers, keep_upgrade, keep_trailer);
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        let kept = (keep_upgrade && **name == UPGRADE) || (keep_trailer && **name == TRAILER);
        if present & (1 << index) != 0 && !kept {
            headers.remove(*name);
        }
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// `Connection` is first in [`HOP_BY_HOP`].
const CONNECTION_BIT: u8 = 1;

/// The place of `name` in [`HOP_BY_HOP`], if it is one. Runs for every field of every
/// request and response: the length picks at most two candidates, so a usual name costs a
/// length test (comparing it with each of the eight names cost ~20 instructions a field).
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let text = name.as_str();
    let candidates: &[usize] = match text.len() {
        2 => &[4],     // te
        7 => &[5, 7],  // trailer, upgrade
        10 => &[0, 1], // connection, keep-alive
        17 => &[6],    // transfer-encoding
        18 => &[2],    // proxy-authenticate
        19 => &[3],    // proxy-authorization
        _ => return None,
    };
    candidates
        .iter()
        .copied()
        .find(|&index| HOP_BY_HOP[index].as_str() == text)
}

/// Removes the headers a `Connection` header names.
fn remove_connection_named(headers: &mut HeaderMap, keep_upgrade: bool, keep_trailer: bool) {
    // `Connection: keep-alive` / `close` / `upgrade` name nothing the fixed list does not
    // already handle: only other tokens need the (allocating) removal pass.
    let names_others = headers.get_all(&CONNECTION).iter().any(|value| {
        value.to_str().map_or(true, |text| {
            text.split(',').map(str::trim).any(|token| {
                !token.is_empty()
                    && !["keep-alive", "close", "upgrade"]
                        .iter()
                        .any(|known| token.eq_ignore_ascii_case(known))
            })
        })
    });
    if !names_others {
        return;
    }
    let named: Vec<HeaderValue> = headers.get_all(&CONNECTION).iter().cloned().collect();
    for value in &named {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',') {
            let token = token.trim();
            if token.is_empty() {
                continue;
            }
            let Ok(name) = HeaderName::from_bytes(token.as_bytes()) else {
                continue;
            };
            // Host decides routing, and framing is rebuilt by the HTTP layer: never let a
            // Connection list remove them.
            if name == HOST
                || (keep_upgrade && name == UPGRADE)
                || (keep_trailer && name == TRAILER)
            {
                continue;
            }
            headers.remove(&name);
        }
    }
}

/// True when `name`, read case-insensitively and with `_` as `-`, starts with `prefix`.
/// `prefix` is lowercase ASCII.
pub fn name_has_prefix(name: &str, prefix: &str) -> bool {
    folded_starts_with(name.as_bytes(), prefix.as_bytes())
}

/// Whether `name` is a routing-override header, read like the identity prefix (`_` as `-`):
/// CGI-style upstreams see `X_Original_URL` and `X-Original-URL` as the same header.
fn is_routing_override(name: &str) -> bool {
    ROUTING_OVERRIDES.iter().any(|override_name| {
        override_name.as_str().len() == name.len() && name_has_prefix(name, override_name.as_str())
    })
}

/// Removes every client header under the identity prefix and every routing-override header
/// (both also in their `_` spellings). Returns how many distinct names were removed.
pub fn strip_client_identity(headers: &mut HeaderMap, prefix: &str) -> usize {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if name_has_prefix(name.as_str(), prefix) || is_routing_override(name.as_str()) {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
    doomed.len()
}

/// Appends `name: value\r\n` lines that authgate serialized itself (identity fields built
/// from valid names and values, see `auth::Identity::upstream_fields`) to `headers`: for a
/// protocol that needs them in a map rather than written as they are. A line that does not
/// parse back is dropped, never passed through.
pub fn append_field_lines(lines: &[u8], headers: &mut HeaderMap) {
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
}

/// Removes every client copy of `name` (lowercase), in its `_` spellings too, as the prefix
/// rule does: for a header authgate sets outside the identity prefix. Returns how many
/// distinct names were removed.
pub fn strip_field(headers: &mut HeaderMap, name: &HeaderName) -> usize {
    let target = name.as_str();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|sent| {
            sent.as_str().len() == target.len() && name_has_prefix(sent.as_str(), target)
        })
        .cloned()
        .collect();
    for sent in &doomed {
        headers.remove(sent);
    }
    doomed.len()
}

/// Whether this is an HTTP/1.1 WebSocket upgrade request.
pub fn is_websocket_upgrade(method: &Method, version: Version, headers: &HeaderMap) -> bool {
    if method != Method::GET || version != Version::HTTP_11 {
        return false;
    }
    let has_token = |name: &HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .map(|text| {
                    text.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case(token))
                })
                .unwrap_or(false)
        })
    };
    has_token(&CONNECTION, "upgrade") && has_token(&UPGRADE, "websocket")
}

/// A request's `x-request-id`: the client's value when it matches `[A-Za-z0-9._:-]{1,128}`,
/// else a new UUID v4 (SPEC §6).
///
/// These two constructors are the only ones, so the bytes are always plain ASCII without
/// quotes or backslashes: they go into a header, a JSON error body or a log line as they are,
/// with no further check on the way out.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The client's `x-request-id`, kept only if it is well formed.
    pub fn from_client(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(&X_REQUEST_ID)?;
        let bytes = value.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 128
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        valid.then(|| Self(value.clone()))
    }

    /// A new random id (UUID v4).
    pub fn generate() -> Self {
        let mut buffer = uuid::Uuid::encode_buffer();
        let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
        Self(HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid")))
    }

    /// The client's id if it sent a usable one, else a new one.
    pub fn of_request(headers: &HeaderMap) -> Self {
        Self::from_client(headers).unwrap_or_else(Self::generate)
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// For log lines (the check is a formality: the bytes are ASCII by construction).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.0.as_bytes()).unwrap_or_default()
    }

    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    pub fn into_header_value(self) -> HeaderValue {
        self.0
    }

    /// The value for a response's `X-Request-Id`, marked never-indexed for HPACK: a fresh id on
    /// every HTTP/2 response would otherwise be inserted into the connection's dynamic table,
    /// never be matched again, and evict fields that would (the encoder's table work was about
    /// a tenth of an HTTP/2 request's user-space instructions). HTTP/1.1 ignores the mark.
    pub fn into_response_value(self) -> HeaderValue {
        let mut value = self.0;
        value.set_sensitive(true);
        value
    }
}

/// Whether `ip` is inside one of the trusted proxy networks.
pub fn is_trusted(ip: IpAddr, trusted: &[ipnet::IpNet]) -> bool {
    let ip = canonical_ip(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`) are treated as their IPv4 address.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The client address for logs: the peer, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[ipnet::IpNet]) -> IpAddr {
    // Canonical once: the usual answer, an untrusted peer, is then returned as it is.
    let peer = canonical_ip(peer);
    if !trusted.iter().any(|net| net.contains(&peer)) {
        return peer;
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        for item in text.split(',') {
            match item.trim().parse::<IpAddr>() {
                Ok(ip) => chain.push(ip),
                Err(_) => return peer,
            }
        }
    }
    chain
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip, trusted))
        .map_or(peer, canonical_ip)
}

/// Sets `x-forwarded-for` (extended when the peer is trusted, else replaced),
/// `x-forwarded-proto` and `x-forwarded-host` (kept from a trusted peer, else ours), and
/// removes `Forwarded` from untrusted peers.
/// The peer address as a header value, built once per connection.
pub fn peer_header(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&canonical_ip(peer).to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// [`set_forwarded`] with the peer's header value precomputed (`peer_header`): the common
/// case, an untrusted peer, then costs no formatting or allocation.
pub fn set_forwarded_with(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_value: &HeaderValue,
    trusted: &[ipnet::IpNet],
    tls: bool,
    original_host: Option<&HeaderValue>,
) {
    let peer = canonical_ip(peer);
    let peer_is_trusted = !trusted.is_empty() && is_trusted(peer, trusted);
    if peer_is_trusted {
        let mut chain = String::new();
        for value in headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(text) = value.to_str() {
                for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    chain.push_str(item);
                    chain.push_str(", ");
                }
            }
        }
        chain.push_str(peer_value.to_str().unwrap_or_default());
        if let Ok(value) = HeaderValue::from_str(&chain) {
            headers.insert(&X_FORWARDED_FOR, value);
        }
    } else {
        headers.insert(&X_FORWARDED_FOR, peer_value.clone());
    }
    if !peer_is_trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = if tls { "https" } else { "http" };
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !peer_is_trusted || !headers.contains_key(&X_FORWARDED_HOST) {
        match original_host {
            Some(host) => {
                headers.insert(&X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    if !peer_is_trusted {
        headers.remove(&FORWARDED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn hop_by_hop_names_are_found_by_length_then_text() {
        for (index, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(index), "{name}");
        }
        // Names of the same lengths, standard and custom, and near misses.
        for other in [
            "user-agent",
            "x-api-key1",
            "accept",
            "host",
            "tf",
            "tx",
            "x-trace",
            "referer",
            "content-length",
            "proxy-connection",
            "transfer-encodinG",
            "transfer-encodings",
            "proxy-authorizatio",
            "proxy-authenticat",
            "x-request-id",
            "keep_alive",
            "upgrades",
        ] {
            let name = HeaderName::from_bytes(other.as_bytes()).unwrap();
            let expected = HOP_BY_HOP.iter().position(|hop| **hop == name);
            assert_eq!(hop_by_hop_index(&name), expected, "{other}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret, host"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("host", "example.com"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["host", "x-kept"]);
    }

    #[test]
    fn websocket_upgrade_keeps_upgrade_and_resets_connection() {
        let mut headers = map(&[
            ("connection", "Upgrade, x-a"),
            ("upgrade", "websocket"),
            ("x-a", "1"),
        ]);
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
        assert!(!headers.contains_key("x-a"));
    }

    #[test]
    fn identity_prefix_matches_case_and_underscore_variants() {
        assert!(name_has_prefix("x-auth-tenant-id", "x-auth-"));
        assert!(name_has_prefix("x_auth_tenant_id", "x-auth-"));
        assert!(name_has_prefix("x-auth_key", "x-auth-"));
        assert!(!name_has_prefix("x-authz", "x-auth-"));
        assert!(!name_has_prefix("x-aut", "x-auth-"));
        let mut headers = map(&[
            ("x-auth-tenant-id", "evil"),
            ("x_auth_user_id", "evil"),
            ("x-original-url", "/admin"),
            ("x-forwarded-prefix", "/admin"),
            ("x_rewrite_url", "/admin"),
            ("x-other", "kept"),
        ]);
        assert_eq!(strip_client_identity(&mut headers, "x-auth-"), 5);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["x-other"]);
        // Idempotent.
        assert_eq!(strip_client_identity(&mut headers, "x-auth-"), 0);
    }

    #[test]
    fn request_id_is_kept_only_when_well_formed() {
        let kept = RequestId::from_client(&map(&[("x-request-id", "abc-123_x.y:z")])).unwrap();
        assert_eq!(kept.as_str(), "abc-123_x.y:z");
        assert_eq!(kept.header_value(), "abc-123_x.y:z");
        for bad in ["", "has space", "semi;colon", "quo\"te", &"a".repeat(129)] {
            assert!(
                RequestId::from_client(&map(&[("x-request-id", bad)])).is_none(),
                "{bad}"
            );
        }
        let fresh = RequestId::generate();
        assert_eq!(fresh.as_bytes().len(), 36);
        let uuid = uuid::Uuid::parse_str(fresh.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert_eq!(
            fresh.as_str(),
            uuid.hyphenated().to_string(),
            "uuid's own spelling"
        );
        assert_ne!(fresh.as_str(), RequestId::generate().as_str());
    }

    #[test]
    fn a_response_request_id_keeps_its_bytes_and_is_never_indexed() {
        let id = RequestId::from_client(&map(&[("x-request-id", "abc-123")])).unwrap();
        let value = id.into_response_value();
        assert_eq!(value.as_bytes(), b"abc-123");
        assert!(
            value.is_sensitive(),
            "HPACK must not index a per-response id"
        );
    }

    #[test]
    fn forwarded_for_is_replaced_for_untrusted_and_extended_for_trusted_peers() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let host = HeaderValue::from_static("api.example.com");

        let mut headers = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.1.1.1"),
        ]);
        let peer: IpAddr = "192.0.2.9".parse().unwrap();
        set_forwarded_with(
            &mut headers,
            peer,
            &peer_header(peer),
            &trusted,
            false,
            Some(&host),
        );
        assert_eq!(headers["x-forwarded-for"], "192.0.2.9");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "api.example.com");
        assert!(!headers.contains_key("forwarded"));

        let mut headers = map(&[
            ("x-forwarded-for", "1.2.3.4, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        set_forwarded_with(
            &mut headers,
            peer,
            &peer_header(peer),
            &trusted,
            false,
            Some(&host),
        );
        assert_eq!(headers["x-forwarded-for"], "1.2.3.4, 10.1.1.1, 10.0.0.5");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(
            client_ip(
                &map(&[("x-forwarded-for", "1.2.3.4, 10.1.1.1")]),
                "10.0.0.5".parse().unwrap(),
                &trusted
            ),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(
                &map(&[("x-forwarded-for", "garbage")]),
                "10.0.0.5".parse().unwrap(),
                &trusted
            ),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
    }
}
