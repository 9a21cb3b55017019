//! The one place that turns YAML text into configuration structs. Every error becomes a
//! [`Diagnostic`] with `file:line:column`, and misspelt keys and kinds get a "did you mean".
//! Keeping the YAML crate behind this file lets it be swapped without touching the model.

use super::{did_you_mean, Diagnostic};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Replaces `${NAME}` with the environment variable `NAME` (upper-case names only), so secrets
/// stay out of route files; `${NAME:-default}` falls back to `default`; `$${` writes a literal
/// `${`. Other `${...}` text, such as Rhai's `${expr}` in an inline script, is left alone. A variable that is not set is an error at its place.
/// Values are never logged or echoed in errors.
pub fn interpolate(path: &Path, source: &str) -> Result<String, Diagnostic> {
    if !source.contains("${") {
        return Ok(source.to_string());
    }
    let mut out = String::with_capacity(source.len());
    for (i, line) in source.lines().enumerate() {
        let mut rest = line;
        let mut column = 1;
        while let Some(at) = rest.find("${") {
            if rest[..at].ends_with('$') {
                out.push_str(&rest[..at - 1]);
                out.push_str("${");
                column += at + 2;
                rest = &rest[at + 2..];
                continue;
            }
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            // `${NAME:-default}` uses `default` when NAME is not set.
            let inner = after.find('}').map(|end| (end, &after[..end]));
            let parsed = inner.map(|(end, text)| match text.split_once(":-") {
                Some((n, d)) => (end, n, Some(d)),
                None => (end, text, None),
            });
            // Only upper-case names are environment variables: anything else in `${...}` (Rhai's
            // string interpolation in an inline script, say) is left as it is.
            let Some((end, name, default)) = parsed.filter(|(_, n, _)| is_env_name(n)) else {
                out.push_str("${");
                column += at + 2;
                rest = after;
                continue;
            };
            match std::env::var(name).ok().or(default.map(str::to_string)) {
                Some(v) => out.push_str(&v),
                None => {
                    return Err(Diagnostic {
                        file: path.to_path_buf(),
                        line: i + 1,
                        column: column + at,
                        message: format!(
                            "environment variable `{name}` is not set (the file refers to it as `${{{name}}}`); set it, or give a default: `${{{name}:-value}}`"
                        ),
                    })
                }
            }
            column += at + 2 + end + 1;
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    Ok(out)
}

/// `SHOP_TOKEN`: upper-case letters, digits and `_`, not starting with a digit.
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// A YAML document as a tree, for data files (lookup tables) and free-form values (a route
/// test's expected body).
pub use serde_yaml::Value;

/// Parses `source` (read from `path`) into `T`, after `${ENV}` interpolation.
pub fn parse<T: DeserializeOwned>(path: &Path, source: &str) -> Result<T, Diagnostic> {
    let interpolated = interpolate(path, source)?;
    deserialize(path, &interpolated)
}

/// Parses a snippet that belongs to no file, as [`parse`] parses a file.
pub fn parse_str<T: DeserializeOwned>(source: &str) -> Result<T, Diagnostic> {
    parse(Path::new("<text>"), source)
}

/// Parses a data file (a lookup table): no `${ENV}` interpolation, which is for configuration,
/// but the same positions in errors.
pub fn parse_data<T: DeserializeOwned>(path: &Path, source: &str) -> Result<T, Diagnostic> {
    deserialize(path, source)
}

fn deserialize<T: DeserializeOwned>(path: &Path, source: &str) -> Result<T, Diagnostic> {
    // `singleton_map_recursive` reads enums written as `kind: { options }`, the shape every
    // adapter and step uses, instead of serde_yaml's default `!kind` tags.
    let de = serde_yaml::Deserializer::from_str(source);
    serde_yaml::with::singleton_map_recursive::deserialize(de).map_err(|e: serde_yaml::Error| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let message = humanize(&e.to_string());
        let (line, column) = refine(source, line, &message).unwrap_or((line, column));
        Diagnostic {
            file: path.to_path_buf(),
            line,
            column,
            message,
        }
    })
}

/// serde_yaml places errors raised by a value's own parser (durations, sizes, patterns,
/// templates) at the start of the enclosing mapping. Those messages quote the bad value, so
/// point at the first place at or after that line where it is written.
fn refine(source: &str, from_line: usize, message: &str) -> Option<(usize, usize)> {
    let quoted = [
        "bad duration `",
        "bad size `",
        "bad pattern `",
        "unknown placeholder `",
    ]
    .iter()
    .find_map(|marker| {
        let start = message.find(marker)? + marker.len();
        let len = message[start..].find('`')?;
        Some(&message[start..start + len])
    })?;
    source
        .lines()
        .enumerate()
        .skip(from_line.saturating_sub(1))
        .find_map(|(i, line)| line.find(quoted).map(|col| (i + 1, col + 1)))
}

/// Rewrites serde's wording into something a route author can act on.
fn humanize(raw: &str) -> String {
    // serde_yaml appends " at line L column C"; the diagnostic carries the position already.
    let mut msg = match raw.rfind(" at line ") {
        Some(i) => raw[..i].to_string(),
        None => raw.to_string(),
    };
    for (marker, what) in [("unknown field `", "key"), ("unknown variant `", "kind")] {
        let Some(start) = msg.find(marker) else {
            continue;
        };
        let rest = &msg[start + marker.len()..];
        let Some(end) = rest.find('`') else { continue };
        let word = rest[..end].to_string();
        let expected: Vec<&str> = rest[end + 1..].split('`').skip(1).step_by(2).collect();
        let prefix = msg[..start].to_string();
        let list = expected
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let hint = match did_you_mean(&word, &expected) {
            Some(s) => format!("did you mean `{s}`? "),
            None => String::new(),
        };
        msg = if expected.is_empty() {
            format!("{prefix}unknown {what} `{word}`: this takes no options")
        } else {
            format!("{prefix}unknown {what} `{word}`; {hint}expected one of {list}")
        };
        break;
    }
    if msg.contains("missing field `") {
        msg = msg.replacen("missing field", "missing required key", 1);
    }
    msg
}

/// Line and column (1-based) of the first line that sets `key` at any depth, to point checks
/// made after parsing at the right place.
pub fn locate_key(source: &str, key: &str) -> Option<(usize, usize)> {
    source.lines().enumerate().find_map(|(i, line)| {
        let trimmed = line.trim_start().trim_start_matches("- ");
        let indent = line.len() - trimmed.len();
        trimmed
            .strip_prefix(key)
            .filter(|rest| rest.trim_start().starts_with(':'))
            .map(|_| (i + 1, indent + 1))
    })
}

/// Line and column of `key` inside the top-level section `section` (its first line at a
/// deeper indent, or on the section's own line in flow style `section: { key: ... }`).
pub fn locate_in_section(source: &str, section: &str, key: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = source.lines().collect();
    let start = lines.iter().position(|l| {
        l.strip_prefix(section)
            .is_some_and(|r| r.trim_start().starts_with(':'))
    })?;
    if let Some(col) = lines[start].find(&format!("{key}:")) {
        return Some((start + 1, col + 1));
    }
    lines[start + 1..]
        .iter()
        .enumerate()
        .take_while(|(_, l)| l.trim().is_empty() || l.starts_with([' ', '\t', '#']))
        .find_map(|(i, l)| {
            let trimmed = l.trim_start();
            trimmed
                .strip_prefix(key)
                .filter(|rest| rest.trim_start().starts_with(':'))
                .map(|_| (start + 2 + i, l.len() - trimmed.len() + 1))
        })
}

/// Line and column of item `index` (0-based) of the block list under the top-level `key`.
pub fn locate_list_item(source: &str, key: &str, index: usize) -> Option<(usize, usize)> {
    let lines: Vec<&str> = source.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with(key) && l[key.len()..].trim_start().starts_with(':'))?;
    let mut item_indent = None;
    let mut seen = 0;
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if indent == 0 && !trimmed.starts_with('-') {
            break; // the next top-level key
        }
        if trimmed.starts_with("- ") || trimmed == "-" {
            let expected = *item_indent.get_or_insert(indent);
            if indent == expected {
                if seen == index {
                    return Some((i + 1, indent + 3));
                }
                seen += 1;
            }
        }
    }
    None
}

