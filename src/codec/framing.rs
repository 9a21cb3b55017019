//! Framings: where one message ends and the next begins on a byte stream.
//!
//! - `mllp`: `0x0B message 0x1C 0x0D`, the HL7 Minimal Lower Layer Protocol;
//! - `lines`: one message per line (LF or CR LF);
//! - `length_prefixed`: a 2- or 4-byte big-endian length, then that many bytes;
//! - `delimiter`: messages end with a custom byte sequence (`"\u0003"`, `"<EOM>"`).
//!
//! No frame longer than `max_frame` bytes is ever taken, however TCP splits the bytes, and the
//! decoder never buffers much more than that of one message: a longer one is an error, after
//! which the connection is closed (there is no safe place to resynchronise). Bytes outside
//! MLLP frames are skipped and reported; an MLLP frame cut short by the next start block is
//! reported as broken, and the next frame is read from its start block.
//!
//! [`FrameCodec`] is the framing as a `tokio_util` codec: every TCP reader and writer (inbound
//! TCP, the TCP destination, the TCP enricher) goes through it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt as _;
use serde::Deserialize;
use tokio::io::AsyncRead;
use tokio_util::codec::{Decoder, Encoder, Framed};

#[derive(
    Debug, Clone, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    #[default]
    Mllp,
    Lines,
    LengthPrefixed(LengthPrefix),
    Delimiter(DelimiterOptions),
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LengthPrefix {
    /// 2 or 4.
    pub bytes: u8,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DelimiterOptions {
    /// The bytes that end each message (YAML escapes such as "\u0003" work).
    pub end: String,
}

const SB: u8 = 0x0b;
const EB: [u8; 2] = [0x1c, 0x0d];

/// What the decoder found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Frame(Bytes),
    /// Bytes outside any frame were skipped.
    Skipped(usize),
    /// A frame that never ended properly was dropped, for the reason given.
    Broken(String),
}

/// Why no (more) frames come from a stream.
#[derive(Debug)]
pub enum FrameError {
    /// The bytes broke the framing (a frame over the size limit, say): there is no safe place
    /// to pick up again, so the connection is closed.
    Bad(String),
    /// The other side closed the connection inside a frame, or after bytes outside any.
    Unfinished(String),
    /// The other side closed the connection before a whole frame came (a client waiting for
    /// its answer).
    Closed,
    Io(std::io::Error),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e)
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Bad(e) | FrameError::Unfinished(e) => f.write_str(e),
            FrameError::Closed => f.write_str("the connection closed"),
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// A framing with its size limit as a `tokio_util` codec, for `Framed` streams: inbound TCP
/// reads messages and writes its ACKs through it; the TCP destination and the TCP enricher
/// write their requests and read the answers through it.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    framing: Framing,
    max: usize,
}

impl FrameCodec {
    /// Frames of at most `max` bytes.
    pub fn new(framing: Framing, max: usize) -> Self {
        FrameCodec { framing, max }
    }
}

impl Decoder for FrameCodec {
    type Item = Decoded;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        self.framing.decode(buf, self.max).map_err(FrameError::Bad)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        if let Some(decoded) = self.decode(buf)? {
            return Ok(Some(decoded));
        }
        let problem = self.framing.leftover(buf);
        buf.clear();
        problem.map_or(Ok(None), |p| Err(FrameError::Unfinished(p)))
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        self.framing
            .encode_into(payload, dst)
            .map_err(FrameError::Bad)
    }
}

/// The next whole frame from `framed`: the answer a client waits for. Bytes outside frames
/// and broken frames are passed over.
pub async fn next_frame<T: AsyncRead + Unpin>(
    framed: &mut Framed<T, FrameCodec>,
) -> Result<Bytes, FrameError> {
    loop {
        match framed.next().await {
            Some(Ok(Decoded::Frame(f))) => return Ok(f),
            Some(Ok(Decoded::Skipped(_) | Decoded::Broken(_))) => continue,
            Some(Err(e)) => return Err(e),
            None => return Err(FrameError::Closed),
        }
    }
}

