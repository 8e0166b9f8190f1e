//! Checks of single setting values that both binaries use: each says what is wrong with a
//! value, and [`crate::setting`] puts the key and the file, or the flag, in front.
//!
//! How this fits: a declaration in [`crate::settings!`] names its check (`check: check::port`);
//! every value a file or a flag sets passes through it before anything starts. Defaults are not
//! checked. The messages are the ones operators already see, so they are kept word for word.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::tether_file::MIN_STREAM_WINDOW;

/// A port number from 1 to 65535.
pub fn port(port: &u16) -> Result<(), String> {
    if *port == 0 {
        Err("expected a port number from 1 to 65535, found 0".to_owned())
    } else {
        Ok(())
    }
}

/// A duration longer than zero.
pub fn positive(duration: &Duration) -> Result<(), String> {
    if duration.is_zero() {
        Err("must be longer than zero".to_owned())
    } else {
        Ok(())
    }
}

/// KubeEdge's whole seconds, at least 1.
pub fn whole_seconds(duration: &Duration) -> Result<(), String> {
    if duration.is_zero() {
        Err("expected a whole number of seconds (at least 1), found 0".to_owned())
    } else {
        Ok(())
    }
}

/// A count of at least 1.
pub fn at_least_one<N: Copy + PartialEq + From<u8>>(count: &N) -> Result<(), String> {
    if *count == N::from(0) {
        Err("must be at least 1".to_owned())
    } else {
        Ok(())
    }
}

/// A number greater than zero (and finite).
pub fn greater_than_zero(number: &f32) -> Result<(), String> {
    if number.is_finite() && *number > 0.0 {
        Ok(())
    } else {
        Err(format!("must be a number greater than 0, found {number}"))
    }
}

/// A file path: not empty.
pub fn file_path(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        Err("expected a file path, found an empty string".to_owned())
    } else {
        Ok(())
    }
}

/// A per-stream window the session accepts.
pub fn stream_window(window: &u32) -> Result<(), String> {
    if *window < MIN_STREAM_WINDOW {
        Err(format!("must be at least {MIN_STREAM_WINDOW} bytes"))
    } else {
        Ok(())
    }
}

/// A DATA payload size from 1 byte to KubeEdge's limit.
pub fn data_chunk(chunk: &usize) -> Result<(), String> {
    if *chunk == 0 || *chunk > stream_proto::MAX_DATA_LEN {
        Err(format!(
            "must be from 1 to {} bytes",
            stream_proto::MAX_DATA_LEN
        ))
    } else {
        Ok(())
    }
}

/// Parses a tracing filter (`RUST_LOG` syntax, e.g. `info,tunnel_session=debug`) as both
/// binaries install it.
///
/// Two departures from `EnvFilter::try_new`, both for input an operator controls but a typo
/// can still make hostile:
/// - Each comma-separated directive is trimmed first (`EnvFilter` trims them too, so nothing
///   changes in meaning): tracing-subscriber 0.3.23 slices an untrimmed directive at offsets
///   it found in the trimmed one, and panics when whitespace before a directive is followed
///   by a multi-byte character.
/// - Span field values match literally, not as regular expressions: a field pattern is
///   compiled to a DFA, and a short one can take seconds and hundreds of MiB to build.
///
/// Both were found by the `config_tether` fuzz target.
pub fn parse_log_filter(
    filter: &str,
) -> Result<tracing_subscriber::EnvFilter, tracing_subscriber::filter::ParseError> {
    let tidy = filter
        .split(',')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(",");
    tracing_subscriber::EnvFilter::builder()
        .with_regex(false)
        .parse(tidy)
}

/// A tracing filter, e.g. `info` or `info,tunnel_session=debug` (see [`parse_log_filter`]).
pub fn log_filter(level: &str) -> Result<(), String> {
    parse_log_filter(level).map(|_| ()).map_err(|e| {
        format!("not a log filter ({e}); e.g. \"info\" or \"info,tunnel_session=debug\"")
    })
}

