//! The one bound on JSON nesting, for the whole system, and the check that enforces it at the edge.
//!
//! Whatever a write accepts, every reader must be able to read: the projections and the Kafka
//! publisher decoding the log, query-api decoding read-model rows, the clients decoding answers that
//! wrap a resource in a page or an audit row. The strictest common decoder is serde_json's, which
//! refuses documents nested more than 128 levels. A request body may therefore nest at most
//! [`MAX_DEPTH`] levels, and the shapes the system wraps an accepted document in (a list page, an
//! audit row's `changes`, an aggregate snapshot) add at most [`WRAPPING_DEPTH`] more; a test holds
//! every reader to that at exactly the limit.
//!
//! [`check`] scans the raw bytes before anything is parsed (so a megabyte of `[` costs a loop, not a
//! stack), and also refuses the NUL character, which PostgreSQL cannot store in `jsonb`. Both answers
//! name the path of the offending value (`workflowData.root.children[0].presentation`).
//!
//! The log's own readers decode `data` with [`from_stored`], which lifts serde_json's limit up to
//! [`STORED_MAX_DEPTH`]: events written before this bound existed (the write side used to accept 256
//! levels) must not stop the projections.

use serde_json::Value;

use crate::aggregate::DomainError;

/// The deepest nesting of objects and arrays a request body may have (the body itself is level 1).
pub const MAX_DEPTH: usize = 100;

/// The most levels any document the system serves or stores adds around an accepted body.
pub const WRAPPING_DEPTH: usize = 28;

/// serde_json's default recursion limit: what an ordinary client or consumer decodes.
pub const DECODER_DEPTH: usize = 128;

const _: () = assert!(MAX_DEPTH + WRAPPING_DEPTH <= DECODER_DEPTH);

/// How deep a stored event's `data` may be for the log's readers: far above anything the API has
/// ever accepted, and shallow enough to decode on a task's stack.
pub const STORED_MAX_DEPTH: usize = 1_024;

/// One open object or array on the way to the current value.
enum Frame {
    Object { key: Option<String> },
    Array { index: usize },
}

