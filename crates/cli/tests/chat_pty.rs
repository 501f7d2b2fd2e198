//! `glm5 chat` driven through a pseudo-terminal, as a person would use it: two turns with the
//! history kept, Ctrl-C stopping an answer without ending the program, and /exit.
#![cfg(unix)]

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Pty {
    writer: std::fs::File,
    rx: mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Pty {
    /// Read until `pat` appears after position `from` of the transcript; return its end.
    fn expect(&mut self, pat: &str, from: usize, secs: u64) -> usize {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(at) = self.seen[from..].find(pat) {
                return from + at + pat.len();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {pat:?}; transcript:\n{}",
                self.seen
            );
            if let Ok(chunk) = self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                self.seen.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
    }

    fn send(&mut self, s: &str) {
        self.writer.write_all(s.as_bytes()).unwrap();
        self.writer.flush().unwrap();
    }
}

fn spawn_chat(args: &[&str]) -> (std::process::Child, Pty) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds into the provided ints; null name/termios/winsize are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty failed");
    // SAFETY: both fds were just returned by openpty and are owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_glm5"));
    cmd.arg("chat")
        .args(args)
        .env("GLM5_CHAT_STATS", "1")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe; they make the pty the child's
    // controlling terminal so that Ctrl-C written to the master reaches it as SIGINT.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY as _, 0);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let writer = std::fs::File::from(master);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    (
        child,
        Pty {
            writer,
            rx,
            seen: String::new(),
        },
    )
}

/// (prompt tokens, cached tokens) from the stats lines after `from`.
fn prompt_stats(seen: &str, from: usize) -> (usize, usize) {
    let line = seen[from..]
        .lines()
        .find(|l| l.starts_with("prompt: "))
        .unwrap_or_else(|| panic!("no stats line in:\n{}", &seen[from..]));
    let nums: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn chat_two_turns_keep_history() {
    let (mut child, mut pty) =
        spawn_chat(&["--temperature", "0", "--max-tokens", "16", "--no-think"]);
    let at = pty.expect("> ", 0, 60);
    pty.send("In the beginning God created the heaven and the earth.\n");
    let at2 = pty.expect("finish:", at, 60);
    let (p1, _) = prompt_stats(&pty.seen, at);
    let at3 = pty.expect("> ", at2, 30);
    pty.send("And the earth was without form, and void.\n");
    let at4 = pty.expect("finish:", at3, 60);
    let (p2, cached2) = prompt_stats(&pty.seen, at3);
    // The second prompt holds the first exchange, and its start was not recomputed.
    assert!(p2 > p1 + 10, "history lost: {p1} then {p2} prompt tokens");
    assert!(
        cached2 > 0 && cached2 < p2,
        "prefix cache unused: {cached2} of {p2}"
    );
    let at5 = pty.expect("> ", at4, 30);
    pty.send("/reset\n");
    let at6 = pty.expect("(history cleared)", at5, 30);
    let at6 = pty.expect("> ", at6, 30);
    pty.send("/exit\n");
    let status = wait(&mut child, 30);
    assert!(
        status.success(),
        "chat exited with {status}; transcript:\n{}",
        &pty.seen[at6..]
    );
}

#[test]
fn ctrl_c_stops_the_answer_not_the_program() {
    let (mut child, mut pty) = spawn_chat(&[
        "--temperature",
        "0",
        "--max-tokens",
        "1500",
        "--ignore-eos",
        "--no-think",
    ]);
    let at = pty.expect("> ", 0, 60);
    pty.send("And God said\n");
    // Wait for the echo and some answer text, then interrupt.
    let at = pty.expect("And God said", at, 60);
    let at = pty.expect("\n", at, 60);
    std::thread::sleep(Duration::from_millis(300));
    pty.send("\x03");
    let at = pty.expect("(stopped)", at, 60);
    let at = pty.expect("> ", at, 30);
    pty.send("/exit\n");
    let status = wait(&mut child, 30);
    assert!(status.success(), "transcript:\n{}", &pty.seen[at..]);
}

fn wait(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("glm5 chat did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