/// An IP address, or nothing (empty or blank: not set).
pub fn ip_or_empty(text: &str) -> Result<(), String> {
    let text = text.trim();
    if text.is_empty() || text.parse::<IpAddr>().is_ok() {
        Ok(())
    } else {
        Err(format!("expected an IP address, found {text:?}"))
    }
}

/// The URL of an HTTP(S) server, e.g. `https://10.0.0.1:6443`: a scheme of `http` or `https`
/// and a host.
pub fn http_url(text: &str) -> Result<(), String> {
    let wrong = |why: &str| format!("expected an http:// or https:// URL, found {text:?} ({why})");
    let uri: http::Uri = text.parse().map_err(|e| wrong(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(wrong(&format!("scheme {other:?}"))),
        None => return Err(wrong("no scheme")),
    }
    match uri.host() {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(wrong("no host")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn each_check_accepts_the_good_and_says_what_is_wrong_with_the_bad() {
        port(&1).unwrap();
        assert_eq!(
            port(&0).unwrap_err(),
            "expected a port number from 1 to 65535, found 0"
        );
        positive(&Duration::from_millis(1)).unwrap();
        assert_eq!(
            positive(&Duration::ZERO).unwrap_err(),
            "must be longer than zero"
        );
        whole_seconds(&Duration::from_secs(1)).unwrap();
        assert!(whole_seconds(&Duration::ZERO).is_err());
        at_least_one(&1usize).unwrap();
        assert_eq!(at_least_one(&0u32).unwrap_err(), "must be at least 1");
        greater_than_zero(&0.5).unwrap();
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(greater_than_zero(&bad).is_err(), "{bad}");
        }
        file_path(Path::new("/a")).unwrap();
        assert_eq!(
            file_path(Path::new("")).unwrap_err(),
            "expected a file path, found an empty string"
        );
        stream_window(&1024).unwrap();
        assert_eq!(
            stream_window(&1023).unwrap_err(),
            "must be at least 1024 bytes"
        );
        data_chunk(&stream_proto::MAX_DATA_LEN).unwrap();
        assert!(data_chunk(&0).is_err());
        assert!(data_chunk(&(stream_proto::MAX_DATA_LEN + 1)).is_err());
        log_filter("info,tunnel_session=debug").unwrap();
        log_filter("info, tunnel_session=debug ").unwrap();
        // Whitespace before a directive with a multi-byte character made tracing-subscriber
        // panic (fuzz find); it is an error, or accepted, never a panic.
        for odd in [
            " \u{26d0}",
            "info, x\u{26d0}[",
            "  #\u{26d0}#=debug",
            "\u{a0}\u{26d0}",
        ] {
            let _ = log_filter(odd);
        }
        assert!(
            log_filter("=[")
                .unwrap_err()
                .starts_with("not a log filter")
        );
        for good in ["", "  ", "10.0.0.1", " fd00::1 "] {
            ip_or_empty(good).unwrap();
        }
        assert_eq!(
            ip_or_empty("10.0.0.300").unwrap_err(),
            "expected an IP address, found \"10.0.0.300\""
        );
    }

    #[test]
    fn api_server_urls_are_http_or_https_with_a_host() {
        for good in [
            "https://10.0.0.1:6443",
            "http://127.0.0.1:8080",
            "https://kubernetes.default.svc",
            "https://api.example.com/prefix",
            "https://[fd00::1]:6443",
        ] {
            http_url(good).unwrap();
        }
        for bad in [
            "",
            "10.0.0.1:6443",
            "ftp://10.0.0.1",
            "https://",
            "/just/a/path",
            "https://bad host",
        ] {
            let problem = http_url(bad).unwrap_err();
            assert!(
                problem.starts_with("expected an http:// or https:// URL"),
                "{bad:?}: {problem}"
            );
        }
    }

    #[test]
    fn a_span_field_pattern_is_matched_literally_not_compiled() {
        // As a regular expression this takes minutes and GiBs to turn into a DFA (16 dots
        // took 6 s, each one more doubles it); literally it is a string compare.
        let filter = format!("x[s{{f=.*a{}}}]=debug", ".".repeat(40));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(parse_log_filter(&filter).is_ok());
        });
        let parsed = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("parsing the filter hung");
        assert!(parsed);
    }
}
