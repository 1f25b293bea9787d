//! The API-key record (SPEC §4.1), as it appears in the key file and in control-plane answers,
//! and the RFC 3339 timestamps it carries.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::limits::settings::Rate;

/// Longest accepted value for ids, tenant, scopes, claims and descriptions.
pub const MAX_FIELD_LEN: usize = 1024;
/// Most scopes or custom claims a record may carry.
pub const MAX_LIST_LEN: usize = 256;

/// One API key's record. The plain key is never part of it; the key file adds its hash.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub key_id: String,
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RecordRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_claims: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A key's own rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordRate {
    pub requests_per_second: f64,
    pub burst: u32,
}

impl KeyRecord {
    /// `revoked`, `expired` (at `now`) or `active`: what listings show.
    pub fn status(&self, now: Timestamp) -> &'static str {
        if self.revoked {
            "revoked"
        } else if self.expires_at.is_some_and(|at| at <= now) {
            "expired"
        } else {
            "active"
        }
    }

    /// Checks what serde cannot: non-empty ids, sane lengths and counts, a usable rate.
    pub fn validate(&self) -> Result<(), String> {
        let check = |name: &str, value: &str| -> Result<(), String> {
            if value.is_empty() {
                return Err(format!("{name} must not be empty"));
            }
            if value.len() > MAX_FIELD_LEN {
                return Err(format!("{name} is longer than {MAX_FIELD_LEN} bytes"));
            }
            Ok(())
        };
        check("key_id", &self.key_id)?;
        check("tenant_id", &self.tenant_id)?;
        if let Some(user) = &self.user_id {
            check("user_id", user)?;
        }
        if self.scopes.len() > MAX_LIST_LEN || self.custom_claims.len() > MAX_LIST_LEN {
            return Err(format!("more than {MAX_LIST_LEN} scopes or custom claims"));
        }
        for scope in &self.scopes {
            check("scope", scope)?;
            if scope.contains(char::is_whitespace) {
                return Err(format!("scope {scope:?} contains whitespace"));
            }
        }
        for (name, value) in &self.custom_claims {
            check("custom claim name", name)?;
            if value.len() > MAX_FIELD_LEN {
                return Err(format!(
                    "custom claim {name:?} is longer than {MAX_FIELD_LEN} bytes"
                ));
            }
        }
        if let Some(description) = &self.description
            && description.len() > MAX_FIELD_LEN
        {
            return Err("description is too long".into());
        }
        if let Some(rate) = &self.rate_limit
            && let Err(message) = Rate::new(rate.requests_per_second, rate.burst)
        {
            return Err(message.replace("a rate limit", "rate_limit"));
        }
        if self.tokens_per_minute == Some(0) {
            return Err("tokens_per_minute must be at least 1".into());
        }
        Ok(())
    }
}