/// Maps a position inside an inline `script:` (1-based line and column in the script) to
/// the route file, looking for the first `script:` key from line `from` (1-based) on.
pub fn locate_inline_script(
    source: &str,
    from: usize,
    line: usize,
    column: usize,
) -> Option<(usize, usize)> {
    let lines: Vec<&str> = source.lines().collect();
    let (key_index, key_line) =
        lines
            .iter()
            .enumerate()
            .skip(from.saturating_sub(1))
            .find(|(_, l)| {
                let t = l.trim_start().trim_start_matches("- ");
                t.starts_with("script:")
            })?;
    let value = key_line[key_line.find("script:")? + "script:".len()..].trim_start();
    if value.starts_with('|') || value.starts_with('>') {
        // Block scalar: the script starts on the next line, at that line's indentation.
        let first = lines.get(key_index + line)?;
        let indent = first.len() - first.trim_start().len();
        Some((key_index + 1 + line, indent + column))
    } else {
        let value_col = key_line.len() - value.len();
        let quoted = usize::from(value.starts_with('"') || value.starts_with('\''));
        Some((key_index + 1, value_col + quoted + column))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanizes_unknown_field() {
        let m = humanize("from.file: unknown field `pathh`, expected one of `path`, `pattern` at line 3 column 5");
        assert_eq!(
            m,
            "from.file: unknown key `pathh`; did you mean `path`? expected one of `path`, `pattern`"
        );
    }

    #[test]
    fn points_at_the_bad_value() {
        let src = "from:\n  file:\n    path: x\n    settle: 5 parsecs\n";
        let d = parse::<crate::route::RouteFile>(Path::new("r.yaml"), src).unwrap_err();
        assert_eq!((d.line, d.column), (4, 13), "{d}");
        assert!(d.message.contains("bad duration"), "{d}");
    }

    #[test]
    fn interpolates_environment_variables() {
        std::env::set_var("SWITCHYARD_TEST_TOKEN", "s3cret");
        let p = Path::new("r.yaml");
        let out = interpolate(p, "a: ${SWITCHYARD_TEST_TOKEN}\nb: x-$${LITERAL}\n").unwrap();
        assert_eq!(out, "a: s3cret\nb: x-${LITERAL}\n");
        let e = interpolate(p, "a: 1\nb: \"${SWITCHYARD_TEST_UNSET_VAR}\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 5));
        assert!(
            e.message.contains("`SWITCHYARD_TEST_UNSET_VAR` is not set"),
            "{}",
            e.message
        );
        // Not an environment variable name: left for Rhai's `${...}` string interpolation.
        assert_eq!(
            interpolate(p, "s: '`order-${body.id}`'\n").unwrap(),
            "s: '`order-${body.id}`'\n"
        );
        let out =
            interpolate(p, "u: ${SWITCHYARD_TEST_UNSET_VAR:-http://127.0.0.1:9}/x\n").unwrap();
        assert_eq!(out, "u: http://127.0.0.1:9/x\n");
        assert_eq!(
            interpolate(p, "t: ${SWITCHYARD_TEST_TOKEN:-no}\n").unwrap(),
            "t: s3cret\n"
        );
    }

    #[test]
    fn locates_keys() {
        let src = "id: a\nfrom:\n  file:\n    path: x\n";
        assert_eq!(locate_key(src, "path"), Some((4, 5)));
        assert_eq!(locate_key(src, "to"), None);
    }
}
