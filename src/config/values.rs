//! Small typed values of configuration files and command lines: durations (`500ms`, `5s`,
//! `1m 30s`), byte sizes (`64MiB`), rates (`20/s`), points in time (`2h` ago or RFC 3339)
//! and file-name globs. Each is parsed once, by its `FromStr`: YAML validates through it while
//! it is parsed (so a bad value is reported at its own `file:line:column`), and so do the CLI's
//! flags, the environment and the admin API's query parameters.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::str::FromStr;

/// A duration written the human way: `250ms`, `5s`, `2m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(Duration)
            .map_err(|e| {
                format!(
                    "bad duration `{text}` ({e}); write a number with a unit, for example `500ms`, `5s`, `2m` or `1h 30m`"
                )
            })
    }
}

/// Written as it is read (`30s`, `1h 30m`): the schema's defaults come from here.
impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let (secs, ms) = (d.as_secs(), d.subsec_millis());
        // The largest unit that writes it whole, as people write them (`24h`, `7d`, `90s`).
        let text = match (secs, ms, d.subsec_nanos() % 1_000_000) {
            (0, 0, 0) => "0s".to_string(),
            (0, ms, 0) => format!("{ms}ms"),
            (s, 0, 0) if s >= 2 * 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
            (s, 0, 0) if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
            (s, 0, 0) if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
            (s, 0, 0) => format!("{s}s"),
            _ => humantime::format_duration(d).to_string(),
        };
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A point in time: a duration ago (`10m`, `2h`) or a time (RFC 3339, `2026-12-01T10:00:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since(pub std::time::SystemTime);

impl FromStr for Since {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(t) = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')) {
            return Ok(Since(t));
        }
        let Ok(ago) = humantime::parse_duration(text) else {
            return Err(format!(
                "bad time `{text}`: give a duration ago (`10m`, `2h`) or a time (RFC 3339, `2026-12-01T10:00:00Z`)"
            ));
        };
        Ok(Since(std::time::SystemTime::now() - ago))
    }
}

/// A rate: a number of messages per time, `20/s`, `600/min`, `5/h`, `3/10s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub count: f64,
    pub per: std::time::Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("bad rate `{text}`: {why}; write a number per time, for example `20/s`, `600/min` or `5/h`")
        };
        let (count, per) = text.trim().split_once('/').ok_or_else(|| bad("no `/`"))?;
        let count: f64 = count
            .trim()
            .parse()
            .map_err(|_| bad("the count is not a number"))?;
        let per = per.trim();
        // `/s` means one second; `/10s` ten.
        let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
            per.to_string()
        } else {
            format!("1{per}")
        };
        let per = humantime::parse_duration(&per).map_err(|_| bad("unknown time unit"))?;
        if !(count > 0.0 && count.is_finite()) || per.is_zero() {
            return Err(bad("it must be more than nothing"));
        }
        Ok(Rate { count, per })
    }
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.count / self.per.as_secs_f64()
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A size in bytes: a plain number or a number with a unit (`512KiB`, `64MiB`, `1GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '_'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: u64 = num.replace('_', "").parse().map_err(|_| {
            format!("bad size `{text}`: write a number with an optional unit, for example `64MiB`")
        })?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "kib" | "k" => 1 << 10,
            "mb" => 1_000_000,
            "mib" | "m" => 1 << 20,
            "gb" => 1_000_000_000,
            "gib" | "g" => 1 << 30,
            other => {
                return Err(format!(
                    "bad size `{text}`: unknown unit `{other}` (use B, KiB, MiB, GiB, KB, MB or GB)"
                ))
            }
        };
        num.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("bad size `{text}`: too large"))
    }
}

/// Written as it is read: `64MiB` when a whole number of a binary unit, else bytes.
impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 >= 1 << 10 && self.0.is_multiple_of(1 << 10) {
            s.collect_str(self)
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(ByteSize(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", n >> 30)
        } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", n >> 20)
        } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n} bytes")
        }
    }
}

/// A shell-style pattern matched against a file name (not its path): `*.xml`, `order-??.csv`.
#[derive(Debug, Clone)]
pub struct Glob(pub glob::Pattern);

impl Glob {
    pub fn matches(&self, name: &str) -> bool {
        self.0.matches(name)
    }
}

impl Default for Glob {
    fn default() -> Self {
        Glob(glob::Pattern::new("*").expect("`*` is a valid pattern"))
    }
}

impl serde::Serialize for Glob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.contains('/') {
            return Err(serde::de::Error::custom(format!(
                "bad pattern `{text}`: it is matched against file names only, so it cannot contain `/`"
            )));
        }
        glob::Pattern::new(&text)
            .map(Glob)
            .map_err(|e| serde::de::Error::custom(format!("bad pattern `{text}`: {e}")))
    }
}

super::schema::text_value!(
    Duration,
    "A duration: a number with a unit (`ms`, `s`, `m`, `h`, `d`), parts may be combined.",
    ["500ms", "5s", "2m", "1h 30m"]
);
super::schema::text_value!(
    Rate,
    "Messages per time: a number, `/` and a time unit, optionally with a count.",
    ["20/s", "600/min", "5/h", "3/10s"]
);
super::schema::text_value!(
    Glob,
    "A shell-style pattern matched against a file name, not its path (no `/`).",
    ["*.xml", "order-??.csv"]
);

impl schemars::JsonSchema for ByteSize {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["integer", "string"],
            "minimum": 0,
            "description": "A size: bytes, or a number with a unit (B, KiB, MiB, GiB, KB, MB, GB).",
            "examples": ["64MiB", "512KiB", 1048576]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap().0, 64 << 20);
        assert_eq!("10 KB".parse::<ByteSize>().unwrap().0, 10_000);
        assert_eq!("123".parse::<ByteSize>().unwrap().0, 123);
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
    }

    #[test]
    fn values_are_written_as_they_are_read() {
        for text in ["0s", "250ms", "5s", "90s", "2m", "24h", "7d", "1h 30m"] {
            let d: Duration = text.parse().unwrap();
            let written = serde_json::to_value(d).unwrap();
            assert_eq!(
                written.as_str().unwrap().parse::<Duration>().unwrap(),
                d,
                "{text}"
            );
        }
        assert_eq!(
            serde_json::to_value(Duration::from_secs(86_400)).unwrap(),
            "24h"
        );
        assert_eq!(serde_json::to_value(ByteSize(1 << 20)).unwrap(), "1MiB");
        assert_eq!(serde_json::to_value(ByteSize(1000)).unwrap(), 1000);
    }

    #[test]
    fn durations() {
        let d: Duration = crate::config::yaml::parse_str("1m 30s").unwrap();
        assert_eq!(d.0.as_secs(), 90);
        let e = crate::config::yaml::parse_str::<Duration>("5 sec0nds").unwrap_err();
        assert!(e.to_string().contains("bad duration"), "{e}");
        assert_eq!("250ms".parse::<Duration>(), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn points_in_time() {
        let now = std::time::SystemTime::now();
        let ago = "2h".parse::<Since>().unwrap().0;
        let two_hours = now.duration_since(ago).unwrap().as_secs();
        assert!((7199..=7201).contains(&two_hours), "{two_hours}");
        let at = "2026-12-01T10:00:00Z".parse::<Since>().unwrap().0;
        assert_eq!(
            humantime::format_rfc3339_seconds(at).to_string(),
            "2026-12-01T10:00:00Z"
        );
        let e = "yesterday".parse::<Since>().unwrap_err();
        assert!(
            e.contains("bad time `yesterday`") && e.contains("RFC 3339"),
            "{e}"
        );
    }

    #[test]
    fn rates() {
        assert_eq!("20/s".parse::<Rate>().unwrap().per_second(), 20.0);
        assert_eq!("600/min".parse::<Rate>().unwrap().per_second(), 10.0);
        assert_eq!("3 / 10s".parse::<Rate>().unwrap().per_second(), 0.3);
        assert_eq!("0.5/s".parse::<Rate>().unwrap().per_second(), 0.5);
        for bad in ["20", "0/s", "-1/s", "x/s", "5/fortnight", "5/0s"] {
            let e = bad.parse::<Rate>().unwrap_err();
            assert!(e.contains("bad rate") && e.contains("20/s"), "{bad}: {e}");
        }
    }
}
