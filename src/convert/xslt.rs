//! XSLT 1.0 through libxslt (cargo feature `xsd`, with libxml2).
//!
//! A stylesheet is compiled once, when the route loads, and shared by every thread: libxslt
//! keeps a compiled stylesheet read-only while it transforms, and each transformation gets a
//! context of its own. Each context forbids the stylesheet to read or write files, create
//! directories or use the network at transformation time (`document()`, EXSLT's
//! `exsl:document`), so a message cannot make the engine fetch or leak anything; the
//! stylesheet's own `xsl:include` / `xsl:import` are read when it is compiled. Documents are
//! parsed as for XPath (see [`super::xpath`]).

#[cfg(not(feature = "xsd"))]
pub struct Stylesheet;

#[cfg(not(feature = "xsd"))]
impl Stylesheet {
    pub fn load(_path: &std::path::Path) -> Result<Stylesheet, String> {
        Err(super::xpath::NOT_BUILT.into())
    }

    pub fn apply(&self, _xml: &str, _params: &[(String, String)]) -> Result<Vec<u8>, String> {
        Err(super::xpath::NOT_BUILT.into())
    }
}

#[cfg(feature = "xsd")]
pub use libxslt::Stylesheet;

#[cfg(feature = "xsd")]
mod libxslt {
    use libxml::bindings::{xmlDocPtr, xmlFree, xmlFreeDoc};
    use std::ffi::{c_char, c_int, c_void, CString};
    use std::path::Path;

    type StylePtr = *mut c_void;
    type ContextPtr = *mut c_void;
    type SecurityPtr = *mut c_void;
    type SecurityCheck = unsafe extern "C" fn(SecurityPtr, ContextPtr, *const c_char) -> c_int;

    /// `xsltSecurityOption`: what a transformation may do, each refused here.
    const READ_FILE: c_int = 1;
    const WRITE_FILE: c_int = 2;
    const CREATE_DIRECTORY: c_int = 3;
    const READ_NETWORK: c_int = 4;
    const WRITE_NETWORK: c_int = 5;

    #[link(name = "xslt")]
    extern "C" {
        fn xsltParseStylesheetFile(filename: *const u8) -> StylePtr;
        fn xsltFreeStylesheet(style: StylePtr);
        fn xsltNewTransformContext(style: StylePtr, doc: xmlDocPtr) -> ContextPtr;
        fn xsltFreeTransformContext(ctxt: ContextPtr);
        fn xsltNewSecurityPrefs() -> SecurityPtr;
        fn xsltFreeSecurityPrefs(sec: SecurityPtr);
        fn xsltSetSecurityPrefs(sec: SecurityPtr, option: c_int, func: SecurityCheck) -> c_int;
        fn xsltSecurityForbid(sec: SecurityPtr, ctxt: ContextPtr, value: *const c_char) -> c_int;
        fn xsltSetCtxtSecurityPrefs(sec: SecurityPtr, ctxt: ContextPtr) -> c_int;
        fn xsltApplyStylesheetUser(
            style: StylePtr,
            doc: xmlDocPtr,
            params: *const *const c_char,
            output: *const c_char,
            profile: *mut c_void,
            user: ContextPtr,
        ) -> xmlDocPtr;
        fn xsltSaveResultToString(
            out: *mut *mut u8,
            len: *mut c_int,
            result: xmlDocPtr,
            style: StylePtr,
        ) -> c_int;
    }

    /// A compiled stylesheet.
    pub struct Stylesheet {
        style: StylePtr,
        /// The prefixes forbidding file and network access, applied to every context.
        security: SecurityPtr,
    }

    // SAFETY: libxslt does not change a compiled stylesheet or security preferences while it
    // transforms (each transformation's state is in its own context), so both may be used
    // from several threads at once; they are freed only when the last user drops them.
    unsafe impl Send for Stylesheet {}
    unsafe impl Sync for Stylesheet {}

    impl Stylesheet {
        /// Compiles the stylesheet at `path` (its includes and imports relative to it).
        pub fn load(path: &Path) -> Result<Stylesheet, String> {
            if !path.is_file() {
                return Err(format!("stylesheet {} does not exist", path.display()));
            }
            // Parses the stylesheet's own XML before libxslt does: a clear error where it is
            // not well-formed (libxslt only prints its complaint).
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read stylesheet {}: {e}", path.display()))?;
            super::super::xpath::parse(&text)
                .map_err(|e| format!("stylesheet {}: {e}", path.display()))?;
            let name = CString::new(path.to_string_lossy().as_bytes())
                .map_err(|_| format!("stylesheet path {} holds a NUL", path.display()))?;
            // SAFETY: a NUL-terminated path; the result is null or a stylesheet we own.
            let style = unsafe { xsltParseStylesheetFile(name.as_ptr().cast()) };
            if style.is_null() {
                return Err(format!(
                    "{} is not an XSLT 1.0 stylesheet libxslt can compile (its messages are on the engine's console)",
                    path.display()
                ));
            }
            // SAFETY: a fresh preferences object, set up before any thread sees it.
            let security = unsafe {
                let sec = xsltNewSecurityPrefs();
                for option in [
                    READ_FILE,
                    WRITE_FILE,
                    CREATE_DIRECTORY,
                    READ_NETWORK,
                    WRITE_NETWORK,
                ] {
                    xsltSetSecurityPrefs(sec, option, xsltSecurityForbid);
                }
                sec
            };
            Ok(Stylesheet { style, security })
        }

