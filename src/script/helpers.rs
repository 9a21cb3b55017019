//! Functions registered for scripts: dates and time zones, JSON and XML, string tools for
//! fixed-width and free text, regular expressions and ids. Every one is documented with an
//! example in `docs/scripting.md`. Errors are script errors with a reason, never panics.

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use regex::Regex;
use rhai::{Dynamic, Engine, EvalAltResult};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

type Res<T> = Result<T, Box<EvalAltResult>>;

pub fn register(engine: &mut Engine) {
    engine
        .register_fn("now", now)
        .register_fn("parse_date", |t: &str, f: &str| parse_date(t, f, None))
        .register_fn("parse_date", |t: &str, f: &str, tz: &str| {
            parse_date(t, f, Some(tz))
        })
        .register_fn("format_date", |ts: &str, f: &str| format_date(ts, f, None))
        .register_fn("format_date", |ts: &str, f: &str, tz: &str| {
            format_date(ts, f, Some(tz))
        })
        .register_fn("to_timezone", to_timezone)
        .register_fn("add_seconds", |ts: &str, n: i64| {
            add(ts, chrono::Duration::try_seconds(n))
        })
        .register_fn("add_days", |ts: &str, n: i64| {
            add(ts, chrono::Duration::try_days(n))
        })
        .register_fn("to_json", |v: Dynamic| to_json(&v, false))
        .register_fn("to_json_pretty", |v: Dynamic| to_json(&v, true))
        .register_fn("parse_json", parse_json)
        .register_fn("parse_xml", parse_xml)
        .register_fn("xpath", |xml: &str, expr: &str| {
            xpath(xml, expr, None, false)
        })
        .register_fn("xpath", |xml: &str, expr: &str, ns: rhai::Map| {
            xpath(xml, expr, Some(ns), false)
        })
        .register_fn("xpath_all", |xml: &str, expr: &str| {
            xpath(xml, expr, None, true)
        })
        .register_fn("xpath_all", |xml: &str, expr: &str, ns: rhai::Map| {
            xpath(xml, expr, Some(ns), true)
        })
        .register_fn("to_xml", to_xml)
        .register_fn("pad_left", |s: &str, w: i64| pad(s, w, " ", true))
        .register_fn("pad_left", |s: &str, w: i64, p: &str| pad(s, w, p, true))
        .register_fn("pad_right", |s: &str, w: i64| pad(s, w, " ", false))
        .register_fn("pad_right", |s: &str, w: i64, p: &str| pad(s, w, p, false))
        .register_fn("slice_cols", slice_cols)
        .register_fn("regex_match", regex_match)
        .register_fn("regex_replace", regex_replace)
        .register_fn("regex_captures", regex_captures)
        .register_fn("uuid", || uuid::Uuid::new_v4().to_string())
        .register_fn("hl7", hl7_field)
        .register_fn("hl7_json", hl7_json);
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn zone(tz: &str) -> Res<Tz> {
    tz.parse::<Tz>().map_err(|_| {
        format!("unknown time zone `{tz}`: use an IANA name such as `Europe/Berlin` or `UTC`")
            .into()
    })
}

fn check_format(f: &str) -> Res<()> {
    if StrftimeItems::new(f).any(|i| matches!(i, Item::Error)) {
        return Err(format!(
            "bad date format `{f}` (see chrono's strftime specifiers, e.g. `%Y-%m-%d %H:%M:%S`)"
        )
        .into());
    }
    Ok(())
}

fn rfc3339<T: TimeZone>(t: DateTime<T>) -> String
where
    T::Offset: std::fmt::Display,
{
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses `text` with a strftime `format` into an RFC 3339 timestamp. Without an offset in the
/// text, it is local time in `tz` (UTC when none is given).
fn parse_date(text: &str, format: &str, tz: Option<&str>) -> Res<String> {
    check_format(format)?;
    if let Ok(t) = DateTime::parse_from_str(text, format) {
        return Ok(rfc3339(t));
    }
    let naive = NaiveDateTime::parse_from_str(text, format)
        .or_else(|_| {
            NaiveDate::parse_from_str(text, format).map(|d| d.and_time(Default::default()))
        })
        .map_err(|e| format!("cannot read `{text}` as a date with format `{format}`: {e}"))?;
    match tz {
        None => Ok(rfc3339(Utc.from_utc_datetime(&naive))),
        Some(tz) => {
            let tz = zone(tz)?;
            // In the hour a clock is turned back, a local time happens twice: take the first.
            let t = tz.from_local_datetime(&naive).earliest().ok_or_else(|| {
                format!("`{text}` does not exist in {tz} (skipped by a daylight-saving change)")
            })?;
            Ok(rfc3339(t))
        }
    }
}

fn timestamp(ts: &str) -> Res<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(ts).map_err(|e| {
        format!("`{ts}` is not an RFC 3339 timestamp such as 2026-11-26T06:30:00Z ({e}); read it with parse_date first").into()
    })
}

fn format_date(ts: &str, format: &str, tz: Option<&str>) -> Res<String> {
    check_format(format)?;
    let t = timestamp(ts)?;
    Ok(match tz {
        None => t.format(format).to_string(),
        Some(tz) => t.with_timezone(&zone(tz)?).format(format).to_string(),
    })
}

fn to_timezone(ts: &str, tz: &str) -> Res<String> {
    Ok(rfc3339(timestamp(ts)?.with_timezone(&zone(tz)?)))
}

fn add(ts: &str, d: Option<chrono::Duration>) -> Res<String> {
    let d = d.ok_or("duration out of range")?;
    let t = timestamp(ts)?;
    let moved = t.checked_add_signed(d).ok_or("date out of range")?;
    Ok(rfc3339(moved))
}

fn to_json(v: &Dynamic, pretty: bool) -> Res<String> {
    let json = super::to_json(v)?;
    let text = if pretty {
        serde_json::to_string_pretty(&json)
    } else {
        serde_json::to_string(&json)
    };
    text.map_err(|e| e.to_string().into())
}

fn parse_json(text: &str) -> Res<Dynamic> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("parse_json: {e}"))?;
    rhai::serde::to_dynamic(&v)
}

