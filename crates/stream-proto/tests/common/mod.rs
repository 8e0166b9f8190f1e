//! Reads `vectors/kubeedge-messages.txt`, the captures from stock KubeEdge.

use std::path::Path;

/// One captured message.
pub struct Vector {
    /// The block's title line, after `== `.
    pub title: String,
    /// The whole websocket message payload.
    pub payload: Vec<u8>,
}

/// Parses the vector file: a block starts with `== `, hex lines follow until a `text:` line
/// (or the next block, or a blank line); `#` lines are comments.
pub fn kubeedge_vectors() -> Vec<Vector> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/kubeedge-messages.txt");
    let text = std::fs::read_to_string(&path).expect("read vector file");
    let mut vectors: Vec<Vector> = Vec::new();
    let mut in_hex = false;
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("== ") {
            vectors.push(Vector {
                title: title.to_owned(),
                payload: Vec::new(),
            });
            in_hex = true;
        } else if line.starts_with("text:") || line.trim().is_empty() {
            in_hex = false;
        } else if in_hex {
            let current = vectors.last_mut().expect("hex before first block");
            current.payload.extend(decode_hex(line.trim()));
        }
    }
    // Every title states the payload length; check we read exactly that much.
    for v in &vectors {
        let stated: usize = v
            .title
            .rsplit(", ")
            .next()
            .and_then(|s| s.strip_suffix(" bytes"))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no length in title {:?}", v.title));
        assert_eq!(v.payload.len(), stated, "{}", v.title);
    }
    assert!(vectors.len() >= 10, "vector file looks truncated");
    vectors
}

fn decode_hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex line {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// The `<TYPE> connect-id <n>` at the start of a block title.
pub fn title_type_and_id(title: &str) -> (&str, u64) {
    let mut words = title.split_whitespace();
    let kind = words.next().expect("type in title");
    assert_eq!(words.next(), Some("connect-id"), "{title}");
    let id = words
        .next()
        .and_then(|w| w.trim_end_matches(',').parse().ok())
        .expect("connect id in title");
    (kind, id)
}
