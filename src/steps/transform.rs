//! `transform`: runs a Rhai script on each message. The script reads and changes `body` and
//! `headers`, reads `id` and `route`, and may call `reject("reason")` to fail the message on
//! purpose. See `docs/scripting.md`.

use super::script_options::scripted_step_config;
use super::{BuildContext, BuildError, Step, StepError};
use crate::message::Message;
use crate::script::{body_to_dynamic, write_back, Script};
use serde::Deserialize;
use std::path::PathBuf;

scripted_step_config! {
    #[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "TransformStep")]
    pub struct Config {
        /// The script, inline.
        #[serde(default)]
        pub script: Option<String>,
        /// The script in its own file, relative to the route file.
        #[serde(default)]
        pub script_file: Option<PathBuf>,
    }
}

impl Config {
    pub fn build(&self, cx: &BuildContext) -> Result<Transform, BuildError> {
        let options = self.script_options();
        let engine = options.engine(cx)?;
        let script = options
            .script(
                &engine,
                self.script.as_deref(),
                self.script_file.as_deref(),
                cx,
            )?
            .ok_or_else(|| BuildError::new("a transform needs `script` or `script_file`"))?;
        Ok(Transform { script })
    }
}

pub struct Transform {
    script: Script,
}

impl Step for Transform {
    fn cost(&self) -> super::Cost {
        super::Cost::Script
    }

    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let body = body_to_dynamic(msg)?;
        let (_, mut scope) = self
            .script
            .run(msg, body)
            .map_err(|e| StepError(e.to_string()))?;
        write_back(msg, &mut scope)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn transform(yaml: &str) -> Result<Transform, BuildError> {
        let cfg: Config = crate::config::yaml::parse_str(yaml).unwrap();
        cfg.build(&BuildContext::new(PathBuf::from(".")))
    }

    fn run(t: &Transform, body: &str, content_type: Option<&str>) -> Result<Message, StepError> {
        let mut m = Message::new("r", Bytes::from(body.to_string()));
        if let Some(c) = content_type {
            m.headers.insert("content-type".into(), c.into());
        }
        t.apply(&mut m).map(|_| m)
    }