/// `xpath(body, expr [, #{prefix: uri}])`: a node-set gives the string value of its first
/// node (`()` when empty), a number an integer when it is whole, a string or boolean itself.
/// `xpath_all` gives every node's string value, as an array.
fn xpath(xml: &str, expr: &str, ns: Option<rhai::Map>, all: bool) -> Res<Dynamic> {
    use crate::convert::xpath::Value;
    let ns: Vec<(String, String)> = ns
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let name = if all { "xpath_all" } else { "xpath" };
    let value =
        crate::convert::xpath::evaluate(xml, expr, &ns).map_err(|e| format!("{name}: {e}"))?;
    Ok(match (value, all) {
        (Value::Nodes(nodes), true) => nodes
            .into_iter()
            .map(Dynamic::from)
            .collect::<rhai::Array>()
            .into(),
        (Value::Nodes(nodes), false) => nodes
            .into_iter()
            .next()
            .map_or(Dynamic::UNIT, Dynamic::from),
        (Value::Text(t), _) => Dynamic::from(t),
        (Value::Bool(b), _) => Dynamic::from(b),
        (Value::Number(n), _) if n.fract() == 0.0 && n.abs() < 9.0e15 => Dynamic::from(n as i64),
        (Value::Number(n), _) => Dynamic::from(n),
    })
}

fn parse_xml(text: &str) -> Res<Dynamic> {
    let v = crate::convert::xml::xml_to_value(text.as_bytes(), &Default::default())
        .map_err(|e| format!("parse_xml: {e}"))?;
    rhai::serde::to_dynamic(&v)
}

fn to_xml(v: Dynamic) -> Res<String> {
    let json = super::to_json(&v)?;
    crate::convert::xml::value_to_xml(&json, &Default::default())
        .map_err(|e| format!("to_xml: {e}").into())
}

/// Pads to `width` characters with `with` (one character); longer text is left as it is.
fn pad(s: &str, width: i64, with: &str, left: bool) -> Res<String> {
    let mut chars = with.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        return Err(format!("pad character must be exactly one character, not `{with}`").into());
    };
    let width = usize::try_from(width).map_err(|_| "pad width must not be negative")?;
    if width > 1 << 20 {
        return Err("pad width over 1,048,576".into());
    }
    let len = s.chars().count();
    if len >= width {
        return Ok(s.to_string());
    }
    let fill: String = std::iter::repeat_n(c, width - len).collect();
    Ok(if left { fill + s } else { format!("{s}{fill}") })
}

/// `width` characters starting at column `start` (1-based), as fixed-width records count.
/// Columns past the end of the text give an empty or shorter string.
fn slice_cols(s: &str, start: i64, width: i64) -> Res<String> {
    if start < 1 || width < 0 {
        return Err(format!(
            "slice_cols: start must be 1 or more and width 0 or more (got {start}, {width})"
        )
        .into());
    }
    Ok(s.chars()
        .skip(start as usize - 1)
        .take(width as usize)
        .collect())
}

