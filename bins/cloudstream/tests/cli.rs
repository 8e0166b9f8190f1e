//! The binary refuses bad configuration before it listens, naming the key and the file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn run(config: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudstream"))
        .args(["--config"])
        .arg(config)
        .args([
            "--tunnel-addr",
            "127.0.0.1:0",
            "--stream-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("cloudcore.yaml");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn wrong_type_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "modules:\n  cloudStream:\n    enable: true\n    tunnelPort: abc\n",
    );
    let (ok, stdout, stderr) = run(&path);
    assert!(!ok);
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(
        stderr.contains("modules.cloudStream.tunnelPort"),
        "{stderr}"
    );
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
}

#[test]
fn unreadable_certificate_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.crt");
    let path = write(
        dir.path(),
        &format!(
            "modules:\n  cloudStream:\n    enable: true\n    tlsStreamCertFile: {}\n",
            missing.display()
        ),
    );
    let (ok, stdout, stderr) = run(&path);
    assert!(!ok);
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(stderr.contains("modules.cloudStream.tls"), "{stderr}");
    assert!(stderr.contains("cloudcore.yaml"), "{stderr}");
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(&dir.path().join("absent.yaml"));
    assert!(!ok);
    assert!(stderr.contains("absent.yaml"), "{stderr}");
}
