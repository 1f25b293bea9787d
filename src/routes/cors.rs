//! CORS for one route (`cors = { … }`): which origins a browser may call it from, the
//! preflight authgate answers itself (before authentication: browsers send no credential on
//! it), and the fields every answer to an allowed origin carries. Sans-IO: the pipeline asks,
//! these functions decide.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// The response fields a browser script may read besides the safelisted ones: the request id
/// and the limit fields a client needs to back off.
const EXPOSED: &str = "x-request-id, ratelimit-limit, ratelimit-remaining, ratelimit-reset, \
                       retry-after, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens";

/// A route's compiled `cors` table.
#[derive(Debug)]
pub struct Cors {
    origins: Origins,
    methods: Box<[Method]>,
    /// Lowercase request field names a page may send.
    headers: Box<[HeaderName]>,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    max_age: HeaderValue,
    credentials: bool,
}

#[derive(Debug)]
enum Origins {
    /// `"*"`: any origin (never with credentials).
    Any,
    /// Exact `scheme://host[:port]` values, lowercase.
    List(Box<[String]>),
}

impl Cors {
    /// From checked parts: origins are `"*"` or lowercase `scheme://host[:port]` values,
    /// `credentials` is false with `"*"`, the lists are non-empty and valid.
    pub fn new(
        origins: Vec<String>,
        methods: Vec<Method>,
        headers: Vec<HeaderName>,
        max_age_secs: u64,
        credentials: bool,
    ) -> Result<Self, String> {
        let origins = if origins.iter().any(|origin| origin == "*") {
            Origins::Any
        } else {
            Origins::List(origins.into_boxed_slice())
        };
        let join = |items: Vec<&str>| {
            HeaderValue::from_str(&items.join(", "))
                .map_err(|_| format!("{items:?} do not make a header value"))
        };
        Ok(Self {
            allow_methods: join(methods.iter().map(Method::as_str).collect())?,
            allow_headers: join(headers.iter().map(HeaderName::as_str).collect())?,
            max_age: HeaderValue::from(max_age_secs),
            origins,
            methods: methods.into_boxed_slice(),
            headers: headers.into_boxed_slice(),
            credentials,
        })
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it may read
    /// the answer: `*` for any origin, else the origin itself.
    pub fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::List(list) => list
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
                .then(|| origin.clone()),
        }
    }

    /// The fields of a preflight's answer, or `None` when the origin, the method or one of the
    /// request fields asked for is not allowed (then the answer carries no CORS field and the
    /// browser does not send the request).
    pub fn preflight(&self, headers: &HeaderMap) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let origin = headers.get(ORIGIN)?;
        let allow_origin = self.allow_origin(origin)?;
        let method = requested_method(headers)?;
        if !self.methods.contains(&method) {
            return None;
        }
        for value in headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
            let text = value.to_str().ok()?;
            for name in text
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
            {
                if !self
                    .headers
                    .iter()
                    .any(|allowed| allowed.as_str().eq_ignore_ascii_case(name))
                {
                    return None;
                }
            }
        }
        let mut fields = vec![
            (ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin),
            (ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone()),
            (ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone()),
            (ACCESS_CONTROL_MAX_AGE, self.max_age.clone()),
        ];
        self.common_fields(&mut |name, value| fields.push((name.clone(), value)));
        Some(fields)
    }

    /// The fields of an actual answer (success or error) to an allowed origin, after
    /// `Access-Control-Allow-Origin`.
    pub fn answer_fields(&self, emit: &mut impl FnMut(&HeaderName, HeaderValue)) {
        emit(
            &ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
        self.common_fields(emit);
    }

    /// `Allow-Credentials` when on, and `Vary: Origin` when the answer names the origin (a
    /// cache must not give one origin's answer to another).
    fn common_fields(&self, emit: &mut impl FnMut(&HeaderName, HeaderValue)) {
        if self.credentials {
            emit(
                &ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if matches!(self.origins, Origins::List(_)) {
            emit(&VARY, HeaderValue::from_static("origin"));
        }
    }
}

/// What every answer to a request from an allowed origin carries: the route's settings and
/// the `Access-Control-Allow-Origin` value for this origin.
#[derive(Debug, Clone)]
pub struct CorsAnswer {
    cors: Arc<Cors>,
    allow_origin: HeaderValue,
}

impl CorsAnswer {
    /// For a request with an `Origin` the route allows; `None` otherwise (no CORS field is
    /// added, and a browser keeps the answer from the page).
    pub fn for_request(cors: &Arc<Cors>, headers: &HeaderMap) -> Option<Self> {
        let allow_origin = cors.allow_origin(headers.get(ORIGIN)?)?;
        Some(Self {
            cors: cors.clone(),
            allow_origin,
        })
    }

    /// Every field, `Access-Control-Allow-Origin` first.
    pub fn fields(&self, emit: &mut impl FnMut(&HeaderName, HeaderValue)) {
        emit(&ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin.clone());
        self.cors.answer_fields(emit);
    }

    /// Onto a response from the upstream (after [`strip_upstream_fields`]); `Vary` is added
    /// to, not replaced.
    pub fn apply(&self, headers: &mut HeaderMap) {
        self.fields(&mut |name, value| {
            if name == VARY {
                headers.append(name, value);
            } else {
                headers.insert(name, value);
            }
        });
    }
}

/// The method a CORS preflight asks about: an `OPTIONS` request with an `Origin` and one
/// valid `Access-Control-Request-Method`. Anything else is an ordinary request.
pub fn preflight_method(method: &Method, headers: &HeaderMap) -> Option<Method> {
    if method != Method::OPTIONS || !headers.contains_key(ORIGIN) {
        return None;
    }
    requested_method(headers)
}

fn requested_method(headers: &HeaderMap) -> Option<Method> {
    let mut values = headers.get_all(ACCESS_CONTROL_REQUEST_METHOD).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    Method::from_bytes(value.as_bytes()).ok()
}

/// Removes an upstream's own `Access-Control-*` fields: on a route with `cors`, authgate alone
/// says who may read the answer, whatever the origin.
pub fn strip_upstream_fields(headers: &mut HeaderMap) {
    const NAMES: [HeaderName; 6] = [
        ACCESS_CONTROL_ALLOW_ORIGIN,
        ACCESS_CONTROL_ALLOW_CREDENTIALS,
        ACCESS_CONTROL_EXPOSE_HEADERS,
        ACCESS_CONTROL_ALLOW_METHODS,
        ACCESS_CONTROL_ALLOW_HEADERS,
        ACCESS_CONTROL_MAX_AGE,
    ];
    for name in NAMES {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors::new(
            origins.iter().map(|o| (*o).to_owned()).collect(),
            vec![Method::GET, Method::POST],
            vec![
                HeaderName::from_static("authorization"),
                HeaderName::from_static("content-type"),
            ],
            600,
            credentials,
        )
        .unwrap()
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
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
    fn origins_match_exactly_case_insensitively() {
        let cors = cors(&["https://app.example"], true);
        let allowed = |origin: &str| cors.allow_origin(&HeaderValue::from_str(origin).unwrap());
        assert_eq!(
            allowed("https://app.example").unwrap(),
            "https://app.example"
        );
        assert_eq!(
            allowed("HTTPS://APP.example").unwrap(),
            "HTTPS://APP.example"
        );
        for other in [
            "https://app.example.evil",
            "http://app.example",
            "https://app.example:8443",
            "https://evil.app.example",
            "null",
            "",
        ] {
            assert!(allowed(other).is_none(), "{other}");
        }
        let any = self::cors(&["*"], false);
        assert_eq!(
            any.allow_origin(&HeaderValue::from_static("https://x"))
                .unwrap(),
            "*"
        );
    }

    #[test]
    fn preflight_checks_origin_method_and_every_requested_field() {
        let cors = cors(&["https://app.example"], true);
        let ok = request(&[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "Authorization, content-type",
            ),
        ]);
        let fields = cors.preflight(&ok).unwrap();
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            get("access-control-allow-origin").unwrap(),
            "https://app.example"
        );
        assert_eq!(get("access-control-allow-methods").unwrap(), "GET, POST");
        assert_eq!(
            get("access-control-allow-headers").unwrap(),
            "authorization, content-type"
        );
        assert_eq!(get("access-control-max-age").unwrap(), "600");
        assert_eq!(get("access-control-allow-credentials").unwrap(), "true");
        assert_eq!(get("vary").unwrap(), "origin");
        for refused in [
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ][..],
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "DELETE"),
            ],
            &[("origin", "https://app.example")],
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "GET"),
                ("access-control-request-method", "POST"),
            ],
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization, x-admin"),
            ],
            &[("access-control-request-method", "GET")],
        ] {
            assert!(cors.preflight(&request(refused)).is_none(), "{refused:?}");
        }
    }

    #[test]
    fn only_options_with_origin_and_a_method_is_a_preflight() {
        let headers = request(&[
            ("origin", "https://app.example"),
            ("access-control-request-method", "PUT"),
        ]);
        assert_eq!(
            preflight_method(&Method::OPTIONS, &headers),
            Some(Method::PUT)
        );
        assert_eq!(preflight_method(&Method::GET, &headers), None);
        let no_origin = request(&[("access-control-request-method", "PUT")]);
        assert_eq!(preflight_method(&Method::OPTIONS, &no_origin), None);
        let bad = request(&[
            ("origin", "https://app.example"),
            ("access-control-request-method", "P(T"),
        ]);
        assert_eq!(preflight_method(&Method::OPTIONS, &bad), None);
    }
}
