//! Charsets on the wire. Inside the engine every text body is UTF-8; adapters convert at the
//! edge with `encoding_rs` (any WHATWG label: `iso-8859-1`, `windows-1252`, `utf-16le`, ...).

use serde::{Deserialize, Deserializer};

/// A wire charset, by label. `utf-8` (the default) passes bytes through unchanged.
#[derive(Debug, Clone, Copy)]
pub struct Charset(pub &'static encoding_rs::Encoding);

impl Default for Charset {
    fn default() -> Self {
        Charset(encoding_rs::UTF_8)
    }
}

impl<'de> Deserialize<'de> for Charset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let label = String::deserialize(d)?;
        encoding_rs::Encoding::for_label(label.trim().as_bytes())
            .map(Charset)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown charset `{label}`; use a name such as utf-8, iso-8859-1 or windows-1252"
                ))
            })
    }
}

crate::config::schema::text_value!(
    Charset,
    "A character set by its WHATWG label.",
    ["utf-8", "iso-8859-1", "windows-1252"]
);

impl Charset {
    /// Wire bytes to UTF-8. Bytes that are invalid in the charset are an error naming the
    /// charset, never silently replaced.
    pub fn decode(&self, bytes: &[u8]) -> Result<String, String> {
        let (text, had_errors) = self.0.decode_without_bom_handling(bytes);
        if had_errors {
            return Err(format!("the data is not valid {}", self.0.name()));
        }
        Ok(text.into_owned())
    }

    /// UTF-8 to wire bytes. Characters the charset cannot hold are an error.
    pub fn encode(&self, text: &str) -> Result<Vec<u8>, String> {
        let (bytes, _, unmappable) = self.0.encode(text);
        if unmappable {
            return Err(format!(
                "the text has characters that {} cannot hold",
                self.0.name()
            ));
        }
        Ok(bytes.into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_round_trip() {
        let c: Charset = crate::config::yaml::parse_str("iso-8859-1").unwrap();
        assert_eq!(
            c.decode(&[0x4d, 0xfc, 0x6c, 0x6c, 0x65, 0x72]).unwrap(),
            "Müller"
        );
        assert_eq!(
            c.encode("Müller").unwrap(),
            vec![0x4d, 0xfc, 0x6c, 0x6c, 0x65, 0x72]
        );
        assert!(crate::config::yaml::parse_str::<Charset>("klingon").is_err());
        let utf8 = Charset::default();
        assert!(utf8.decode(&[0xff]).is_err());
    }
}
