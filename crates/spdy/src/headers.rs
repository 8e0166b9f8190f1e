//! [`Headers`]: the name/value block carried by SYN_STREAM, SYN_REPLY and HEADERS.
//!
//! On the wire a block is a list of unique lowercase names, each with one value or several
//! values joined by NUL bytes. Go's `moby/spdystream` reads it into an `http.Header` and
//! rejects uppercase or repeated names, so this type keeps entries as `(name, value)` pairs in
//! insertion order, lowercases names as they are added, and the encoder merges repeated names
//! into one NUL-joined value. Lookups ignore ASCII case, as Go's `Header.Get` does.

/// An ordered list of header entries; a name may appear several times (one value each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// An empty block.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Adds `name: value` (name lowercased) and returns the block, for building literals.
    pub fn with(mut self, name: impl AsRef<str>, value: impl Into<String>) -> Self {
        self.append(name, value);
        self
    }

    /// Adds one value for `name` (lowercased), keeping values already present.
    pub fn append(&mut self, name: impl AsRef<str>, value: impl Into<String>) {
        self.entries
            .push((name.as_ref().to_ascii_lowercase(), value.into()));
    }

    /// Replaces every value of `name` with `value`.
    pub fn insert(&mut self, name: impl AsRef<str>, value: impl Into<String>) {
        let name = name.as_ref().to_ascii_lowercase();
        self.entries.retain(|(n, _)| *n != name);
        self.entries.push((name, value.into()));
    }

    /// The first value of `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` in order (ASCII case-insensitive).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of entries (a name with two values counts twice).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries grouped by name in first-appearance order: what goes on the wire.
    pub(crate) fn grouped(&self) -> Vec<(&str, Vec<&str>)> {
        let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
        for (name, value) in &self.entries {
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, values)) => values.push(value),
                None => out.push((name, vec![value])),
            }
        }
        out
    }

    /// Adds an entry whose name is already known to be lowercase (decoder use).
    pub(crate) fn push_raw(&mut self, name: String, value: String) {
        self.entries.push((name, value));
    }
}

impl<N: AsRef<str>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<T: IntoIterator<Item = (N, V)>>(iter: T) -> Self {
        let mut h = Headers::new();
        for (n, v) in iter {
            h.append(n, v);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercased_and_lookups_ignore_case() {
        let mut h = Headers::new()
            .with("streamType", "error")
            .with("Port", "80");
        assert_eq!(h.get("STREAMTYPE"), Some("error"));
        assert_eq!(h.iter().next(), Some(("streamtype", "error")));
        h.append("port", "81");
        assert_eq!(h.get_all("port").collect::<Vec<_>>(), ["80", "81"]);
        h.insert("PORT", "82");
        assert_eq!(h.get_all("port").collect::<Vec<_>>(), ["82"]);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn grouping_keeps_first_appearance_order() {
        let h: Headers = [("b", "1"), ("a", "2"), ("b", "3")].into_iter().collect();
        assert_eq!(h.grouped(), vec![("b", vec!["1", "3"]), ("a", vec!["2"])]);
    }
}
