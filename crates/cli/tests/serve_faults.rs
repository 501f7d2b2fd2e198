//! `glm5 serve` as a process: SIGTERM lets a request in flight finish and the process exits 0;
//! the API key comes from a file; a bad key file is one line and exit 2.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_up(port: u16) {
    for _ in 0..300 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("glm5 serve did not come up on {port}");
}

fn request(port: u16, body: &str, key: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[cfg(unix)]
#[test]
fn sigterm_drains_and_the_key_comes_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "s3cret\n").unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_glm5"))
        .args(["serve", "--port", &port.to_string(), "--threads", "2"])
        .arg("--api-key-file")
        .arg(&key_file)
        .args(["--shutdown-timeout", "20"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_up(port);
    let wrong = request(port, r#"{"prompt": "In", "max_tokens": 1}"#, "nope");
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");

    // A streamed request long enough to be in flight when SIGTERM comes.
    let body =
        r#"{"prompt": "In the beginning", "max_tokens": 1500, "stream": true, "temperature": 0}"#;
    let t = std::thread::spawn(move || request(port, body, "s3cret"));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    // SAFETY: sends SIGTERM to the child this test started.
    let term = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(term, 0);
    let out = t.join().unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("\"finish_reason\":\"length\"") || out.contains("\"finish_reason\":\"stop\""),
        "the request in flight finished: {}",
        &out[out.len().saturating_sub(400)..]
    );
    assert!(out.contains("data: [DONE]"));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    // New connections were refused once it stopped.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn an_unreadable_or_empty_key_file_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    for (f, want) in [
        (dir.path().join("missing"), "cannot read"),
        (empty, "holds no key"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_glm5"))
            .args(["serve", "--port", "0", "--api-key-file"])
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("--api-key-file") && err.contains(want),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

/// A GGUF truncated while `serve` reads its weights from the mapping: the process ends with
/// one line naming the file and exit 2, not a bare "Bus error".
#[cfg(unix)]
#[test]
fn a_model_file_truncated_under_the_mapping_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    let bundled =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/glm5-tiny");
    let out = Command::new(env!("CARGO_BIN_EXE_glm5"))
        .args(["quantize", "--type", "q8_0", "--model"])
        .arg(&bundled)
        .arg("--out")
        .arg(&gguf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_glm5"))
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--threads",
            "2",
            "--model",
        ])
        .arg(&gguf)
        .env("GLM5_GGUF_IN_PLACE", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_up(port);
    // Keep the header and metadata, drop the tensor data.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&gguf)
        .unwrap()
        .set_len(200_000)
        .unwrap();
    let _ = request(
        port,
        r#"{"prompt": "In the beginning", "max_tokens": 4}"#,
        "",
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(
        last.contains(gguf.to_str().unwrap())
            && last.contains("changed")
            && last.contains("SIGBUS"),
        "{err}"
    );
}
