//! HL7 v2: parsing (honouring the encoding characters in MSH-1 and MSH-2), field access by
//! path (`PID-3.1`, `OBX[2]-5`, `PID-3[2].1`), escape sequences, a JSON mapping, and ACKs.
//!
//! Paths: `SEG[n]-F[r].C.S` — segment (n-th of its name, from 1, default 1), field number,
//! repetition (from 1, default 1), component and subcomponent (default: the whole field or
//! component). `MSH-1` is the field separator and `MSH-2` the encoding characters, as in the
//! standard.

use serde_json::{Map, Value};

/// The delimiters a message declares in MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
}

impl Default for Encoding {
    fn default() -> Self {
        Encoding {
            field: '|',
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
        }
    }
}

/// A parsed HL7 v2 message (borrowing its text).
#[derive(Debug)]
pub struct Hl7<'a> {
    pub encoding: Encoding,
    segments: Vec<&'a str>,
}

impl<'a> Hl7<'a> {
    /// Parses a message: segments end with CR (LF and CR LF are accepted too), the first is
    /// MSH. Errors say what is wrong, for an AR and the failure record.
    pub fn parse(text: &'a str) -> Result<Hl7<'a>, String> {
        let text = text.trim_start_matches(['\r', '\n', ' ', '\t']);
        if !text.starts_with("MSH") {
            let start: String = text.chars().take(20).collect();
            return Err(format!(
                "not an HL7 v2 message: it must start with an MSH segment, not `{start}`"
            ));
        }
        let mut chars = text[3..].chars();
        let field = chars.next().ok_or("MSH segment is cut short after `MSH`")?;
        let enc: Vec<char> = text[3 + field.len_utf8()..]
            .chars()
            .take_while(|c| *c != field && *c != '\r' && *c != '\n')
            .collect();
        if enc.len() < 4 {
            return Err(format!(
                "MSH-2 must hold the four encoding characters (component, repetition, escape, subcomponent), found `{}`",
                enc.iter().collect::<String>()
            ));
        }
        let encoding = Encoding {
            field,
            component: enc[0],
            repetition: enc[1],
            escape: enc[2],
            subcomponent: enc[3],
        };
        let segments: Vec<&str> = text
            .split(['\r', '\n'])
            .map(|s| s.trim_end())
            .filter(|s| !s.is_empty())
            .collect();
        for (i, s) in segments.iter().enumerate() {
            let name = s.split(field).next().unwrap_or("");
            if name.len() != 3
                || !name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            {
                return Err(format!(
                    "segment {} has no valid name: `{}`",
                    i + 1,
                    s.chars().take(20).collect::<String>()
                ));
            }
        }
        Ok(Hl7 { encoding, segments })
    }

    /// The fields of a segment, numbered as the standard does (index 0 is the name; for MSH,
    /// index 1 is the field separator itself).
    fn fields(&self, segment: &'a str) -> Vec<&'a str> {
        let mut parts: Vec<&str> = segment.split(self.encoding.field).collect();
        if parts.first() == Some(&"MSH") {
            parts.insert(1, "|"); // MSH-1 is the separator; the stored text is only a placeholder
        }
        parts
    }

    /// Segments with a given name, in order.
    pub fn segments(&self, name: &str) -> Vec<&'a str> {
        self.segments
            .iter()
            .copied()
            .filter(|s| s.split(self.encoding.field).next() == Some(name))
            .collect()
    }

    /// The value at `path` (`PID-3.1`), unescaped; `None` when it is not there or empty.
    pub fn get(&self, path: &str) -> Result<Option<String>, String> {
        let p = Path::parse(path)?;
        let Some(segment) = self.segments(&p.segment).get(p.segment_index - 1).copied() else {
            return Ok(None);
        };
        if p.segment == "MSH" && p.field == 1 {
            return Ok(Some(self.encoding.field.to_string()));
        }
        if p.segment == "MSH" && p.field == 2 {
            let f = self.fields(segment);
            return Ok(f.get(2).map(|s| s.to_string()));
        }
        let fields = self.fields(segment);
        let Some(field) = fields.get(p.field) else {
            return Ok(None);
        };
        let Some(rep) = field.split(self.encoding.repetition).nth(p.repetition - 1) else {
            return Ok(None);
        };
        let value = match p.component {
            None => rep.to_string(),
            Some(c) => {
                let Some(comp) = rep.split(self.encoding.component).nth(c - 1) else {
                    return Ok(None);
                };
                match p.subcomponent {
                    None => comp.to_string(),
                    Some(s) => match comp.split(self.encoding.subcomponent).nth(s - 1) {
                        Some(sub) => sub.to_string(),
                        None => return Ok(None),
                    },
                }
            }
        };
        // A whole field or component keeps its inner delimiters; leaves are unescaped.
        let leaf = p.subcomponent.is_some()
            || (p.component.is_some() && !value.contains(self.encoding.subcomponent))
            || !value.contains([self.encoding.component, self.encoding.subcomponent]);
        let value = if leaf { self.unescape(&value) } else { value };
        Ok((!value.is_empty()).then_some(value))
    }

    /// Resolves escape sequences: `\F\ \S\ \T\ \R\ \E\`, `\Xhh..\` (hex bytes), `\.br\`.
    pub fn unescape(&self, s: &str) -> String {
        let e = self.encoding.escape;
        if !s.contains(e) {
            return s.to_string();
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find(e) {
            out.push_str(&rest[..start]);
            let after = &rest[start + e.len_utf8()..];
            let Some(end) = after.find(e) else {
                out.push_str(&rest[start..]);
                return out;
            };
            let seq = &after[..end];
            match seq {
                "F" => out.push(self.encoding.field),
                "S" => out.push(self.encoding.component),
                "T" => out.push(self.encoding.subcomponent),
                "R" => out.push(self.encoding.repetition),
                "E" => out.push(e),
                ".br" => out.push('\n'),
                // Hex digits are ASCII: anything else is not a hex sequence (and slicing it
                // by two bytes could cut a character in half; found by cargo fuzz).
                x if x.starts_with('X') && x.len() % 2 == 1 && x.is_ascii() => {
                    let bytes: Option<Vec<u8>> = (1..x.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&x[i..i + 2], 16).ok())
                        .collect();
                    match bytes {
                        Some(b) => out.push_str(&String::from_utf8_lossy(&b)),
                        None => {
                            out.push(e);
                            out.push_str(seq);
                            out.push(e);
                        }
                    }
                }
                other => {
                    // Unknown sequences (formatting such as \H\) are kept as written.
                    out.push(e);
                    out.push_str(other);
                    out.push(e);
                }
            }
            rest = &after[end + e.len_utf8()..];
        }
        out.push_str(rest);
        out
    }

    /// The message as JSON: `{"PID": [{"3": [...], ...}], ...}` — each segment name maps to a
    /// list of its occurrences; fields by number; a field with repetitions is a list; one with
    /// components is an object by component number (`{"1": "ORU", "2": "R01"}`), and so on
    /// down to subcomponents. Empty fields are left out. Values are unescaped.
    pub fn to_json(&self) -> Value {
        let mut doc = Map::new();
        for segment in &self.segments {
            let fields = self.fields(segment);
            let name = fields[0].to_string();
            let mut obj = Map::new();
            for (i, f) in fields.iter().enumerate().skip(1) {
                if f.is_empty() {
                    continue;
                }
                let value = if name == "MSH" && i <= 2 {
                    Value::String(if i == 1 {
                        self.encoding.field.to_string()
                    } else {
                        f.to_string()
                    })
                } else {
                    self.field_json(f)
                };
                obj.insert(i.to_string(), value);
            }
            match doc.entry(name).or_insert_with(|| Value::Array(Vec::new())) {
                Value::Array(a) => a.push(Value::Object(obj)),
                _ => unreachable!("segments map to arrays"),
            }
        }
        Value::Object(doc)
    }

    fn field_json(&self, f: &str) -> Value {
        let reps: Vec<Value> = f
            .split(self.encoding.repetition)
            .map(|r| self.split_json(r, self.encoding.component, true))
            .collect();
        if reps.len() == 1 {
            reps.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(reps)
        }
    }

    fn split_json(&self, s: &str, sep: char, components: bool) -> Value {
        if !s.contains(sep) {
            return if components && s.contains(self.encoding.subcomponent) {
                self.split_json(s, self.encoding.subcomponent, false)
            } else {
                Value::String(self.unescape(s))
            };
        }
        let mut obj = Map::new();
        for (i, part) in s.split(sep).enumerate() {
            if part.is_empty() {
                continue;
            }
            let v = if components {
                self.split_json(part, self.encoding.subcomponent, false)
            } else {
                Value::String(self.unescape(part))
            };
            obj.insert((i + 1).to_string(), v);
        }
        Value::Object(obj)
    }

    /// Escapes text for a field of this message.
    pub fn escape(&self, s: &str) -> String {
        let enc = self.encoding;
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            let seq = match c {
                c if c == enc.escape => "E",
                c if c == enc.field => "F",
                c if c == enc.component => "S",
                c if c == enc.subcomponent => "T",
                c if c == enc.repetition => "R",
                '\r' | '\n' => ".br",
                _ => {
                    out.push(c);
                    continue;
                }
            };
            out.push(enc.escape);
            out.push_str(seq);
            out.push(enc.escape);
        }
        out
    }

