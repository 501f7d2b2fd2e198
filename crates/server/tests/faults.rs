//! The server when its engine fails: the request in flight gets a 500 in the API's JSON shape,
//! `/health` says so, and `serve_on` ends with an error instead of keeping a dead port open.

mod common;

use std::time::Duration;

use common::{fake_state, http, limits};
use serde_json::Value;

#[test]
fn a_failed_engine_is_a_500_then_the_server_stops() {
    let state = fake_state(Some(7));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                glm5_server::serve_on(l, state, limits(), std::future::pending()).await
            })
    });
    let (st, _, body) = http(addr, "GET", "/health", &[], "");
    assert_eq!((st, body.as_str()), (200, "ok"));
    let (st, _, body) = http(
        addr,
        "POST",
        "/v1/completions",
        &[],
        r#"{"prompt": [5, 6, 7, 8], "max_tokens": 4}"#,
    );
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(st, 500, "{body}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("engine failed"),
        "{body}"
    );
    // /health turns 503 (or the port is already closed), and serve_on ends with an error.
    if let Ok(mut s) = std::net::TcpStream::connect(addr) {
        use std::io::{Read, Write};
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 503"), "{out}");
    }
    let ended = server.join().unwrap();
    assert!(
        ended.is_err(),
        "serve_on ends with an error once the engine failed"
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the port is closed"
    );
}