impl Framing {
    pub fn check(&self) -> Result<(), String> {
        match self {
            Framing::LengthPrefixed(p) if p.bytes != 2 && p.bytes != 4 => Err(format!(
                "length_prefixed bytes must be 2 or 4, not {}",
                p.bytes
            )),
            Framing::Delimiter(d) if d.end.is_empty() => Err("the delimiter `end` is empty".into()),
            _ => Ok(()),
        }
    }

    /// Takes the next frame (or a run of skipped bytes) from `buf`, if complete.
    pub fn decode(&self, buf: &mut BytesMut, max: usize) -> Result<Option<Decoded>, String> {
        match self {
            Framing::Mllp => {
                match buf.iter().position(|b| *b == SB) {
                    None => {
                        // Whitespace between frames is common and harmless; anything else is
                        // reported.
                        let n = buf.len();
                        let junk = buf.iter().any(|b| !b.is_ascii_whitespace());
                        buf.clear();
                        return Ok((junk && n > 0).then_some(Decoded::Skipped(n)));
                    }
                    Some(0) => {}
                    Some(i) => {
                        let junk = buf[..i].iter().any(|b| !b.is_ascii_whitespace());
                        buf.advance(i);
                        if junk {
                            return Ok(Some(Decoded::Skipped(i)));
                        }
                    }
                }
                let body = &buf[1..];
                let end = find(body, &EB);
                // A start block before the end block: the frame was cut short (a sender that
                // crashed mid-frame); drop it and read the next one from its start.
                let restart = body[..end.unwrap_or(body.len())]
                    .iter()
                    .position(|b| *b == SB);
                match (end, restart) {
                    (_, Some(at)) => {
                        let broken = at;
                        buf.advance(at + 1);
                        Ok(Some(Decoded::Broken(format!(
                            "an MLLP frame of {broken} bytes had no end block (0x1C 0x0D) before the next start block; it was dropped"
                        ))))
                    }
                    (Some(end), None) if end > max => Err(format!(
                        "an MLLP frame of {end} bytes is larger than max_frame ({max} bytes)"
                    )),
                    (Some(end), None) => {
                        let frame = buf.split_to(end + 3);
                        Ok(Some(Decoded::Frame(frame.freeze().slice(1..end + 1))))
                    }
                    // Past the start block, all but a possible first byte of the end block is
                    // the message.
                    (None, None) if buf.len() > max + 2 => Err(format!(
                        "an MLLP frame is larger than max_frame ({max} bytes)"
                    )),
                    (None, None) => Ok(None),
                }
            }
            Framing::Lines => match buf.iter().position(|b| *b == b'\n') {
                // The line without its LF (and CR): longer than max_frame is refused.
                Some(i) if i - usize::from(i > 0 && buf[i - 1] == b'\r') > max => {
                    Err(format!("a line is longer than max_frame ({max} bytes)"))
                }
                Some(i) => {
                    let mut line = buf.split_to(i + 1);
                    line.truncate(i);
                    if line.last() == Some(&b'\r') {
                        line.truncate(i - 1);
                    }
                    if line.is_empty() {
                        return self.decode(buf, max);
                    }
                    Ok(Some(Decoded::Frame(line.freeze())))
                }
                None if buf.len() > max => {
                    Err(format!("a line is longer than max_frame ({max} bytes)"))
                }
                None => Ok(None),
            },
            Framing::LengthPrefixed(p) => {
                let n = p.bytes as usize;
                if buf.len() < n {
                    return Ok(None);
                }
                let len = if n == 2 {
                    u16::from_be_bytes([buf[0], buf[1]]) as usize
                } else {
                    u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
                };
                if len > max {
                    return Err(format!(
                        "a frame announces {len} bytes, over max_frame ({max} bytes)"
                    ));
                }
                if buf.len() < n + len {
                    return Ok(None);
                }
                buf.advance(n);
                Ok(Some(Decoded::Frame(buf.split_to(len).freeze())))
            }
            Framing::Delimiter(d) => {
                let end = d.end.as_bytes();
                match find(buf, end) {
                    Some(i) if i > max => Err(format!(
                        "a message of {i} bytes is longer than max_frame ({max} bytes)"
                    )),
                    Some(i) => {
                        let frame = buf.split_to(i + end.len());
                        Ok(Some(Decoded::Frame(frame.freeze().slice(..i))))
                    }
                    None if buf.len() > max + end.len() => Err(format!(
                        "a message is longer than max_frame ({max} bytes) without its end delimiter"
                    )),
                    None => Ok(None),
                }
            }
        }
    }