    /// An ACK for this message: `code` is AA, AE or AR; MSA-2 echoes MSH-10; `text` (the
    /// reason) goes to MSA-3 and, for errors, ERR-8. Sender and receiver are swapped.
    pub fn ack(&self, code: &str, text: &str) -> String {
        let get = |p: &str| self.get(p).ok().flatten().unwrap_or_default();
        let enc = self.encoding;
        let f = enc.field;
        let msh2: String = [enc.component, enc.repetition, enc.escape, enc.subcomponent]
            .iter()
            .collect();
        let now = chrono::Utc::now().format("%Y%m%d%H%M%S");
        let control = get("MSH-10");
        let mut ack = format!(
            "MSH{f}{msh2}{f}{}{f}{}{f}{}{f}{}{f}{now}{f}{f}ACK{}{}{}ACK{f}ACK{}{f}{}{f}{}\rMSA{f}{code}{f}{control}{f}{}\r",
            get("MSH-5"),
            get("MSH-6"),
            get("MSH-3"),
            get("MSH-4"),
            enc.component,
            get("MSH-9.2"),
            enc.component,
            uuid::Uuid::now_v7().simple(),
            get("MSH-11"),
            get("MSH-12"),
            self.escape(text),
        );
        if code != "AA" && !text.is_empty() {
            let severity = "E";
            ack.push_str(&format!(
                "ERR{f}{f}{f}207{f}{severity}{f}{f}{f}{f}{}\r",
                self.escape(text)
            ));
        }
        ack
    }
}

