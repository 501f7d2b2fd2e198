//! `glm5 quantize`: an HF folder to a llama.cpp-readable `glm-dsa` GGUF.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{anyhow, Context};
use glm5_model::gguf_write::write_gguf_split;
use glm5_model::Quant;
use indicatif::{ProgressBar, ProgressStyle};

/// `--split-max-size`: bytes, with an optional K, M or G suffix (decimal, as gguf-split).
fn parse_size(s: &str) -> anyhow::Result<u64> {
    let bad = || anyhow!("--split-max-size {s}: expected a size such as 50G or 500M");
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_uppercase()),
        _ => (s, 'B'),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        'B' => 1,
        'K' => 1_000,
        'M' => 1_000_000,
        'G' => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).filter(|&b| b > 0).ok_or_else(bad)
}

pub fn run(
    model: &Path,
    out: &Path,
    ty: &str,
    threads: usize,
    split_max_size: Option<&str>,
    tokenizer: Option<&Path>,
) -> anyhow::Result<()> {
    glm5_kernels::pool::set_threads(threads);
    let max_part = split_max_size.map(parse_size).transpose()?;
    let quant = match Quant::parse(ty) {
        Some(Quant::Reference) | None => {
            return Err(anyhow!(
                "--type {ty}: expected q8_0, q6_k, q5_k_m, q4_k_m, iq4_xs, iq4_nl, bf16, f16 or f32"
            ))
        }
        Some(q) => q,
    };
    for dir in std::iter::once(model).chain(tokenizer) {
        if !dir.is_dir() {
            return Err(anyhow!("{}: not an HF model folder", dir.display()));
        }
    }
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = std::time::Instant::now();
    let parts = write_gguf_split(
        model,
        out,
        quant,
        max_part,
        tokenizer,
        &mut |name, done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(name.to_string());
        },
    );
    bar.finish_and_clear();
    // On an error no partial file is left behind (write_gguf_split removes them).
    let parts = parts.with_context(|| format!("writing {}", out.display()))?;
    let bytes: u64 = parts.iter().map(|p| p.1).sum();
    let name = match parts.as_slice() {
        [(one, _)] => one.display().to_string(),
        [(first, _), ..] => format!("{} ({} parts)", first.display(), parts.len()),
        [] => out.display().to_string(),
    };
    eprintln!(
        "wrote {name} ({}, {:.3} GB) in {:.1}s",
        quant.name(),
        bytes as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
