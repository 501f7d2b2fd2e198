//! `glm5 kld`: how far a quantized model's next-token distributions are from a base model's
//! over one token sequence (llama.cpp's `perplexity --kl-divergence` measure): mean and high
//! percentiles of KL(base || model), top-1 agreement, and with `--text` both perplexities.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use clap::Args;
use glm5_engine::model_dir::ModelDir;
use glm5_engine::sampler::argmax;
use glm5_model::{Model, Quant};
use serde_json::json;

#[derive(Args, Debug)]
pub struct KldArgs {
    /// The model to measure: HF folder or .gguf file; the bundled model when omitted.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Its weight format when `--model` is a folder (a GGUF's tensors are used as stored).
    #[arg(long, default_value = "q4_k_m")]
    quant: String,
    /// The base to compare against: HF folder or .gguf; `--model` when omitted.
    #[arg(long)]
    base: Option<PathBuf>,
    /// The base's weight format when it is a folder.
    #[arg(long, default_value = "bf16")]
    base_quant: String,
    /// Positions compared.
    #[arg(long, default_value_t = 512)]
    tokens: usize,
    /// A text file to score (tokenized by the base folder's tokenizer); deterministic
    /// pseudo-random tokens when omitted.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn parse_quant(flag: &str, q: &str) -> Result<Quant> {
    Quant::parse(q).ok_or_else(|| {
        anyhow!("{flag} {q}: unknown format (bf16, f16, f32, q8_0, q4_k_m, q6_k, reference)")
    })
}

/// Logits `[n, vocab]` of `tokens` through `model` (loaded from `path`).
fn logits_of(path: &Path, model: &Model, tokens: &[u32]) -> Result<Vec<f32>> {
    let vocab = model.cfg.vocab_size;
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(anyhow!(
            "{}: token {t} is outside the vocabulary of {vocab}",
            path.display()
        ));
    }
    let mut cache = model.new_cache();
    Ok(model.forward(tokens, &mut cache, None)?)
}

/// `log_softmax(z)`.
fn log_softmax(z: &[f32]) -> Vec<f64> {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = m + z.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
    z.iter().map(|&v| v as f64 - lse).collect()
}

pub fn run(a: &KldArgs) -> Result<()> {
    glm5_kernels::pool::set_threads(a.threads);
    let model = crate::run::model_path(a.model.as_ref())?;
    let base = a.base.clone().unwrap_or_else(|| model.clone());
    let (quant, base_quant) = (
        parse_quant("--quant", &a.quant)?,
        parse_quant("--base-quant", &a.base_quant)?,
    );
    if a.tokens < 2 {
        return Err(anyhow!("--tokens must be at least 2"));
    }
    let base_model = Model::load_with(&base, base_quant, false)?;
    let vocab = base_model.cfg.vocab_size;
    let tokens: Vec<u32> = match &a.text {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading --text {}", f.display()))?;
            let tok = ModelDir::load_tokenizer(&base)
                .with_context(|| format!("--text needs a tokenizer: {}", base.display()))?;
            let mut t = tok.encode(&text)?;
            if t.len() < a.tokens {
                return Err(anyhow!(
                    "--text {}: {} tokens, fewer than --tokens {}",
                    f.display(),
                    t.len(),
                    a.tokens
                ));
            }
            t.truncate(a.tokens);
            t
        }
        None => (0..a.tokens)
            .map(|i| ((i * 7919 + 17) % vocab) as u32)
            .collect(),
    };
    let zb = logits_of(&base, &base_model, &tokens)?;
    drop(base_model);
    let test_model = Model::load_with(&model, quant, false)?;
    if test_model.cfg.vocab_size != vocab {
        return Err(anyhow!(
            "{} has a vocabulary of {}, {} of {vocab}",
            model.display(),
            test_model.cfg.vocab_size,
            base.display()
        ));
    }
    let zm = logits_of(&model, &test_model, &tokens)?;
    let n = tokens.len();
    let (mut kl, mut agree, mut nll_b, mut nll_m) = (Vec::with_capacity(n), 0usize, 0f64, 0f64);
    for i in 0..n {
        let (b, m) = (
            &zb[i * vocab..(i + 1) * vocab],
            &zm[i * vocab..(i + 1) * vocab],
        );
        let (lb, lm) = (log_softmax(b), log_softmax(m));
        kl.push(
            lb.iter()
                .zip(&lm)
                .map(|(p, q)| p.exp() * (p - q))
                .sum::<f64>(),
        );
        agree += (argmax(b) == argmax(m)) as usize;
        if i + 1 < n {
            let next = tokens[i + 1] as usize;
            nll_b -= lb[next];
            nll_m -= lm[next];
        }
    }
    let mean = kl.iter().sum::<f64>() / n as f64;
    let mut sorted = kl.clone();
    sorted.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| sorted[((p * (n - 1) as f64).round() as usize).min(n - 1)];
    let top1 = 100.0 * agree as f64 / n as f64;
    let ppl = |nll: f64| (nll / (n - 1) as f64).exp();
    let label = |p: &Path, q: &str| {
        if p.is_file() {
            format!("{} (as stored)", p.display())
        } else {
            format!("{} at {q}", p.display())
        }
    };
    if a.json {
        let o = json!({
            "model": label(&model, &a.quant),
            "base": label(&base, &a.base_quant),
            "tokens": n,
            "text": a.text.as_ref().map(|p| p.display().to_string()),
            "kl_mean": mean,
            "kl_median": pct(0.5),
            "kl_p99": pct(0.99),
            "kl_max": sorted[n - 1],
            "top1_agreement_pct": top1,
            "ppl_base": a.text.as_ref().map(|_| ppl(nll_b)),
            "ppl_model": a.text.as_ref().map(|_| ppl(nll_m)),
        });
        println!("{o}");
        return Ok(());
    }
    println!("model  {}", label(&model, &a.quant));
    println!("base   {}", label(&base, &a.base_quant));
    println!(
        "KL(base || model) over {n} positions: mean {mean:.6}, median {:.6}, p99 {:.6}, max {:.6} nats",
        pct(0.5),
        pct(0.99),
        sorted[n - 1]
    );
    println!("top-1 agreement {top1:.2}%");
    if a.text.is_some() {
        println!("perplexity base {:.4}, model {:.4}", ppl(nll_b), ppl(nll_m));
    }
    Ok(())
}
