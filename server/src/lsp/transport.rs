//! A guard in front of the protocol stream. tower-lsp-server stops reading for good after one
//! message it cannot decode (the framed reader ends on its first error), so a single malformed
//! message from a client would end the session. Messages are checked here first: a body that is not
//! a JSON-RPC message is logged and replaced by a notification the server ignores.
//!
//! Framing resynchronizes on the next `Content-Length: N` header line: a body sent without a
//! header, a header without a length, or a body shorter than its length loses that message and no
//! other. A header line cannot occur inside a JSON body (raw line breaks are not allowed in JSON
//! strings, and `Content-Length` is no JSON token), so finding one inside a body proves the body
//! was cut short.
//!
//! A body that is JSON and looks like a request (it has an `id` and no `result`/`error`) but is not
//! a valid one — an id that is a fraction, an object or a boolean, a method that is no string,
//! params that are a number — is answered, as JSON-RPC requires: it is rewritten into a request for
//! [`INVALID_REQUEST`] (with its id, or `null` when the id itself is the problem), which the server
//! answers with an `InvalidRequest` (-32600) error naming the problem.

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Bodies larger than this are refused (and skipped) rather than buffered.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// What a malformed message is replaced with (`$/` notifications may be ignored by servers).
const REPLACEMENT: &str = r#"{"jsonrpc":"2.0","method":"$/kenning/malformedMessage","params":null}"#;

/// The method a request that is not a valid JSON-RPC request is rewritten into; its params are
/// [`InvalidRequestParams`], and the server answers it with an `InvalidRequest` error.
pub const INVALID_REQUEST: &str = "kenning/invalidRequest";

/// Params of an [`INVALID_REQUEST`] request.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct InvalidRequestParams {
    /// What was wrong with the request, for a person.
    pub problem: String,
}

/// Returns a reader that yields only well-formed messages from `input`.
pub fn sanitize(mut input: impl AsyncRead + Unpin + Send + 'static) -> DuplexStream {
    let (reader, mut writer) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let mut framer = Framer::default();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while let Some(frame) = framer.next() {
                let body = match frame {
                    Ok(body) if is_message(&body) => body,
                    Ok(body) => match invalid_request(&body) {
                        Some(answerable) => {
                            tracing::warn!("an invalid request: {}", String::from_utf8_lossy(&body[..body.len().min(200)]));
                            answerable.into_bytes()
                        }
                        None => {
                            tracing::warn!("skipped a message that is not JSON-RPC: {}", String::from_utf8_lossy(&body[..body.len().min(200)]));
                            REPLACEMENT.as_bytes().to_vec()
                        }
                    },
                    Err(problem) => {
                        tracing::warn!("skipped a malformed LSP message: {problem}");
                        REPLACEMENT.as_bytes().to_vec()
                    }
                };
                let header = format!("Content-Length: {}\r\n\r\n", body.len());
                if writer.write_all(header.as_bytes()).await.is_err() || writer.write_all(&body).await.is_err() {
                    return; // the server is gone
                }
            }
            match input.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    if let Some(problem) = framer.finish() {
                        tracing::warn!("input ended inside a message: {problem}");
                    }
                    return; // end of input: the server sees it too
                }
                Ok(n) => framer.push(&chunk[..n]),
            }
        }
    });
    reader
}

/// Cuts a byte stream into message bodies. Pure: bytes in, frames out.
#[derive(Debug, Default)]
struct Framer {
    buf: Vec<u8>,
    /// Bytes of an oversized body still to be skipped.
    skipping: usize,
}