/// An ACK for a message that could not even be parsed (AR), with default delimiters.
pub fn reject_unparsed(text: &str) -> String {
    let now = chrono::Utc::now().format("%Y%m%d%H%M%S");
    let dummy = Hl7 {
        encoding: Encoding::default(),
        segments: Vec::new(),
    };
    format!(
        "MSH|^~\\&|||||{now}||ACK|{}|P|2.5\rMSA|AR||{}\rERR||||E||||{}\r",
        uuid::Uuid::now_v7().simple(),
        dummy.escape(text),
        dummy.escape(text)
    )
}

/// The acknowledgement code (MSA-1) of an ACK, and its text (MSA-3).
pub fn ack_code(ack: &str) -> Result<(String, String), String> {
    let m = Hl7::parse(ack).map_err(|e| format!("the answer is not an HL7 ACK: {e}"))?;
    let code = m
        .get("MSA-1")?
        .ok_or("the answer has no MSA segment with an acknowledgement code")?;
    let text = m.get("MSA-3")?.or(m.get("ERR-8")?).unwrap_or_default();
    Ok((code, text))
}

struct Path {
    segment: String,
    segment_index: usize,
    field: usize,
    repetition: usize,
    component: Option<usize>,
    subcomponent: Option<usize>,
}

impl Path {
    fn parse(path: &str) -> Result<Path, String> {
        let bad = || {
            format!("bad HL7 path `{path}`: write SEG-F, SEG-F.C or SEG-F.C.S, e.g. PID-3.1 or OBX[2]-5")
        };
        let (seg, rest) = path.trim().split_once('-').ok_or_else(bad)?;
        let (segment, segment_index) = index(seg).ok_or_else(bad)?;
        if segment.len() != 3
            || !segment
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        {
            return Err(bad());
        }
        let mut parts = rest.split('.');
        let (field, repetition) = parts.next().and_then(index).ok_or_else(bad)?;
        let field: usize = field.parse().map_err(|_| bad())?;
        let num = |p: Option<&str>| -> Result<Option<usize>, String> {
            p.map(|s| s.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(bad))
                .transpose()
        };
        let component = num(parts.next())?;
        let subcomponent = num(parts.next())?;
        if parts.next().is_some() || field == 0 {
            return Err(bad());
        }
        Ok(Path {
            segment: segment.to_string(),
            segment_index,
            field,
            repetition,
            component,
            subcomponent,
        })
    }
}

