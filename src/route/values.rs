//! Small typed values used in route files: durations (`500ms`, `5s`, `1m 30s`), byte sizes
//! (`64MiB`) and file-name globs. Each validates while the YAML is parsed, so a bad value is
//! reported with the `file:line:column` of the value itself.

use serde::{Deserialize, Deserializer};
use std::fmt;

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

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map(Duration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "bad duration `{text}` ({e}); write a number with a unit, for example `500ms`, `5s`, `2m` or `1h 30m`"
                ))
            })
    }
}

/// A rate: a number of messages per time, `20/s`, `600/min`, `5/h`, `3/10s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub count: f64,
    pub per: std::time::Duration,
}

impl Rate {
    pub fn parse(text: &str) -> Result<Self, String> {
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

    pub fn per_second(&self) -> f64 {
        self.count / self.per.as_secs_f64()
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Rate::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A size in bytes: a plain number or a number with a unit (`512KiB`, `64MiB`, `1GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
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
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("64MiB").unwrap().0, 64 << 20);
        assert_eq!(ByteSize::parse("10 KB").unwrap().0, 10_000);
        assert_eq!(ByteSize::parse("123").unwrap().0, 123);
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("MiB").is_err());
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
    }

    #[test]
    fn durations() {
        let d: Duration = serde_yaml::from_str("1m 30s").unwrap();
        assert_eq!(d.0.as_secs(), 90);
        let e = serde_yaml::from_str::<Duration>("5 sec0nds").unwrap_err();
        assert!(e.to_string().contains("bad duration"), "{e}");
    }

    #[test]
    fn rates() {
        assert_eq!(Rate::parse("20/s").unwrap().per_second(), 20.0);
        assert_eq!(Rate::parse("600/min").unwrap().per_second(), 10.0);
        assert_eq!(Rate::parse("3 / 10s").unwrap().per_second(), 0.3);
        assert_eq!(Rate::parse("0.5/s").unwrap().per_second(), 0.5);
        for bad in ["20", "0/s", "-1/s", "x/s", "5/fortnight", "5/0s"] {
            let e = Rate::parse(bad).unwrap_err();
            assert!(e.contains("bad rate") && e.contains("20/s"), "{bad}: {e}");
        }
    }
}
