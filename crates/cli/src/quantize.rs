//! `glm5 quantize`: an HF folder to a llama.cpp-readable `glm-dsa` GGUF.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{anyhow, Context};
use glm5_model::gguf_write::write_gguf;
use glm5_model::Quant;
use indicatif::{ProgressBar, ProgressStyle};

pub fn run(model: &Path, out: &Path, ty: &str, threads: usize) -> anyhow::Result<()> {
    glm5_kernels::pool::set_threads(threads);
    let quant = match Quant::parse(ty) {
        Some(Quant::Reference) | None => {
            return Err(anyhow!(
                "--type {ty}: expected q8_0, q4_k_m, q6_k, bf16, f16 or f32"
            ))
        }
        Some(q) => q,
    };
    if !model.is_dir() {
        return Err(anyhow!("{}: not an HF model folder", model.display()));
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
    let bytes = write_gguf(model, out, quant, &mut |name, done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    });
    bar.finish_and_clear();
    let bytes = match bytes {
        Ok(b) => b,
        Err(e) => {
            // Never leave a partial file that looks like a model.
            let _ = std::fs::remove_file(out);
            return Err(e).with_context(|| format!("writing {}", out.display()));
        }
    };
    eprintln!(
        "wrote {} ({}, {:.3} GB) in {:.1}s",
        out.display(),
        quant.name(),
        bytes as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