fn regex(pattern: &str) -> Res<Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache.lock().map_err(|_| "regex cache poisoned")?;
    if let Some(r) = cache.get(pattern) {
        return Ok(r.clone());
    }
    let r = Regex::new(pattern).map_err(|e| format!("bad regular expression `{pattern}`: {e}"))?;
    if cache.len() >= 256 {
        cache.clear(); // scripts use a handful of patterns; a flood of dynamic ones is not cached
    }
    cache.insert(pattern.to_string(), r.clone());
    Ok(r)
}

fn regex_match(s: &str, pattern: &str) -> Res<bool> {
    Ok(regex(pattern)?.is_match(s))
}

fn regex_replace(s: &str, pattern: &str, replacement: &str) -> Res<String> {
    Ok(regex(pattern)?.replace_all(s, replacement).into_owned())
}

/// The first match's groups as an array (index 0 is the whole match; a group that did not
/// take part is `()`), or `()` when nothing matches.
fn regex_captures(s: &str, pattern: &str) -> Res<Dynamic> {
    let r = regex(pattern)?;
    Ok(match r.captures(s) {
        None => Dynamic::UNIT,
        Some(c) => c
            .iter()
            .map(|m| m.map_or(Dynamic::UNIT, |m| Dynamic::from(m.as_str().to_string())))
            .collect::<rhai::Array>()
            .into(),
    })
}

/// A field of an HL7 v2 message by path (`PID-3.1`), or `()` when it is empty or missing.
fn hl7_field(text: &str, path: &str) -> Res<Dynamic> {
    let m = crate::hl7::Hl7::parse(text).map_err(|e| format!("hl7: {e}"))?;
    Ok(match m.get(path).map_err(|e| format!("hl7: {e}"))? {
        Some(v) => Dynamic::from(v),
        None => Dynamic::UNIT,
    })
}

fn hl7_json(text: &str) -> Res<Dynamic> {
    let m = crate::hl7::Hl7::parse(text).map_err(|e| format!("hl7_json: {e}"))?;
    rhai::serde::to_dynamic(m.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_zones() {
        assert_eq!(
            parse_date("20261126063012", "%Y%m%d%H%M%S", None).unwrap(),
            "2026-11-26T06:30:12Z"
        );
        assert_eq!(
            parse_date("20261126063012", "%Y%m%d%H%M%S", Some("Europe/Berlin")).unwrap(),
            "2026-11-26T06:30:12+01:00"
        );
        assert_eq!(
            parse_date("26.11.2026", "%d.%m.%Y", None).unwrap(),
            "2026-11-26T00:00:00Z"
        );
        assert_eq!(
            to_timezone("2026-07-01T12:00:00Z", "America/New_York").unwrap(),
            "2026-07-01T08:00:00-04:00"
        );
        assert_eq!(
            format_date("2026-11-26T23:30:00Z", "%Y-%m-%d", Some("Asia/Tokyo")).unwrap(),
            "2026-11-27"
        );
        assert_eq!(
            add("2026-11-26T00:00:00Z", chrono::Duration::try_days(7)).unwrap(),
            "2026-12-03T00:00:00Z"
        );
        assert!(parse_date("x", "%Y", None)
            .unwrap_err()
            .to_string()
            .contains("cannot read `x`"));
        assert!(format_date("2026-11-26T00:00:00Z", "%Q", None)
            .unwrap_err()
            .to_string()
            .contains("bad date format"));
        assert!(to_timezone("2026-11-26T00:00:00Z", "Mars/Olympus")
            .unwrap_err()
            .to_string()
            .contains("unknown time zone"));
    }

    #[test]
    fn strings_and_regex() {
        assert_eq!(pad("42", 5, "0", true).unwrap(), "00042");
        assert_eq!(pad("ab", 4, " ", false).unwrap(), "ab  ");
        assert_eq!(pad("abcdef", 3, " ", true).unwrap(), "abcdef");
        assert!(pad("a", 3, "xy", true).is_err());
        assert_eq!(slice_cols("HDR0001ACME      ", 4, 4).unwrap(), "0001");
        assert_eq!(slice_cols("short", 4, 10).unwrap(), "rt");
        assert!(regex_match("PO-17", r"^PO-\d+$").unwrap());
        assert_eq!(regex_replace("a1b22", r"\d+", "#").unwrap(), "a#b#");
        let caps = regex_captures("PO-17/3", r"PO-(\d+)/(\d+)")
            .unwrap()
            .into_array()
            .unwrap();
        assert_eq!(caps[1].clone().into_string().unwrap(), "17");
        assert!(regex_captures("x", "y").unwrap().is_unit());
        assert!(regex_match("x", "(").is_err());
    }
}
