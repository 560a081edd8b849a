//! Event timestamps: milliseconds since the Unix epoch in memory, RFC 3339 on the wire.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Wall-clock time of an event, in milliseconds since the Unix epoch.
///
/// Written as RFC 3339 UTC with millisecond precision (`2026-11-25T10:00:00.012Z`), so a person
/// reading a log sees a time and a reader can still compare events across nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// Parses RFC 3339 (`2026-11-25T10:00:00Z`, fractions of a second allowed).
    pub fn parse_rfc3339(text: &str) -> Result<Self, String> {
        humantime::parse_rfc3339_weak(text.trim())
            .map(Timestamp::from)
            .map_err(|e| {
                format!("invalid timestamp {text:?}: {e} (expected e.g. 2026-11-25T10:00:00Z)")
            })
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = UNIX_EPOCH + Duration::from_millis(self.0);
        write!(f, "{}", humantime::format_rfc3339_millis(t))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_at_millisecond_precision() {
        let t = Timestamp(1_764_064_800_012);
        let json = serde_json::to_string(&t).expect("serializes");
        assert_eq!(json, r#""2025-11-25T10:00:00.012Z""#);
        let back: Timestamp = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, t);
    }

    #[test]
    fn a_bad_timestamp_is_an_error_naming_it() {
        let err = serde_json::from_str::<Timestamp>(r#""yesterday""#).expect_err("fails");
        assert!(err.to_string().contains("yesterday"), "{err}");
    }
}
