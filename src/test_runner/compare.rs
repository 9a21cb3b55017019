//! How a route test's expected output is compared with what the steps made: JSON by value
//! (the first differing place, as a JSON pointer), text line by line.

use crate::message::Message;
use serde_json::Value;

pub(super) enum Expected {
    Text(String),
    Json(Value),
}

pub(super) fn compare_json(want: &Value, out: &Message) -> Result<(), String> {
    let actual: Value = serde_json::from_slice(&out.body)
        .map_err(|e| format!("expected a JSON body, but the output is not JSON ({e})"))?;
    match json_difference(want, &actual, "") {
        None => Ok(()),
        Some(d) => Err(d),
    }
}

/// The first place where two JSON values differ, as a JSON pointer with both values.
pub fn json_difference(want: &Value, got: &Value, path: &str) -> Option<String> {
    let here = if path.is_empty() { "/" } else { path };
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}/{k}");
                match b.get(k) {
                    None => return Some(format!("at {p}: missing, expected {v}")),
                    Some(g) => {
                        if let Some(d) = json_difference(v, g, &p) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys()
                .find(|k| !a.contains_key(*k))
                .map(|k| format!("at {path}/{k}: not expected, got {}", b[k]))
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if let Some(d) = json_difference(x, y, &format!("{path}/{i}")) {
                    return Some(d);
                }
            }
            (a.len() != b.len())
                .then(|| format!("at {here}: expected {} items, got {}", a.len(), b.len()))
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("at {here}: expected {a}, got {b}")),
    }
}

pub(super) fn first_text_difference(want: &str, got: &str) -> String {
    for (i, (w, g)) in want.lines().zip(got.lines()).enumerate() {
        if w != g {
            return format!("body differs at line {}: expected `{w}`, got `{g}`", i + 1);
        }
    }
    format!(
        "body differs in length: expected {} lines, got {}",
        want.lines().count(),
        got.lines().count()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_the_first_json_difference() {
        let a = json!({"order": {"id": "1", "lines": [1, 2]}});
        assert_eq!(json_difference(&a, &a, ""), None);
        let b = json!({"order": {"id": "1", "lines": [1, 3]}});
        assert_eq!(
            json_difference(&a, &b, "").unwrap(),
            "at /order/lines/1: expected 2, got 3"
        );
        let c = json!({"order": {"id": "1", "lines": [1, 2], "x": true}});
        assert_eq!(
            json_difference(&a, &c, "").unwrap(),
            "at /order/x: not expected, got true"
        );
    }
}
