//! Config value types that validate while they deserialize, so every error carries the
//! TOML span of the offending value: interpolated strings, durations, CIDRs.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer};

/// Replaces `${VAR}` and `${VAR:-default}` with environment values.
///
/// An unset `VAR` without a default is an error naming it; a `$` not followed by `{` is kept.
pub fn interpolate(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    if !input.contains("${") {
        return Ok(input.to_owned());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated `${{` in {input:?}"));
        };
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expr, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("invalid environment variable name {name:?}"));
        }
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A string value after `${VAR}` interpolation.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Text(pub String);

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        interpolate(&raw, env_lookup)
            .map(Text)
            .map_err(de::Error::custom)
    }
}

/// A secret string (tokens): interpolated like [`Text`], never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(**redacted**)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Text::deserialize(deserializer).map(|text| Secret(text.0))
    }
}

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"24h"`, `"7d"`: a whole number and one unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("duration {text:?} needs a unit (ms, s, m, h or d), e.g. \"30s\"")
    })?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "duration {text:?} must start with a whole number, e.g. \"30s\""
        ));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} is too large"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "duration {text:?} has unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

/// A duration written as a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Text::deserialize(deserializer)?;
        parse_duration(text.as_str())
            .map(DurationValue)
            .map_err(de::Error::custom)
    }
}

/// A CIDR (`10.0.0.0/8`) or a single address (read as /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Text::deserialize(deserializer)?;
        let text = text.as_str().trim();
        if let Ok(net) = text.parse::<ipnet::IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        if let Ok(addr) = text.parse::<std::net::IpAddr>() {
            return Ok(Cidr(ipnet::IpNet::from(addr)));
        }
        Err(de::Error::custom(format!(
            "{text:?} is not a CIDR (e.g. \"10.0.0.0/8\") or an IP address"
        )))
    }
}

/// A socket address such as `"0.0.0.0:8080"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub std::net::SocketAddr);

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Text::deserialize(deserializer)?;
        text.as_str().parse().map(ListenAddr).map_err(|_| {
            de::Error::custom(format!(
                "{:?} is not a listen address (IP:PORT, e.g. \"0.0.0.0:8080\")",
                text.as_str()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/home/x".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolation_replaces_sets_defaults_and_names_missing_variables() {
        assert_eq!(interpolate("plain", env).unwrap(), "plain");
        assert_eq!(interpolate("${HOME_DIR}/a", env).unwrap(), "/home/x/a");
        assert_eq!(interpolate("a${EMPTY}b", env).unwrap(), "ab");
        assert_eq!(interpolate("${NOPE:-dflt}", env).unwrap(), "dflt");
        assert_eq!(interpolate("${NOPE:-}", env).unwrap(), "");
        assert_eq!(interpolate("$HOME_DIR", env).unwrap(), "$HOME_DIR");
        assert_eq!(
            interpolate("${HOME_DIR}:${HOME_DIR}", env).unwrap(),
            "/home/x:/home/x"
        );
        let error = interpolate("x${NOPE}", env).unwrap_err();
        assert!(error.contains("NOPE"), "{error}");
        assert!(interpolate("${NOPE", env).is_err());
        assert!(interpolate("${}", env).is_err());
        assert!(interpolate("${A B}", env).is_err());
    }

    #[test]
    fn durations_need_a_known_unit() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in [
            "30",
            "s",
            "",
            "1.5s",
            "-1s",
            "10 sec",
            "5x",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