/// `NAME[n]` or `NAME` (n = 1).
fn index(s: &str) -> Option<(&str, usize)> {
    match s.split_once('[') {
        None => Some((s, 1)),
        Some((name, rest)) => {
            let n: usize = rest.strip_suffix(']')?.parse().ok()?;
            (n > 0).then_some((name, n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORU: &str =
        "MSH|^~\\&|LAB|GENHOSP|EHR|GENHOSP|20261126063012||ORU^R01^ORU_R01|MSG00042|P|2.5\r\
PID|1||100234^^^GENHOSP^MR~555-44-3333^^^SSA^SS||DOE^JANE^Q||19800101|F\r\
OBR|1|ORD777|FIL888|4548-4^HbA1c^LN\r\
OBX|1|NM|4548-4^HbA1c^LN||6.1|%^percent^UCUM|4.0-5.6|H\r\
OBX|2|TX|NOTE^Comment||Fasting \\T\\ rested\\F\\ see \\X4F4B\\||\r";

    #[test]
    fn a_hex_escape_with_a_character_beyond_ascii_is_kept_as_written() {
        let m = Hl7::parse(
            "MSH|^~\\&|LAB|H|EHR|H|20261126063012||ORU^R01|M1|P|2.5\rOBX|1|TX|N||a\\Xa\u{a0}b\\c\r",
        )
        .unwrap();
        assert_eq!(m.get("OBX-5").unwrap().as_deref(), Some("a\\Xa\u{a0}b\\c"));
    }

    #[test]
    fn reads_fields_components_repetitions_and_escapes() {
        let m = Hl7::parse(ORU).unwrap();
        let g = |p: &str| m.get(p).unwrap();
        assert_eq!(g("MSH-1").as_deref(), Some("|"));
        assert_eq!(g("MSH-2").as_deref(), Some("^~\\&"));
        assert_eq!(g("MSH-9.1").as_deref(), Some("ORU"));
        assert_eq!(g("MSH-9.2").as_deref(), Some("R01"));
        assert_eq!(g("MSH-10").as_deref(), Some("MSG00042"));
        assert_eq!(g("PID-3.1").as_deref(), Some("100234"));
        assert_eq!(g("PID-3[2].1").as_deref(), Some("555-44-3333"));
        assert_eq!(g("PID-3[2].4").as_deref(), Some("SSA"));
        assert_eq!(g("PID-5.2").as_deref(), Some("JANE"));
        assert_eq!(g("PID-5").as_deref(), Some("DOE^JANE^Q"));
        assert_eq!(g("OBX[2]-5").as_deref(), Some("Fasting & rested| see OK"));
        assert_eq!(g("OBX-5").as_deref(), Some("6.1"));
        assert_eq!(g("OBX[3]-5"), None);
        assert_eq!(g("ZZZ-1"), None);
        assert!(m.get("PID3").is_err());
        assert!(m.get("PID-0").is_err());
    }

    #[test]
    fn honours_other_encoding_characters() {
        let m = Hl7::parse("MSH#!@%$#A#B#C#D#20260101##ADT!A01#1#P#2.3\nPID###12!x@y$z\n").unwrap();
        assert_eq!(m.get("MSH-9.2").unwrap().as_deref(), Some("A01"));
        assert_eq!(m.get("PID-3.2").unwrap().as_deref(), Some("x"));
        assert_eq!(m.get("PID-3[2].1.2").unwrap().as_deref(), Some("z"));
    }

    #[test]
    fn maps_to_json() {
        let j = Hl7::parse(ORU).unwrap().to_json();
        assert_eq!(
            j["MSH"][0]["9"],
            serde_json::json!({"1": "ORU", "2": "R01", "3": "ORU_R01"})
        );
        assert_eq!(j["PID"][0]["3"][1]["1"], "555-44-3333");
        assert_eq!(j["OBX"][1]["5"], "Fasting & rested| see OK");
        assert_eq!(j["OBX"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn acks_echo_the_control_id() {
        let m = Hl7::parse(ORU).unwrap();
        let ack = m.ack("AA", "");
        let a = Hl7::parse(&ack).unwrap();
        assert_eq!(a.get("MSA-1").unwrap().as_deref(), Some("AA"));
        assert_eq!(a.get("MSA-2").unwrap().as_deref(), Some("MSG00042"));
        assert_eq!(
            a.get("MSH-3").unwrap().as_deref(),
            Some("EHR"),
            "sender and receiver swap"
        );
        assert_eq!(a.get("MSH-9.2").unwrap().as_deref(), Some("R01"));
        let ae = m.ack("AE", "PID-3 missing | bad");
        assert_eq!(
            ack_code(&ae).unwrap(),
            ("AE".to_string(), "PID-3 missing | bad".to_string())
        );
        let ar = reject_unparsed("not HL7");
        assert_eq!(ack_code(&ar).unwrap().0, "AR");
        assert!(Hl7::parse("hello")
            .unwrap_err()
            .contains("must start with an MSH"));
    }
}
