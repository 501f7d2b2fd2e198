//! `glm5 synth`.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use glm5_model::synth::{planned_bytes, write_checkpoint, SynthDType, SynthOptions};
use glm5_model::Config;
use indicatif::{ProgressBar, ProgressStyle};

use crate::DTypeArg;

pub fn run(
    config: &Path,
    out: &Path,
    seed: u64,
    dtype: DTypeArg,
    shard_mib: u64,
) -> anyhow::Result<()> {
    let json = glm5_format::read_json(config)?;
    let cfg = Config::from_json(&json, config)?;
    let dtype = match dtype {
        DTypeArg::Bf16 => SynthDType::Bf16,
        DTypeArg::F32 => SynthDType::F32,
        DTypeArg::Fp8 => SynthDType::Fp8,
    };
    let total = planned_bytes(&cfg, dtype);
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let opts = SynthOptions {
        seed,
        dtype,
        max_shard_bytes: shard_mib.max(1) << 20,
    };
    let start = std::time::Instant::now();
    let files = write_checkpoint(&json, &cfg, out, &opts, &|n| bar.inc(n))
        .with_context(|| format!("writing {}", out.display()))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} shard(s), {:.3} GB, to {} in {:.1}s",
        files.len(),
        total as f64 / 1e9,
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