    /// What is wrong with bytes left over when the peer closed the connection.
    pub fn leftover(&self, buf: &BytesMut) -> Option<String> {
        if buf.iter().all(|b| b.is_ascii_whitespace()) {
            return None;
        }
        Some(match self {
            Framing::Mllp if buf.first() == Some(&SB) => format!(
                "the connection closed inside an MLLP frame ({} bytes without the end block 0x1C 0x0D)",
                buf.len() - 1
            ),
            Framing::Mllp => format!("{} bytes outside any MLLP frame", buf.len()),
            _ => format!("the connection closed inside a message ({} bytes without its end)", buf.len()),
        })
    }

    /// Frames one message for the wire.
    pub fn encode(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = BytesMut::with_capacity(payload.len() + 4);
        self.encode_into(payload, &mut out)?;
        Ok(out.to_vec())
    }

    /// Whether this framing can carry `payload`: a line break cannot go in a line, the end
    /// delimiter not in a delimited message, nor more than a 2-byte length in a 2-byte prefix.
    pub fn can_carry(&self, payload: &[u8]) -> Result<(), String> {
        match self {
            Framing::Mllp => Ok(()),
            Framing::Lines if payload.contains(&b'\n') => {
                Err("the message holds a line break, which `lines` framing cannot carry".into())
            }
            Framing::LengthPrefixed(p) if p.bytes == 2 && payload.len() > usize::from(u16::MAX) => {
                Err("the message is over 65,535 bytes, too long for a 2-byte length".into())
            }
            Framing::LengthPrefixed(_) if u32::try_from(payload.len()).is_err() => {
                Err("the message is too long for a 4-byte length".into())
            }
            Framing::Delimiter(d) if find(payload, d.end.as_bytes()).is_some() => {
                Err("the message holds the end delimiter itself".into())
            }
            _ => Ok(()),
        }
    }

    /// Frames one message onto `out`; nothing is written when it cannot be framed.
    pub fn encode_into(&self, payload: &[u8], out: &mut BytesMut) -> Result<(), String> {
        self.can_carry(payload)?;
        out.reserve(payload.len() + 4);
        match self {
            Framing::Mllp => {
                out.put_u8(SB);
                out.extend_from_slice(payload);
                out.extend_from_slice(&EB);
            }
            Framing::Lines => {
                out.extend_from_slice(payload);
                out.put_u8(b'\n');
            }
            Framing::LengthPrefixed(p) => {
                // Checked by `can_carry`.
                if p.bytes == 2 {
                    out.put_u16(payload.len() as u16);
                } else {
                    out.put_u32(payload.len() as u32);
                }
                out.extend_from_slice(payload);
            }
            Framing::Delimiter(d) => {
                out.extend_from_slice(payload);
                out.extend_from_slice(d.end.as_bytes());
            }
        }
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(f: &Framing, input: &[u8], max: usize) -> (Vec<Decoded>, Result<(), String>, BytesMut) {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match f.decode(&mut buf, max) {
                Ok(Some(d)) => out.push(d),
                Ok(None) => return (out, Ok(()), buf),
                Err(e) => return (out, Err(e), buf),
            }
        }
    }