/// Where the next `Content-Length: <digits>` header line starts in `bytes`, if a whole one is
/// there (the line break after the digits included).
fn find_length_header(bytes: &[u8]) -> Option<usize> {
    const NAME: &[u8] = b"content-length:";
    let mut from = 0;
    while let Some(at) = bytes[from..].windows(NAME.len()).position(|w| w.eq_ignore_ascii_case(NAME)).map(|i| from + i) {
        let rest = &bytes[at + NAME.len()..];
        let spaces = rest.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
        let digits = rest[spaces..].iter().take_while(|b| b.is_ascii_digit()).count();
        let after = &rest[spaces + digits..];
        if digits > 0 && (after.starts_with(b"\r\n") || after.starts_with(b"\n")) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Whether `bytes` are header lines only (`Name: value`, each ended by a line break).
fn only_header_lines(bytes: &[u8]) -> bool {
    bytes.split_inclusive(|b| *b == b'\n').all(|line| {
        line.ends_with(b"\n") && line.iter().position(|b| *b == b':').is_some_and(|c| c > 0 && line[..c].iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-'))
    })
}

impl Framer {
    fn push(&mut self, bytes: &[u8]) {
        let skip = self.skipping.min(bytes.len());
        self.skipping -= skip;
        self.buf.extend_from_slice(&bytes[skip..]);
    }

    /// The next body, or the problem with what had to be skipped; `None` until more bytes come.
    fn next(&mut self) -> Option<Result<Vec<u8>, String>> {
        if self.skipping > 0 {
            return None;
        }
        let Some(at) = find_length_header(&self.buf) else {
            // No header yet. Text before one that is neither blank nor headers is lost: keep
            // only a tail that could be the start of a header.
            let keep = self.buf.len().min(64);
            let cut = self.buf.len() - keep;
            let dropped: Vec<u8> = self.buf.drain(..cut).collect();
            if dropped.iter().any(|b| !b.is_ascii_whitespace()) && !only_header_lines(&dropped) {
                return Some(Err(format!("{} bytes without a Content-Length header", dropped.len())));
            }
            return None;
        };
        let before = &self.buf[..at];
        if !before.iter().all(u8::is_ascii_whitespace) && !only_header_lines(before) {
            let n = at;
            self.buf.drain(..at);
            return Some(Err(format!("{n} bytes without a Content-Length header")));
        }
        // The header block ends at the first blank line after the length header.
        let rel = &self.buf[at..];
        let (end, blank) = match (find(rel, b"\r\n\r\n"), find(rel, b"\n\n")) {
            (Some(a), Some(b)) if b < a => (b, 2),
            (Some(a), _) => (a, 4),
            (None, Some(b)) => (b, 2),
            (None, None) => return None,
        };
        let headers = String::from_utf8_lossy(&rel[..end]).into_owned();
        let body_start = at + end + blank;
        let length: usize = headers
            .lines()
            .find_map(|l| l.split_once(':').filter(|(n, _)| n.trim().eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().to_owned()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX);
        if length > MAX_MESSAGE_BYTES {
            // Skip the body without keeping it (an unparsable length skips nothing more).
            let skip = if length == usize::MAX { 0 } else { length };
            let now = skip.min(self.buf.len() - body_start);
            self.buf.drain(..body_start + now);
            self.skipping = skip - now;
            return Some(Err(if skip == 0 { "a header without a valid Content-Length".to_owned() } else { format!("a message of {length} bytes (limit {MAX_MESSAGE_BYTES})") }));
        }
        let body = &self.buf[body_start..(body_start + length).min(self.buf.len())];
        // A header inside the body: this body was shorter than its length. Resynchronize there.
        if let Some(inner) = find_length_header(body) {
            let declared = length;
            self.buf.drain(..body_start + inner);
            return Some(Err(format!("a body shorter than its Content-Length ({declared})")));
        }
        if self.buf.len() < body_start + length {
            return None;
        }
        let body = &self.buf[body_start..body_start + length];
        // Not a message, and the start of a header inside it: the declared length ran into the
        // next message, whose header is cut off at the body's end. Resynchronize there.
        if !is_message(body)
            && let Some(inner) = header_start_inside(body)
        {
            self.buf.drain(..body_start + inner);
            return Some(Err(format!("a body that runs into the next message (Content-Length {length})")));
        }
        let body = body.to_vec();
        self.buf.drain(..body_start + length);
        Some(Ok(body))
    }

    /// At the end of input: what was left unfinished, if anything.
    fn finish(&mut self) -> Option<String> {
        let left = std::mem::take(&mut self.buf);
        (left.iter().any(|b| !b.is_ascii_whitespace())).then(|| format!("{} bytes of an unfinished message", left.len()))
    }
}

/// Where a `Content-Length:` header (or, at the end, the start of one) begins inside `body`, at a
/// line start or right after a JSON body's closing brace; never at 0.
fn header_start_inside(body: &[u8]) -> Option<usize> {
    const NAME: &[u8] = b"content-length:";
    (1..body.len()).find(|&i| {
        let rest = &body[i..];
        let n = rest.len().min(NAME.len());
        matches!(body[i - 1], b'\n' | b'}' | b']') && rest[..n].eq_ignore_ascii_case(&NAME[..n])
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether `body` is something tower-lsp-server can decode: a JSON-RPC 2.0 request, notification
/// or response.
fn is_message(body: &[u8]) -> bool {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else { return false };
    if map.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return false;
    }
    let id_ok = map.get("id").is_none_or(|id| id.is_string() || id.is_i64() || id.is_u64() || id.is_null());
    let method_ok = map.get("method").is_none_or(Value::is_string);
    let params_ok = map.get("params").is_none_or(|p| p.is_object() || p.is_array() || p.is_null());
    let shape = map.contains_key("method") || (map.contains_key("id") && (map.contains_key("result") || map.contains_key("error")));
    id_ok && method_ok && params_ok && shape
}

/// For a body that is JSON, request-shaped (an `id`, no `result` or `error`) and not a valid
/// request: the [`INVALID_REQUEST`] request that stands in for it, with its id when that is valid,
/// else `null`. `None` for anything else (not JSON, a notification, a response).
fn invalid_request(body: &[u8]) -> Option<String> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else { return None };
    let id = map.get("id")?;
    if map.contains_key("result") || map.contains_key("error") {
        return None;
    }
    let id_ok = id.is_string() || id.is_i64() || id.is_u64() || id.is_null();
    let problem = if !id_ok {
        format!("the id {id} is not a string, an integer or null")
    } else if map.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        "\"jsonrpc\" is not \"2.0\"".to_owned()
    } else if !map.get("method").is_some_and(Value::is_string) {
        "\"method\" is missing or not a string".to_owned()
    } else {
        "\"params\" is not an object or an array".to_owned()
    };
    let id = if id_ok { id.clone() } else { Value::Null };
    let request = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": INVALID_REQUEST, "params": InvalidRequestParams { problem }});
    Some(request.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pass(input: &'static [u8]) -> String {
        let mut out = String::new();
        sanitize(input).read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn good_messages_pass_and_bad_ones_are_replaced() {
        let good = r#"{"jsonrpc":"2.0","id":1,"method":"shutdown"}"#;
        let input = format!("Content-Length: 12\r\n\r\n{{not json!!}}Content-Length: {}\r\n\r\n{good}", good.len());
        let out = pass(Box::leak(input.into_bytes().into_boxed_slice())).await;
        let expected = format!("Content-Length: {}\r\n\r\n{REPLACEMENT}Content-Length: {}\r\n\r\n{good}", REPLACEMENT.len(), good.len());
        assert_eq!(out, expected);
    }

    #[tokio::test]
    async fn a_header_without_length_reaches_nothing() {
        assert_eq!(pass(b"Content-Type: x\r\n\r\n").await, "");
    }

    fn framed(body: &str) -> String {
        format!("Content-Length: {}\r\n\r\n{body}", body.len())
    }

    const PING: &str = r#"{"jsonrpc":"2.0","id":7,"method":"kenning/ping"}"#;

    #[tokio::test]
    async fn a_body_without_a_header_loses_only_itself() {
        let input = format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\"}}{}", framed(PING));
        let out = pass(Box::leak(input.into_bytes().into_boxed_slice())).await;
        assert_eq!(out, framed(REPLACEMENT) + &framed(PING));
    }

    #[tokio::test]
    async fn a_header_without_a_length_then_a_body_loses_only_that_message() {
        let input = format!("Content-Type: x\r\n\r\n{{\"jsonrpc\":\"2.0\",\"method\":\"y\"}}{}", framed(PING));
        let out = pass(Box::leak(input.into_bytes().into_boxed_slice())).await;
        assert!(out.ends_with(&framed(PING)), "{out}");
    }

    #[tokio::test]
    async fn a_body_shorter_than_its_length_loses_only_itself() {
        // Declared 500 bytes, sent 20: the next message's header is found inside the "body".
        let input = format!("Content-Length: 500\r\n\r\n{{\"jsonrpc\":\"2.0\"}}{}", framed(PING));
        let out = pass(Box::leak(input.into_bytes().into_boxed_slice())).await;
        assert_eq!(out, framed(REPLACEMENT) + &framed(PING));
    }

    #[test]
    fn a_body_may_mention_content_length_and_arrive_in_pieces() {
        // A document about HTTP inside a didOpen: quoted, so no raw line break follows the digits.
        let body = r#"{"jsonrpc":"2.0","method":"textDocument/didOpen","params":{"text":"Content-Length: 12\r\n"}}"#;
        let whole = framed(body) + &framed(PING);
        let mut framer = Framer::default();
        let mut out = Vec::new();
        for byte in whole.as_bytes() {
            framer.push(std::slice::from_ref(byte));
            while let Some(frame) = framer.next() {
                out.push(frame.unwrap());
            }
        }
        assert_eq!(out, vec![body.as_bytes().to_vec(), PING.as_bytes().to_vec()]);
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn invalid_requests_become_requests_the_server_answers() {
        let stand_in = |body: &str| invalid_request(body.as_bytes()).map(|s| serde_json::from_str::<Value>(&s).unwrap());
        let bad_id = stand_in(r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#).unwrap();
        assert_eq!(bad_id["id"], Value::Null);
        assert_eq!(bad_id["method"], INVALID_REQUEST);
        assert!(bad_id["params"]["problem"].as_str().unwrap().contains("1.5"), "{bad_id}");
        assert_eq!(stand_in(r#"{"jsonrpc":"2.0","id":{"a":1},"method":"x"}"#).unwrap()["id"], Value::Null);
        let bad_params = stand_in(r#"{"jsonrpc":"2.0","id":"q","method":"x","params":3}"#).unwrap();
        assert_eq!(bad_params["id"], "q", "a valid id is kept");
        assert!(bad_params["params"]["problem"].as_str().unwrap().contains("params"), "{bad_params}");
        assert_eq!(stand_in(r#"{"jsonrpc":"2.0","id":3,"method":7}"#).unwrap()["id"], 3);
        assert_eq!(stand_in(r#"{"jsonrpc":"1.0","id":4,"method":"x"}"#).unwrap()["id"], 4);
        // Not requests: a notification, a response, not JSON.
        assert!(stand_in(r#"{"jsonrpc":"2.0","method":"x","params":3}"#).is_none());
        assert!(stand_in(r#"{"jsonrpc":"2.0","id":1.5,"result":null}"#).is_none());
        assert!(invalid_request(b"{not json").is_none());
    }

    #[test]
    fn message_shapes() {
        assert!(is_message(br#"{"jsonrpc":"2.0","method":"initialized","params":{}}"#));
        assert!(is_message(br#"{"jsonrpc":"2.0","id":"a","result":null}"#));
        assert!(!is_message(br#"{"jsonrpc":"1.0","method":"x"}"#));
        assert!(!is_message(br#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#));
        assert!(!is_message(br#"{"jsonrpc":"2.0","method":"x","params":3}"#));
        assert!(!is_message(br#"[1,2]"#));
        assert!(!is_message(b"\xff\xfe"));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]
            /// Whatever bytes come first, in whatever pieces, a well-formed message after them is
            /// delivered whole, and nothing panics.
            #[test]
            fn a_good_message_after_any_garbage_gets_through(
                garbage in proptest::collection::vec(any::<u8>(), 0..600),
                header_like in proptest::option::of(0usize..3),
                cuts in proptest::collection::vec(1usize..97, 1..20),
            ) {
                let mut garbage = garbage;
                if let Some(kind) = header_like {
                    let piece: &[u8] = [&b"Content-Length: 99999\r\n\r\n"[..], b"Content-Length: 12\r\n\r\n{}", b"Content-Type: x\r\n\r\n"][kind];
                    garbage.extend_from_slice(piece);
                }
                let body = br#"{"jsonrpc":"2.0","id":42,"method":"kenning/ping"}"#;
                // A newline ends the garbage: a header line starts at a line's beginning.
                let mut input = garbage.clone();
                input.extend_from_slice(b"\r\n");
                input.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                input.extend_from_slice(body);
                let mut framer = Framer::default();
                let mut frames = Vec::new();
                let mut at = 0;
                for cut in cuts.iter().cycle() {
                    if at >= input.len() {
                        break;
                    }
                    let end = (at + cut).min(input.len());
                    framer.push(&input[at..end]);
                    at = end;
                    while let Some(frame) = framer.next() {
                        frames.push(frame);
                    }
                }
                prop_assert!(frames.iter().any(|f| f.as_deref() == Ok(&body[..])), "{frames:?}");
            }
        }
    }
}
