//! `glm5 serve` on the bundled model, driven by the official `openai` and `anthropic` Python
//! packages (`scripts/e2e_serve.py`). `.ci/run` installs them into `target/e2e-venv`; elsewhere
//! set GLM5_E2E_PYTHON to a Python that has them. Without one the test is skipped, except under
//! CI=true, where it fails.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn openai_and_anthropic_clients_against_glm5_serve() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("GLM5_E2E_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/e2e-venv/bin/python"));
    let usable = python.exists()
        && Command::new(&python)
            .args(["-c", "import openai, anthropic"])
            .status()
            .is_ok_and(|s| s.success());
    if !usable {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} cannot import openai and anthropic; .ci/run installs them",
            python.display()
        );
        eprintln!(
            "skipped: no Python with openai + anthropic at {} (python3 -m venv target/e2e-venv && target/e2e-venv/bin/pip install openai anthropic)",
            python.display()
        );
        return;
    }
    let out = Command::new(&python)
        .arg(root.join("scripts/e2e_serve.py"))
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_glm5"))
        .output()
        .expect("running scripts/e2e_serve.py");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "e2e failed:\n{log}");
    assert!(log.contains("e2e: all checks passed"), "{log}");
}