/// An instant as Unix seconds, read from RFC 3339 text or a TOML datetime (with an offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self(i64::try_from(secs).unwrap_or(i64::MAX))
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` (`t`, `z` and a space separator too).
    pub fn parse_rfc3339(text: &str) -> Result<Self, String> {
        let error = || {
            format!(
                "{text:?} is not an RFC 3339 date-time with an offset, e.g. 2027-01-31T00:00:00Z"
            )
        };
        let b = text.as_bytes();
        if b.len() < 20 {
            return Err(error());
        }
        let digits = |range: std::ops::Range<usize>| -> Result<i64, String> {
            let part = text.get(range).ok_or_else(error)?;
            if part.bytes().all(|c| c.is_ascii_digit()) {
                part.parse::<i64>().map_err(|_| error())
            } else {
                Err(error())
            }
        };
        if b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't' | b' ')
            || b[13] != b':'
            || b[16] != b':'
        {
            return Err(error());
        }
        let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
        let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
        let mut rest = 19;
        if b[rest] == b'.' {
            rest += 1;
            let start = rest;
            while rest < b.len() && b[rest].is_ascii_digit() {
                rest += 1;
            }
            if rest == start {
                return Err(error());
            }
        }
        let offset = match b.get(rest) {
            Some(b'Z' | b'z') if rest + 1 == b.len() => 0,
            Some(sign @ (b'+' | b'-')) if rest + 6 == b.len() && b[rest + 3] == b':' => {
                let hours = digits(rest + 1..rest + 3)?;
                let minutes = digits(rest + 4..rest + 6)?;
                if hours > 23 || minutes > 59 {
                    return Err(error());
                }
                let seconds = hours * 3600 + minutes * 60;
                if *sign == b'+' { seconds } else { -seconds }
            }
            _ => return Err(error()),
        };
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let month_days = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if !(1..=12).contains(&month)
            || day < 1
            || day > month_days[(month - 1) as usize]
            || hour > 23
            || minute > 59
            || second > 60
        {
            return Err(error());
        }
        let days = days_from_civil(year, month, day);
        Ok(Self(
            days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset,
        ))
    }

    /// RFC 3339 in UTC (`2027-01-31T00:00:00Z`).
    pub fn to_rfc3339(self) -> String {
        let days = self.0.div_euclid(86_400);
        let secs = self.0.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        )
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;
        impl<'de> Visitor<'de> for TimestampVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 date-time with an offset")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Timestamp, E> {
                Timestamp::parse_rfc3339(value).map_err(E::custom)
            }
            // TOML datetimes arrive as a one-entry map holding their text.
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Timestamp, A::Error> {
                let Some((_, text)) = map.next_entry::<String, String>()? else {
                    return Err(de::Error::custom("empty datetime"));
                };
                Timestamp::parse_rfc3339(&text).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_any(TimestampVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_offsets_and_round_trips() {
        assert_eq!(
            Timestamp::parse_rfc3339("1970-01-01T00:00:00Z").unwrap().0,
            0
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2027-01-31T00:00:00Z")
                .unwrap()
                .to_rfc3339(),
            "2027-01-31T00:00:00Z"
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2027-01-31T02:00:00+02:00").unwrap(),
            Timestamp::parse_rfc3339("2027-01-31T00:00:00Z").unwrap()
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2024-02-29T12:30:45.123Z")
                .unwrap()
                .to_rfc3339(),
            "2024-02-29T12:30:45Z"
        );
        for bad in [
            "",
            "2027-01-31",
            "2027-01-31T00:00:00",
            "2027-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2027-01-31T24:00:00Z",
            "2027-01-31T00:00:00+25:00",
            "20x7-01-31T00:00:00Z",
            "2027-01-31T00:00:00.Z",
            "2027-01-31T00:00:00Zjunk",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn records_parse_from_json_and_toml_datetimes() {
        let json = r#"{"key_id":"k1","tenant_id":"acme","scopes":["a"],"expires_at":"2030-01-01T00:00:00Z","custom_claims":{"plan":"pro"}}"#;
        let record: KeyRecord = serde_json::from_str(json).unwrap();
        assert_eq!(
            record.expires_at.unwrap().to_rfc3339(),
            "2030-01-01T00:00:00Z"
        );
        record.validate().unwrap();
        let toml_text =
            "key_id = \"k1\"\ntenant_id = \"acme\"\nexpires_at = 2030-01-01T00:00:00Z\n";
        let record: KeyRecord = toml::from_str(toml_text).unwrap();
        assert_eq!(
            record.expires_at.unwrap().to_rfc3339(),
            "2030-01-01T00:00:00Z"
        );
    }

    #[test]
    fn hostile_records_are_refused() {
        for json in [
            r#"{"tenant_id":"acme"}"#,
            r#"{"key_id":"k","tenant_id":5}"#,
            r#"{"key_id":"k","tenant_id":"t","scopes":"a"}"#,
            r#"{"key_id":"k","tenant_id":"t","revoked":"no"}"#,
            r#"{"key_id":"k","tenant_id":"t","unknown":1}"#,
            r#"{"key_id":"k","tenant_id":"t","expires_at":"tomorrow"}"#,
        ] {
            assert!(serde_json::from_str::<KeyRecord>(json).is_err(), "{json}");
        }
        let record = |json: &str| serde_json::from_str::<KeyRecord>(json).unwrap();
        assert!(
            record(r#"{"key_id":"","tenant_id":"t"}"#)
                .validate()
                .is_err()
        );
        assert!(
            record(r#"{"key_id":"k","tenant_id":"t","scopes":["a b"]}"#)
                .validate()
                .is_err()
        );
        assert!(
            record(
                r#"{"key_id":"k","tenant_id":"t","rate_limit":{"requests_per_second":0,"burst":1}}"#
            )
            .validate()
            .is_err()
        );
        let long = format!(r#"{{"key_id":"{}","tenant_id":"t"}}"#, "k".repeat(2000));
        assert!(record(&long).validate().is_err());
    }
}