    #[test]
    fn reads_and_writes_json_bodies_and_headers() {
        let t = transform(
            "script: |\n  body.total = body.qty * 2;\n  headers[\"x-id\"] = id;\n  headers.remove(\"drop\");\n  headers.route = route;",
        )
        .unwrap();
        let mut m = Message::new("orders", Bytes::from(r#"{"qty": 21}"#));
        m.headers
            .insert("content-type".into(), "application/json".into());
        m.headers.insert("drop".into(), "me".into());
        t.apply(&mut m).unwrap();
        assert_eq!(
            m.body_json().unwrap(),
            serde_json::json!({"qty": 21, "total": 42})
        );
        assert_eq!(m.header("x-id"), Some(m.id.to_string().as_str()));
        assert_eq!(m.header("route"), Some("orders"));
        assert_eq!(m.header("drop"), None);
    }

    #[test]
    fn json_nested_too_deep_fails_saying_which_limit() {
        let t = transform("script: 'body.seen = true;'").unwrap();
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        for content_type in [Some("application/json"), None] {
            let e = run(&t, &deep, content_type).map(|_| ()).unwrap_err();
            assert!(e.0.contains("nested deeper than 127 levels"), "{e}");
        }
    }

    #[test]
    fn text_bodies_are_strings() {
        let t = transform("script: 'body = body.to_upper() + \"!\";'").unwrap();
        let m = run(&t, "hello", Some("text/plain")).unwrap();
        assert_eq!(&m.body[..], b"HELLO!");
        let e = run(&t, "\u{0}\u{FFFF}", None).map(|_| ()).err();
        assert!(e.is_none());
        let mut bad = Message::new("r", Bytes::from_static(b"ok \xff"));
        let e = t.apply(&mut bad).unwrap_err();
        assert!(e.0.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn helpers_and_lookup_tables_work_from_scripts() {
        let cfg: Config = crate::config::yaml::parse_str(
            r#"
lookups: { countries: lookups/countries.csv, items: lookups/items.yaml }
script: |
  body = #{
    country: lookup("countries", "NL"),
    missing: lookup("countries", "XX", "?"),
    unit: lookup("items", "A1").unit,
    answer: lookup("items", 42),
    xml: to_xml(#{ a: #{ "@id": "1", b: "x & y" } }),
    back: parse_xml("<a id='1'><b>2</b></a>").a.b,
    json: to_json(#{ n: [1, 2] }),
    parsed: parse_json(`{"k": true}`).k,
    padded: pad_left("7", 3, "0") + pad_right("ab", 4, "."),
    col: slice_cols("HDR0001ACME", 4, 4),
    uuid_len: uuid().len(),
    date: format_date(parse_date("20261126063012", "%Y%m%d%H%M%S", "Europe/Berlin"), "%H:%M", "UTC"),
    now_is_utc: now().ends_with("Z"),
  };
"#,
        )
        .unwrap();
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));
        let t = cfg
            .build(&BuildContext::new(dir))
            .map_err(|e| e.message)
            .unwrap();
        let out = run(&t, "{}", None).unwrap().body_json().unwrap();
        assert_eq!(
            out,
            serde_json::json!({
                "country": "Netherlands", "missing": "?", "unit": "pcs", "answer": "answer",
                "xml": "<?xml version=\"1.0\" encoding=\"UTF-8\"?><a id=\"1\"><b>x &amp; y</b></a>",
                "back": "2", "json": "{\"n\":[1,2]}", "parsed": true, "padded": "007ab..",
                "col": "0001", "uuid_len": 36, "date": "05:30", "now_is_utc": true
            })
        );
        let e = transform("script: 'lookup(\"nope\", 1)'").unwrap();
        let err = run(&e, "{}", None).unwrap_err();
        assert!(err.0.contains("unknown lookup table `nope`"), "{err}");
    }

    #[test]
    fn reject_fails_with_the_reason() {
        let t = transform("script: 'if body.qty < 1 { reject(`quantity ${body.qty} too small`) }'")
            .unwrap();
        let e = run(&t, r#"{"qty": 0}"#, None).unwrap_err();
        assert_eq!(e.0, "rejected by the script: quantity 0 too small");
    }

    #[test]
    fn runtime_errors_name_line_column_and_message() {
        let t = transform("script: |\n  let a = 1;\n  let b = body.missing.deeper;").unwrap();
        let mut m = Message::new("r", Bytes::from(r#"{"x": 1}"#));
        let e = t.apply(&mut m).unwrap_err();
        assert!(e.0.starts_with("script error at line 2, column"), "{e}");
        assert!(e.0.contains(&m.id.to_string()), "{e}");
    }

    #[test]
    fn endless_loops_and_runaway_strings_are_stopped() {
        let t = transform("script: 'loop { }'\nlimits: { max_operations: 10000 }").unwrap();
        let e = run(&t, "{}", None).unwrap_err();
        assert!(e.0.contains("stopped after 10000 operations"), "{e}");

        let t = transform(
            "script: 'loop { }'\nlimits: { max_operations: 100000000000, timeout: 50ms }",
        )
        .unwrap();
        let e = run(&t, "{}", None).unwrap_err();
        assert!(e.0.contains("limits.timeout"), "{e}");

        let t = transform(
            "script: 'let s = \"x\"; loop { s += s; }'\nlimits: { max_string_size: 1KiB }",
        )
        .unwrap();
        let e = run(&t, "{}", None).unwrap_err();
        assert!(e.0.to_lowercase().contains("too large"), "{e}");

        let t =
            transform("script: 'let a = []; loop { a.push(1); }'\nlimits: { max_array_size: 100 }")
                .unwrap();
        let e = run(&t, "{}", None).unwrap_err();
        assert!(e.0.to_lowercase().contains("too large"), "{e}");
    }

    #[test]
    fn no_modules_no_eval_and_syntax_errors_at_load() {
        let t = transform("script: 'import \"/etc/passwd\" as p; body = 1;'").unwrap();
        assert!(run(&t, "{}", None).is_err());
        let e = transform("script: 'eval(\"1\")'").err().unwrap();
        assert!(e.message.contains("script syntax error"), "{}", e.message);
        let e = transform("script: |\n  let a = 1;\n  let b = ;")
            .err()
            .unwrap();
        let pos = e.script.unwrap();
        assert_eq!((pos.line, pos.column), (2, 9), "{}", e.message);
        let e = transform("script: 'body = undefined_var;'").err().unwrap();
        assert!(e.message.contains("undefined_var"), "{}", e.message);
    }
}