    #[test]
    fn mllp_frames_junk_and_limits() {
        let f = Framing::Mllp;
        let (d, r, rest) = all(
            &f,
            b"\x0bA\x1c\r\r\n\x0bB\x1c\rjunk\x0bC\x1c\r\x0bpartial",
            100,
        );
        assert_eq!(
            d,
            vec![
                Decoded::Frame(Bytes::from_static(b"A")),
                Decoded::Frame(Bytes::from_static(b"B")),
                Decoded::Skipped(4),
                Decoded::Frame(Bytes::from_static(b"C")),
            ]
        );
        assert!(r.is_ok());
        assert!(f.leftover(&rest).unwrap().contains("without the end block"));
        let (_, r, _) = all(&f, &[&[0x0b][..], &[b'x'; 50]].concat(), 10);
        assert!(r.unwrap_err().contains("larger than max_frame"));
        assert_eq!(f.encode(b"A").unwrap(), b"\x0bA\x1c\r");
    }

    /// Feeds `wire` in pieces of `step` bytes, as TCP may split it, decoding after each.
    fn trickled(f: &Framing, wire: &[u8], max: usize, step: usize) -> Result<Vec<Decoded>, String> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(d) = f.decode(&mut buf, max)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    #[test]
    fn max_frame_is_exact_for_every_framing_however_the_bytes_come() {
        let max = 64;
        let framings = [
            Framing::Mllp,
            Framing::Lines,
            Framing::LengthPrefixed(LengthPrefix { bytes: 4 }),
            Framing::Delimiter(DelimiterOptions {
                end: "<EOM>".into(),
            }),
        ];
        for f in &framings {
            let exact = f.encode(&[b'x'; 64]).unwrap();
            let over = f.encode(&[b'x'; 65]).unwrap();
            for step in [1, 2, 3, 7, 64, 65, 66, 67, 1000] {
                let taken = trickled(f, &exact, max, step).unwrap();
                assert_eq!(
                    taken,
                    vec![Decoded::Frame(Bytes::from(vec![b'x'; 64]))],
                    "{f:?} in pieces of {step}"
                );
                let refused = trickled(f, &over, max, step);
                assert!(
                    refused.as_ref().is_err_and(|e| e.contains("max_frame")),
                    "{f:?} in pieces of {step}: {refused:?}"
                );
            }
        }
    }

    #[test]
    fn an_mllp_frame_without_its_end_does_not_swallow_the_next() {
        let wire = b"\x0bMSH|broken, never ended\x0bMSH|good\x1c\r";
        for step in [1, 5, wire.len()] {
            let d = trickled(&Framing::Mllp, wire, 1000, step).unwrap();
            assert_eq!(d.len(), 2, "{d:?}");
            assert!(
                matches!(&d[0], Decoded::Broken(why) if why.contains("no end block")),
                "{d:?}"
            );
            assert_eq!(d[1], Decoded::Frame(Bytes::from_static(b"MSH|good")));
        }
    }

    #[test]
    fn lines_length_prefixed_and_delimiters() {
        let (d, _, _) = all(&Framing::Lines, b"a\r\n\nb\nc", 10);
        assert_eq!(
            d,
            vec![
                Decoded::Frame(Bytes::from_static(b"a")),
                Decoded::Frame(Bytes::from_static(b"b"))
            ]
        );
        let lp = Framing::LengthPrefixed(LengthPrefix { bytes: 2 });
        let wire = [lp.encode(b"hello").unwrap(), lp.encode(b"").unwrap()].concat();
        let (d, _, _) = all(&lp, &wire, 10);
        assert_eq!(
            d,
            vec![
                Decoded::Frame(Bytes::from_static(b"hello")),
                Decoded::Frame(Bytes::new())
            ]
        );
        let (_, r, _) = all(&lp, &[0x00, 0x20], 10);
        assert!(r.unwrap_err().contains("announces 32 bytes"));
        let dl = Framing::Delimiter(DelimiterOptions {
            end: "<EOM>".into(),
        });
        let (d, _, _) = all(&dl, b"one<EOM>two<EOM>", 10);
        assert_eq!(d.len(), 2);
        assert!(Framing::LengthPrefixed(LengthPrefix { bytes: 3 })
            .check()
            .is_err());
    }
}
