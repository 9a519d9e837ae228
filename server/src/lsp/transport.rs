//! A guard in front of the protocol stream. tower-lsp-server stops reading for good after one
//! message it cannot decode (the framed reader ends on its first error), so a single malformed
//! message from a client would end the session. Messages are checked here first: a body that is not
//! a JSON-RPC message is logged and replaced by a notification the server ignores, and broken
//! headers are skipped up to the next `Content-Length`.

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};

/// Bodies larger than this are refused (and skipped) rather than buffered.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// What a malformed message is replaced with (`$/` notifications may be ignored by servers).
const REPLACEMENT: &str = r#"{"jsonrpc":"2.0","method":"$/kenning/malformedMessage","params":null}"#;

/// Returns a reader that yields only well-formed messages from `input`.
pub fn sanitize(input: impl AsyncRead + Unpin + Send + 'static) -> DuplexStream {
    let (reader, mut writer) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let mut input = BufReader::new(input);
        loop {
            let body = match read_message(&mut input).await {
                Ok(Some(body)) => body,
                Ok(None) => return, // end of input: the server sees it too
                Err(problem) => {
                    tracing::warn!("skipped a malformed LSP message: {problem}");
                    REPLACEMENT.as_bytes().to_vec()
                }
            };
            let body = if is_message(&body) {
                body
            } else {
                tracing::warn!("skipped a message that is not JSON-RPC: {}", String::from_utf8_lossy(&body[..body.len().min(200)]));
                REPLACEMENT.as_bytes().to_vec()
            };
            let header = format!("Content-Length: {}\r\n\r\n", body.len());
            if writer.write_all(header.as_bytes()).await.is_err() || writer.write_all(&body).await.is_err() {
                return; // the server is gone
            }
        }
    });
    reader
}

/// Reads one framed message; `Ok(None)` at the end of input, `Err` for a frame that was skipped.
async fn read_message(input: &mut (impl AsyncBufReadExt + Unpin)) -> Result<Option<Vec<u8>>, String> {
    let mut length: Option<usize> = None;
    let mut saw_header = false;
    loop {
        let mut line = Vec::new();
        if input.read_until(b'\n', &mut line).await.map_err(|e| e.to_string())? == 0 {
            return if saw_header { Err("input ended inside a header".into()) } else { Ok(None) };
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            if !saw_header {
                continue; // stray blank line between messages
            }
            break;
        }
        saw_header = true;
        if let Some((name, value)) = text.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok();
        }
    }
    let length = length.ok_or("a header without a valid Content-Length")?;
    if length > MAX_MESSAGE_BYTES {
        // Skip the body without keeping it.
        tokio::io::copy(&mut input.take(length as u64), &mut tokio::io::sink()).await.map_err(|e| e.to_string())?;
        return Err(format!("a message of {length} bytes (limit {MAX_MESSAGE_BYTES})"));
    }
    let mut body = vec![0; length];
    input.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    Ok(Some(body))
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
    async fn a_header_without_length_is_skipped() {
        let out = pass(b"Content-Type: x\r\n\r\n").await;
        assert_eq!(out, format!("Content-Length: {}\r\n\r\n{REPLACEMENT}", REPLACEMENT.len()));
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
}
