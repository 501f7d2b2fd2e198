//! The chat page at `/` in headless Chromium (`scripts/chat_page_test.py`: a message streams in,
//! reasoning is folded, Stop cancels). Needs Debian's chromium and chromium-driver; skipped
//! where they are not installed.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn the_chat_page_streams_an_answer_in_headless_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    if !Path::new("/usr/bin/chromium").exists() || !Path::new("/usr/bin/chromedriver").exists() {
        eprintln!("skipped: no /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)");
        return;
    }
    let out = Command::new("python3")
        .arg(root.join("scripts/chat_page_test.py"))
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_glm5"))
        .output()
        .expect("running scripts/chat_page_test.py");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "chat page test failed:\n{log}");
    assert!(log.contains("chat page: all checks passed"), "{log}");
}
