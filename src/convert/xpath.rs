//! XPath 1.0 over XML bodies, through libxml2 (cargo feature `xsd`, which binds it).
//!
//! Scripts call it as `xpath(body, "/order/@id")` — so XPath works wherever a Rhai expression
//! does: `route.when`, `map`, `index`, `filter`, `dedupe.key`, `aggregate.key`. Documents are
//! parsed with the network off and no entity substitution, and a document with a DOCTYPE is
//! refused before libxml2 sees it (no DTD, so no external entity and no entity expansion), as
//! everywhere else in Switchyard.

/// What an XPath expression gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A node-set: the string value of each node, in document order.
    Nodes(Vec<String>),
    Text(String),
    Number(f64),
    Bool(bool),
}

/// Why a document cannot be handed to libxml2 (shared with the `xslt` step).
#[cfg(feature = "xsd")]
pub(crate) fn refuse_doctype(xml: &str) -> Result<(), String> {
    if xml.contains("<!DOCTYPE") {
        return Err(
            "the document has a DOCTYPE declaration, which is refused (no DTDs, so no external entities or entity expansion)".into(),
        );
    }
    Ok(())
}

#[cfg(not(feature = "xsd"))]
pub fn evaluate(_xml: &str, _expr: &str, _ns: &[(String, String)]) -> Result<Value, String> {
    Err(NOT_BUILT.into())
}

/// Why XPath and XSLT are missing from this build, and how to get them.
#[cfg(not(feature = "xsd"))]
pub(crate) const NOT_BUILT: &str = "XPath and XSLT need libxml2 and libxslt, which this build of Switchyard does not have: build it with `cargo build --features xsd` (needs libxml2-dev, libxslt1-dev and libclang-dev)";

/// Parses `xml` for libxml2 (network off, no entity substitution, no DOCTYPE).
#[cfg(feature = "xsd")]
pub(crate) fn parse(xml: &str) -> Result<libxml::tree::Document, String> {
    use libxml::parser::{Parser, ParserOptions};
    refuse_doctype(xml)?;
    let options = ParserOptions {
        recover: false,
        no_net: true,
        no_error: true,
        no_warning: true,
        ..ParserOptions::default()
    };
    Parser::default()
        .parse_string_with_options(xml, options)
        .map_err(|e| format!("the body is not well-formed XML ({e:?})"))
}

/// Evaluates `expr` on the document `xml`; `ns` binds the prefixes the expression uses to
/// namespace URIs (XPath 1.0 has no default namespace: `o:order` with `o` bound).
#[cfg(feature = "xsd")]
pub fn evaluate(xml: &str, expr: &str, ns: &[(String, String)]) -> Result<Value, String> {
    use libxml::bindings::{
        xmlXPathObjectType_XPATH_BOOLEAN, xmlXPathObjectType_XPATH_NODESET,
        xmlXPathObjectType_XPATH_NUMBER, xmlXPathObjectType_XPATH_STRING,
    };
    let doc = parse(xml)?;
    let ctx = libxml::xpath::Context::new(&doc)
        .map_err(|_| "libxml2 could not make an XPath context".to_string())?;
    for (prefix, uri) in ns {
        ctx.register_namespace(prefix, uri)
            .map_err(|_| format!("cannot bind the namespace prefix `{prefix}` to `{uri}`"))?;
    }
    let found = ctx.evaluate_checked(expr).map_err(|e| {
        let why = e
            .message
            .as_deref()
            .unwrap_or("not a valid XPath 1.0 expression");
        format!("XPath `{expr}`: {}", why.trim())
    })?;
    // SAFETY: `found.ptr` is the non-null object libxml2 returned, alive until `found` drops.
    let object = unsafe { &*found.ptr };
    #[allow(non_upper_case_globals)]
    Ok(match object.type_ {
        xmlXPathObjectType_XPATH_NODESET => Value::Nodes(found.get_nodes_as_str()),
        xmlXPathObjectType_XPATH_BOOLEAN => Value::Bool(object.boolval != 0),
        xmlXPathObjectType_XPATH_NUMBER => Value::Number(object.floatval),
        xmlXPathObjectType_XPATH_STRING => Value::Text(found.to_string()),
        other => {
            return Err(format!(
                "XPath `{expr}` gave a result of libxml2 type {other}, which scripts cannot use"
            ))
        }
    })
}

#[cfg(all(test, feature = "xsd"))]
mod tests {
    use super::*;

    const ORDER: &str = r#"<?xml version="1.0"?>
<o:order xmlns:o="urn:shop" id="17"><o:line sku="A" qty="2"/><o:line sku="B" qty="3"/></o:order>"#;

    #[test]
    fn every_kind_of_result() {
        let ns = [("o".to_string(), "urn:shop".to_string())];
        assert_eq!(
            evaluate(ORDER, "/o:order/@id", &ns).unwrap(),
            Value::Nodes(vec!["17".into()])
        );
        assert_eq!(
            evaluate(ORDER, "//o:line/@sku", &ns).unwrap(),
            Value::Nodes(vec!["A".into(), "B".into()])
        );
        assert_eq!(
            evaluate(ORDER, "sum(//o:line/@qty)", &ns).unwrap(),
            Value::Number(5.0)
        );
        assert_eq!(
            evaluate(ORDER, "count(//o:line) = 2", &ns).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            evaluate(ORDER, "concat('#', /o:order/@id)", &ns).unwrap(),
            Value::Text("#17".into())
        );
    }

    #[test]
    fn refuses_what_it_cannot_take() {
        let e = evaluate(ORDER, "//o:line[", &[]).unwrap_err();
        assert!(e.starts_with("XPath `//o:line[`"), "{e}");
        let e = evaluate("<a>", "/a", &[]).unwrap_err();
        assert!(e.contains("not well-formed"), "{e}");
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>"#;
        assert!(evaluate(xxe, "/a", &[]).unwrap_err().contains("DOCTYPE"));
    }
}
