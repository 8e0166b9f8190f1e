//! The binary refuses bad configuration before it dials, naming the key and the file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn run(body: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgecore.yaml");
    std::fs::write(&path, body).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edgestream"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_node_name_names_key_and_file() {
    let (ok, stderr) = run("modules:\n  edgeStream:\n    enable: true\n  edged: {}\n");
    assert!(!ok);
    assert!(
        stderr.contains("modules.edged.hostnameOverride"),
        "{stderr}"
    );
    assert!(stderr.contains("edgecore.yaml"), "{stderr}");
}

#[test]
fn wrong_type_names_key_and_file() {
    let (ok, stderr) = run(
        "modules:\n  edgeStream:\n    enable: true\n    handshakeTimeout: soon\n  edged:\n    hostnameOverride: edge-1\n",
    );
    assert!(!ok);
    assert!(
        stderr.contains("modules.edgeStream.handshakeTimeout"),
        "{stderr}"
    );
    assert!(stderr.contains("edgecore.yaml"), "{stderr}");
}

#[test]
fn unreadable_certificate_names_key_and_file() {
    let (ok, stderr) = run(
        "modules:\n  edgeStream:\n    enable: true\n    tlsTunnelCertFile: /nonexistent/edge.crt\n  edged:\n    hostnameOverride: edge-1\n",
    );
    assert!(!ok);
    assert!(stderr.contains("modules.edgeStream.tlsTunnel"), "{stderr}");
    assert!(stderr.contains("edgecore.yaml"), "{stderr}");
}