        /// Transforms the document `xml`; `params` are passed as string parameters
        /// (`<xsl:param name="...">`). Returns the output as `xsl:output` says to write it.
        pub fn apply(&self, xml: &str, params: &[(String, String)]) -> Result<Vec<u8>, String> {
            let doc = super::super::xpath::parse(xml)?;
            let mut owned = Vec::with_capacity(params.len() * 2);
            for (name, value) in params {
                // An XPath string literal: libxslt evaluates parameters as expressions.
                let literal = if !value.contains('\'') {
                    format!("'{value}'")
                } else if !value.contains('"') {
                    format!("\"{value}\"")
                } else {
                    return Err(format!(
                        "parameter `{name}` holds both ' and \", which an XSLT 1.0 parameter cannot"
                    ));
                };
                owned.push(CString::new(name.as_str()).map_err(|_| "a NUL in a parameter")?);
                owned.push(CString::new(literal).map_err(|_| "a NUL in a parameter")?);
            }
            let mut list: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
            list.push(std::ptr::null());
            // SAFETY: `doc` outlives the transformation; the context is ours and freed below;
            // the result document and the output buffer are freed after they are read.
            unsafe {
                let ctxt = xsltNewTransformContext(self.style, doc.doc_ptr());
                if ctxt.is_null() {
                    return Err("libxslt could not start a transformation".into());
                }
                xsltSetCtxtSecurityPrefs(self.security, ctxt);
                let result = xsltApplyStylesheetUser(
                    self.style,
                    doc.doc_ptr(),
                    list.as_ptr(),
                    std::ptr::null(),
                    std::ptr::null_mut(),
                    ctxt,
                );
                xsltFreeTransformContext(ctxt);
                if result.is_null() {
                    return Err(
                        "the stylesheet stopped on this document (an xsl:message with terminate=\"yes\", a runtime error, or access to a file or the network, which is refused); libxslt's own message is on the engine's console".into(),
                    );
                }
                let mut out: *mut u8 = std::ptr::null_mut();
                let mut len: c_int = 0;
                let saved = xsltSaveResultToString(&mut out, &mut len, result, self.style);
                xmlFreeDoc(result);
                if saved != 0 {
                    return Err("libxslt could not write the result".into());
                }
                if out.is_null() {
                    return Ok(Vec::new());
                }
                let bytes = std::slice::from_raw_parts(out, len.max(0) as usize).to_vec();
                if let Some(free) = xmlFree {
                    free(out.cast());
                }
                Ok(bytes)
            }
        }
    }

    impl Drop for Stylesheet {
        fn drop(&mut self) {
            // SAFETY: both were made in `load` and nothing uses them once the step is dropped.
            unsafe {
                xsltFreeStylesheet(self.style);
                xsltFreeSecurityPrefs(self.security);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn sheet(dir: &Path, xsl: &str) -> Stylesheet {
            let p = dir.join("s.xsl");
            std::fs::write(&p, xsl).unwrap();
            Stylesheet::load(&p).unwrap()
        }

        const HEAD: &str =
            r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">"#;

        #[test]
        fn transforms_with_parameters_on_many_threads() {
            let dir = tempfile::tempdir().unwrap();
            let s = std::sync::Arc::new(sheet(
                dir.path(),
                &format!(
                    r#"{HEAD}<xsl:output method="xml" omit-xml-declaration="yes"/><xsl:param name="source"/>
<xsl:template match="/order"><invoice no="{{@id}}" from="{{$source}}"><xsl:value-of select="sum(line/@qty)"/></invoice></xsl:template>
</xsl:stylesheet>"#
                ),
            ));
            let threads: Vec<_> = (0..4)
                .map(|i| {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        for n in 0..50 {
                            let xml = format!(
                                r#"<order id="{i}-{n}"><line qty="2"/><line qty="{n}"/></order>"#
                            );
                            let out = s
                                .apply(&xml, &[("source".into(), "shop's".into())])
                                .unwrap();
                            let want = format!(
                                r#"<invoice no="{i}-{n}" from="shop's">{}</invoice>"#,
                                2 + n
                            );
                            assert_eq!(String::from_utf8(out).unwrap().trim(), want);
                        }
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
        }

        #[test]
        fn refuses_files_the_network_and_doctypes() {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("secret.xml"), "<secret>s3cr3t</secret>").unwrap();
            let s = sheet(
                dir.path(),
                &format!(
                    r#"{HEAD}<xsl:template match="/"><out><xsl:copy-of select="document(/a/@href)"/></out></xsl:template></xsl:stylesheet>"#
                ),
            );
            let href = dir.path().join("secret.xml");
            let e = s
                .apply(&format!(r#"<a href="{}"/>"#, href.display()), &[])
                .map(|out| String::from_utf8_lossy(&out).into_owned());
            assert!(
                !e.as_deref().unwrap_or("").contains("s3cr3t"),
                "the stylesheet read a file: {e:?}"
            );
            let e = s
                .apply(
                    r#"<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>"#,
                    &[],
                )
                .unwrap_err();
            assert!(e.contains("DOCTYPE"), "{e}");
            let bad = dir.path().join("bad.xsl");
            std::fs::write(&bad, "<xsl:stylesheet").unwrap();
            assert!(Stylesheet::load(&bad)
                .err()
                .unwrap()
                .contains("not well-formed"));
        }
    }
}
