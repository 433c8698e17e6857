//! Server-Sent Events read from a byte stream: the model providers' streamed answers, and the MCP
//! server's reading of a streamed execution (`command-api/mcp`).

/// One Server-Sent Event: its `event` name, if any, and its `data` lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub name: Option<String>,
    pub data: String,
}

/// Splits a byte stream into Server-Sent Events, whatever the chunk boundaries.
#[derive(Default)]
pub struct SseBuffer {
    pending: Vec<u8>,
}

impl SseBuffer {
    /// The events `chunk` completes, in order; the rest waits for the next chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some((end, separator)) = find_blank_line(&self.pending) {
            let block: Vec<u8> = self.pending.drain(..end + separator).collect();
            let block = String::from_utf8_lossy(&block[..end]);
            let mut event = SseEvent {
                name: None,
                data: String::new(),
            };
            let mut has_data = false;
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event.name = Some(value.to_owned()),
                    "data" => {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                    _ => {}
                }
            }
            if has_data {
                events.push(event);
            }
        }
        events
    }
}

/// Where the first event ends (`\n\n` or `\r\n\r\n`), and the separator's length.
fn find_blank_line(bytes: &[u8]) -> Option<(usize, usize)> {
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_whatever_the_chunks() {
        let stream = b"event: message_start\ndata: {\"a\":1}\n\n: comment\n\ndata: x\r\ndata: y\r\n\r\ndata: [DONE]\n\n";
        for size in [1, 3, 7, stream.len()] {
            let mut buffer = SseBuffer::default();
            let events: Vec<SseEvent> = stream.chunks(size).flat_map(|c| buffer.push(c)).collect();
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        name: Some("message_start".into()),
                        data: "{\"a\":1}".into()
                    },
                    SseEvent {
                        name: None,
                        data: "x\ny".into()
                    },
                    SseEvent {
                        name: None,
                        data: "[DONE]".into()
                    },
                ],
                "chunks of {size}"
            );
        }
    }
}