/// Refuses a JSON text nested deeper than [`MAX_DEPTH`] or holding a NUL character, naming where.
/// Other syntax errors are left to the parser that reads the text next.
pub fn check(bytes: &[u8]) -> Result<(), DomainError> {
    let mut frames: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let (end, nul) = string_end(bytes, i + 1);
                let expects_key = matches!(frames.last(), Some(Frame::Object { key: None }));
                if expects_key {
                    let key = String::from_utf8_lossy(&bytes[i + 1..end.min(bytes.len())]);
                    if nul {
                        return Err(DomainError::invalid(
                            path(&frames, Some(&key)),
                            "must not contain the NUL character (\\u0000)",
                        ));
                    }
                    if let Some(Frame::Object { key: slot }) = frames.last_mut() {
                        *slot = Some(key.into_owned());
                    }
                } else if nul {
                    return Err(DomainError::invalid(
                        path(&frames, None),
                        "must not contain the NUL character (\\u0000)",
                    ));
                }
                i = end;
            }
            b'{' | b'[' => {
                if frames.len() == MAX_DEPTH {
                    return Err(DomainError::invalid(
                        path(&frames, None),
                        format!(
                            "nests deeper than {MAX_DEPTH} levels of objects and arrays, the most any JSON body may"
                        ),
                    ));
                }
                frames.push(if bytes[i] == b'{' {
                    Frame::Object { key: None }
                } else {
                    Frame::Array { index: 0 }
                });
            }
            b'}' | b']' => {
                frames.pop();
            }
            b',' => match frames.last_mut() {
                Some(Frame::Object { key }) => *key = None,
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The index of the quote closing a string whose content starts at `start`, and whether the string
/// holds an escaped NUL (`\u0000`). A raw NUL byte is invalid JSON and left to the parser.
fn string_end(bytes: &[u8], start: usize) -> (usize, bool) {
    let mut nul = false;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return (i, nul),
            b'\\' => {
                if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000") {
                    nul = true;
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    (bytes.len(), nul)
}

/// The path of the value being read: `a.b[2].c`, with the pending key of the innermost object when
/// the offending value is a key. Long paths keep their start and end.
fn path(frames: &[Frame], key: Option<&str>) -> String {
    let mut parts: Vec<String> = Vec::new();
    for frame in frames {
        match frame {
            Frame::Object { key: Some(key) } => parts.push(format!(".{key}")),
            Frame::Object { key: None } => {}
            Frame::Array { index } => parts.push(format!("[{index}]")),
        }
    }
    if let Some(key) = key {
        parts.push(format!(".{key}"));
    }
    const SHOWN: usize = 12;
    if parts.len() > SHOWN {
        let tail = parts.split_off(parts.len() - SHOWN / 2);
        parts.truncate(SHOWN / 2);
        parts.push(".…".into());
        parts.extend(tail);
    }
    let joined = parts.concat();
    match joined.strip_prefix('.') {
        Some(path) => path.to_owned(),
        None if joined.is_empty() => "body".to_owned(),
        None => format!("body{joined}"),
    }
}

/// The deepest nesting of objects and arrays in a JSON text (brackets inside strings do not count).
pub fn depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = string_end(bytes, i + 1).0,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// Decodes a JSON text the log or a read model holds, up to [`STORED_MAX_DEPTH`] levels deep.
pub fn from_stored(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    use serde::de::{Deserialize, Error};
    if depth(bytes) > STORED_MAX_DEPTH {
        return Err(serde_json::Error::custom(format!(
            "stored JSON nests deeper than {STORED_MAX_DEPTH} levels"
        )));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    // Bounded by the scan above.
    deserializer.disable_recursion_limit();
    let value = Value::deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        // `levels` objects: {"a":{"a":…{}…}}
        let mut text = String::new();
        for _ in 1..levels {
            text.push_str(r#"{"a":"#);
        }
        text.push_str("{}");
        for _ in 1..levels {
            text.push('}');
        }
        text
    }

    fn refused(text: &str) -> (String, String) {
        match check(text.as_bytes()) {
            Err(DomainError::Invalid { field, message }) => (field, message),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn bodies_may_nest_exactly_as_deep_as_the_limit() {
        assert!(check(nested(MAX_DEPTH).as_bytes()).is_ok());
        let (field, message) = refused(&nested(MAX_DEPTH + 1));
        assert!(field.starts_with("a.a.a"), "{field}");
        assert!(field.contains('…'), "{field}");
        assert!(message.contains("100"), "{message}");
        assert_eq!(depth(nested(MAX_DEPTH + 1).as_bytes()), MAX_DEPTH + 1);
    }

    #[test]
    fn the_path_names_keys_and_indices() {
        let mut deep = String::from(r#"{"workflowData": {"root": {"children": [1, "x", "#);
        deep.push_str(&"[".repeat(MAX_DEPTH));
        let (field, _) = refused(&deep);
        assert!(
            field.starts_with("workflowData.root.children[2]"),
            "{field}"
        );
        let (field, _) = refused(&"[".repeat(MAX_DEPTH + 1));
        assert!(field.starts_with("body[0][0]"), "{field}");
    }

    #[test]
    fn nul_characters_are_refused_where_they_are() {
        let (field, message) = refused(r#"{"name": "ok", "description": "a\u0000b"}"#);
        assert_eq!(field, "description");
        assert!(message.contains("NUL"));
        let (field, _) = refused(r#"{"p": {"x": [0, {"k\u0000": 1}]}}"#);
        assert_eq!(field, "p.x[1].k\\u0000");
        // An escaped backslash followed by "u0000" is text, not a NUL.
        assert!(check(br#"{"a": "\\u0000", "b": "[[[{"}"#).is_ok());
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        assert_eq!(depth(br#"{"a": [1, {"b": "[[[{"}]}"#), 3);
        assert_eq!(depth(br#"{"a": "\"[["}"#), 1);
        assert_eq!(depth(b"[[[]]]"), 3);
    }

    #[test]
    fn stored_documents_decode_past_serde_jsons_default_limit() {
        let deep = nested(256);
        assert!(serde_json::from_str::<Value>(&deep).is_err());
        assert!(from_stored(deep.as_bytes()).is_ok());
        assert!(from_stored(nested(STORED_MAX_DEPTH + 1).as_bytes()).is_err());
    }
}
