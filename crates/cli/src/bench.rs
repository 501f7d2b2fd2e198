//! `glm5 bench`: prompt processing and decode speed on a model, against this machine's own
//! memory-bandwidth roofline.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Result};
use clap::Args;
use glm5_engine::sampler::argmax;
use glm5_kernels::{membw, peak, pool, Isa, Matrix};
use glm5_model::glm_moe_dsa::Ffn;
use glm5_model::{KvCache, Model};
use serde_json::json;

use crate::run::LoadArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// HF folder or .gguf file; the bundled model when omitted.
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
    /// Prompt length for the prompt-processing measurement.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens decoded after the prompt.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Repetitions; medians are reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Also decode this many sequences together (one batched forward per step, as `serve`
    /// does with concurrent requests) and report their aggregate decode speed.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Also measure at these context depths (comma-separated token counts): the context is
    /// filled with a synthetic prompt in 512-token chunks (timed: prompt tok/s at that depth),
    /// then `--gen-tokens` are decoded from each depth in turn, `--reps` rounds (every depth's
    /// cache is held until the end, so the depths are timed side by side).
    #[arg(long, value_delimiter = ',')]
    ctx: Vec<usize>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Bytes and multiply-adds of weights one decoded token touches: everything but the routed
/// experts and the embedding table, plus `num_experts_per_tok` experts per MoE layer and one
/// embedding row.
fn per_token(m: &Model) -> (f64, f64) {
    let cost = |w: &Matrix| (w.nbytes() as f64, (w.rows * w.cols) as f64);
    let add = |a: (f64, f64), b: (f64, f64)| (a.0 + b.0, a.1 + b.1);
    let e = &m.embed_tokens;
    let mut total = (e.nbytes() as f64 / e.rows as f64, 0.0);
    total = add(total, cost(m.lm_head.as_ref().map_or(e, |h| &h.w)));
    for l in &m.layers {
        for w in l.self_attn.weights() {
            total = add(total, cost(w));
        }
        match &l.mlp {
            Ffn::Dense(d) => {
                for w in [&d.gate_proj.w, &d.up_proj.w, &d.down_proj.w] {
                    total = add(total, cost(w));
                }
            }
            Ffn::Moe(moe) => {
                total = add(total, cost(&moe.gate.w));
                if let Some(s) = &moe.shared_experts {
                    for w in [&s.gate_proj.w, &s.up_proj.w, &s.down_proj.w] {
                        total = add(total, cost(w));
                    }
                }
                let k = m.cfg.num_experts_per_tok as f64 / moe.experts.len() as f64;
                for x in &moe.experts {
                    for w in [&x.gate_proj.w, &x.up_proj.w, &x.down_proj.w] {
                        let c = cost(w);
                        total = add(total, (c.0 * k, c.1 * k));
                    }
                }
            }
        }
    }
    total
}

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Decode against the memory roofline from runs of (bandwidth before, bandwidth after, tok/s):
/// the median bandwidth and the median of each run's own percentage, over the runs whose
/// bandwidth held within 15% across them (all runs if none did), and how many those were.
fn roofline(runs: &[(f64, f64, f64)], bytes_tok: f64) -> (f64, f64, usize) {
    let held: Vec<&(f64, f64, f64)> = runs
        .iter()
        .filter(|(b, a, _)| (b - a).abs() <= 0.15 * b.max(*a))
        .collect();
    let used: Vec<&(f64, f64, f64)> = if held.is_empty() {
        runs.iter().collect()
    } else {
        held
    };
    let pct = median(used.iter().map(|r| run_pct(r, bytes_tok)).collect());
    (
        median(used.iter().map(|(b, a, _)| (b + a) / 2.0).collect()),
        pct,
        used.len(),
    )
}

/// One decode run's percentage of its own roofline (the mean of its two bandwidth reads).
fn run_pct(&(b, a, rate): &(f64, f64, f64), bytes_tok: f64) -> f64 {
    100.0 * rate * bytes_tok / ((b + a) / 2.0 * 1e9)
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

pub fn run(a: &BenchArgs) -> Result<()> {
    let quant = a.load.quant()?;
    let path = crate::run::model_path(a.model.as_ref())?;
    if a.prompt_tokens == 0 || a.gen_tokens == 0 || a.reps == 0 {
        return Err(anyhow!(
            "--prompt-tokens, --gen-tokens and --reps must be at least 1"
        ));
    }
    let t0 = Instant::now();
    let mut model = Model::load_with(&path, quant, a.load.mtp)?;
    let draft = a.load.configure(&mut model, &path)?;
    // A GGUF's tensors are used as stored: name the file's formats instead.
    let label = if path.is_file() {
        let mut f: Vec<&str> = model.weights().iter().map(|w| w.format.name()).collect();
        f.sort_unstable();
        f.dedup();
        format!("gguf: {}", f.join("+"))
    } else {
        quant.name()
    };
    let load_secs = t0.elapsed().as_secs_f64();
    let cfg = &model.cfg;
    if a.prompt_tokens + a.gen_tokens > cfg.max_position_embeddings {
        return Err(anyhow!(
            "--prompt-tokens + --gen-tokens = {} exceeds the model's context of {}",
            a.prompt_tokens + a.gen_tokens,
            cfg.max_position_embeddings
        ));
    }
    let threads = pool::global().threads();
    let prompt: Vec<u32> = (0..a.prompt_tokens)
        .map(|i| ((i * 7919 + 17) % cfg.vocab_size.min(1 << 20)) as u32)
        .collect();
    // Warm-up: page in the weights (mapped files) and the pool.
    {
        let mut c = model.new_cache();
        model.forward(&prompt[..prompt.len().min(8)], &mut c, None)?;
        model.forward(&[1], &mut c, None)?;
    }
    // The bandwidth test streams the weights themselves, right before and right after each
    // decode run, so both see the same machine: this one's bandwidth swings between ~33 and
    // ~55 GB/s with its neighbours, often within one process. Each run is set against its own
    // bandwidth, not against the median of all runs' (which can pair a slow run with a fast
    // test).
    let weight_bytes: Vec<&[u8]> = model.weights().iter().map(|w| w.bytes()).collect();
    let (bytes_tok, macs_tok) = per_token(&model);
    let (mut pp, mut tg, mut kv_bytes) = (Vec::new(), Vec::new(), 0);
    // Per run: (bandwidth before, bandwidth after, decode tok/s).
    let mut runs: Vec<(f64, f64, f64)> = Vec::new();
    // Per run: the threads' cache-line round trip in ns, read before it (which CCDs they sit
    // on: on the development VM, one CCD's link caps both threads near 32 GB/s, two give ~55).
    let mut trips: Vec<Option<f64>> = Vec::new();
    for _ in 0..a.reps {
        let mut cache = model.new_cache();
        let t = Instant::now();
        let logits = last_logits(&model, &prompt, &mut cache)?;
        pp.push(a.prompt_tokens as f64 / t.elapsed().as_secs_f64());
        let mut next = argmax(&logits[logits.len() - cfg.vocab_size..]);
        trips.push(membw::thread_round_trip_ns(20_000));
        let before = membw::read_slices_gb_s(&weight_bytes, 2);
        let t = Instant::now();
        for _ in 0..a.gen_tokens {
            let l = model.forward(&[next], &mut cache, None)?;
            next = argmax(&l);
        }
        let rate = a.gen_tokens as f64 / t.elapsed().as_secs_f64();
        tg.push(rate);
        kv_bytes = cache.bytes();
        runs.push((before, membw::read_slices_gb_s(&weight_bytes, 2), rate));
    }
    let (pp, tg) = (median(pp), median(tg));
    let (bw, roofline_pct, steady) = roofline(&runs, bytes_tok);
    let contexts = at_depths(&model, &a.ctx, a.gen_tokens, a.reps)?;
    let batch_tg = if a.batch > 1 {
        Some(batch_decode(
            &model,
            &prompt,
            a.batch,
            a.gen_tokens,
            a.reps,
        )?)
    } else {
        None
    };
    let mtp = if draft > 0 {
        let gen = a.gen_tokens.max(2);
        Some(crate::bench_mtp::measure(
            &model, &prompt, gen, draft, a.reps,
        )?)
    } else {
        None
    };
    let rss = peak_rss_bytes();
    // The prompt runs lm_head over its last row only.
    let head = model.lm_head.as_ref().map_or(&model.embed_tokens, |h| &h.w);
    let head_macs = (head.rows * head.cols) as f64 * (1.0 - 1.0 / a.prompt_tokens as f64);
    let prompt_gflops = pp * 2.0 * (macs_tok - head_macs) / 1e9;
    let (int8_peak, f32_peak) = (peak::int8_peak_gops(3), peak::f32_peak_gflops(3));
    let pct = |peak: Option<f64>| peak.map(|p| 100.0 * prompt_gflops / p);
    let weights = model.weight_bytes();
    // The cache as held (latent, rope key and indexer key per layer, in their formats).
    let kv_per_token = glm5_engine::batch::BatchModel::cache_bytes_per_token(&model);
    // The memory budget: weights + the caches this run held at once + 10% (the
    // depths' caches are held together while their decodes alternate).
    let kv_max = kv_bytes.max(contexts.iter().map(|c| c.3).sum());
    let rss_budget = ((weights + kv_max) as f64 * 1.1) as u64;
    // And the issue's own wording: the weight file's size (a GGUF file, or a folder's
    // .safetensors files) + KV + 10%. Held weights can be smaller (an MTP layer not loaded).
    let file_bytes = weight_file_bytes(&path);
    let file_budget = file_bytes.map(|f| ((f + kv_max as u64) as f64 * 1.1) as u64);
    if a.json {
        let o = json!({
            "model": path.display().to_string(),
            "quant": label,
            "threads": threads,
            "isa": Isa::detect().name(),
            "prompt_tokens": a.prompt_tokens,
            "gen_tokens": a.gen_tokens,
            "reps": a.reps,
            "load_secs": load_secs,
            "prompt_tokens_per_s": pp,
            "decode_tokens_per_s": tg,
            "weight_bytes": weights,
            "weight_bytes_per_token": bytes_tok as u64,
            "mem_bandwidth_gb_s": bw,
            "decode_roofline_pct": roofline_pct,
            "decode_runs": runs.iter().zip(&trips).map(|((b, a, r), rt)| json!({
                "bandwidth_before_gb_s": b,
                "bandwidth_after_gb_s": a,
                "tokens_per_s": r,
                "thread_round_trip_ns": rt,
            })).collect::<Vec<_>>(),
            "prompt_gflops": prompt_gflops,
            "int8_peak_gops": int8_peak,
            "f32_peak_gflops": f32_peak,
            "prompt_int8_peak_pct": pct(int8_peak),
            "prompt_f32_peak_pct": pct(f32_peak),
            "kv_cache_bytes": kv_bytes,
            "kv_bytes_per_token": kv_per_token,
            "kv_cache_format": model.kv_format().kv.name(),
            "index_cache_format": model.kv_format().index.name(),
            "dense_attention": model.dense_attention,
            "contexts": contexts.iter().map(|&(ctx, pp, tg, kv)| json!({
                "ctx": ctx, "prompt_tokens_per_s": pp, "decode_tokens_per_s": tg,
                "kv_cache_bytes": kv,
            })).collect::<Vec<_>>(),
            "batch": a.batch,
            "batch_decode_tokens_per_s": batch_tg,
            "batch_speedup": batch_tg.map(|b| b / tg),
            "peak_rss_bytes": rss,
            "rss_budget_bytes": rss_budget,
            "weight_file_bytes": file_bytes,
            "rss_file_budget_bytes": file_budget,
            "mtp_draft": mtp.as_ref().map(|m| m.draft),
            "mtp_decode_tokens_per_s": mtp.as_ref().map(|m| m.mtp_tokens_per_s),
            "mtp_plain_decode_tokens_per_s": mtp.as_ref().map(|m| m.plain_tokens_per_s),
            "mtp_speedup": mtp.as_ref().map(|m| m.mtp_tokens_per_s / m.plain_tokens_per_s),
            "mtp_acceptance_length": mtp.as_ref().map(|m| m.acceptance_length),
            "mtp_acceptance_rate": mtp.as_ref().map(|m| m.acceptance_rate),
            "mtp_greedy_identical": mtp.as_ref().map(|m| m.identical),
            "mtp_verify_cost": mtp.as_ref().map(|m| m.verify_cost),
            "mtp_draft_cost": mtp.as_ref().map(|m| m.draft_cost),
        });
        println!("{o}");
        return Ok(());
    }
    println!(
        "model    {} ({}, {} layers), {} threads, {}",
        path.display(),
        label,
        cfg.num_hidden_layers,
        threads,
        Isa::detect().name()
    );
    println!(
        "weights  {:.3} GB held; {:.1} MB read per decoded token; loaded in {load_secs:.1} s",
        weights as f64 / 1e9,
        bytes_tok / 1e6
    );
    println!(
        "memory   {bw:.1} GB/s read bandwidth (streaming the {:.2} GB of weights before and after each decode run; median of the {steady} of {} runs it held steady through)",
        weights as f64 / 1e9,
        a.reps
    );
    println!(
        "prompt   {} tokens: {pp:.1} tok/s ({prompt_gflops:.1} GFLOP/s in weight matmuls), median of {}",
        a.prompt_tokens, a.reps
    );
    if let (Some(i8p), Some(f32p)) = (int8_peak, f32_peak) {
        println!(
            "compute  peak {i8p:.0} GOP/s int8 (vpdpbusd), {f32p:.0} GFLOP/s f32 (FMA), {threads} threads: prompt at {:.1}% of int8, {:.1}% of f32",
            100.0 * prompt_gflops / i8p,
            100.0 * prompt_gflops / f32p
        );
    }
    println!(
        "decode   {} tokens: {tg:.2} tok/s ({:.1} ms/token); each run against its own bandwidth: {roofline_pct:.1}% of the roofline (median; {:.1} tok/s at the median bandwidth)",
        a.gen_tokens,
        1000.0 / tg,
        bw * 1e9 / bytes_tok
    );
    let each: Vec<String> = runs
        .iter()
        .zip(&trips)
        .map(|(run, rt)| {
            let (b, a, r) = run;
            let pct = run_pct(run, bytes_tok);
            let rt = rt.map_or(String::new(), |ns| format!(" ({ns:.0} ns)"));
            format!("{r:.1} tok/s at {b:.0}/{a:.0} GB/s{rt} = {pct:.0}%")
        })
        .collect();
    println!("runs     {}", each.join("; "));
    println!(
        "         (per run: tok/s at the bandwidth read before/after it, the threads' cache-line round trip, percentage of the roofline)"
    );
    for &(ctx, pp, tg, kv) in &contexts {
        println!(
            "context  {ctx:>6} tokens ({}): filled at {pp:.1} tok/s, then decode {tg:.2} tok/s; cache {:.1} MB",
            if model.dense_attention {
                "dense attention"
            } else {
                "DSA"
            },
            kv as f64 / 1e6
        );
    }
    if let Some(b) = batch_tg {
        println!(
            "batch    {} sequences decoding together: {b:.2} tok/s in all = {:.2}x one sequence",
            a.batch,
            b / tg
        );
    }
    if let Some(m) = &mtp {
        println!(
            "mtp      draft {}: {:.2} tok/s vs {:.2} without = {:.2}x; {:.2} tokens per verify step ({:.0}% of drafts accepted); greedy output {}",
            m.draft,
            m.mtp_tokens_per_s,
            m.plain_tokens_per_s,
            m.mtp_tokens_per_s / m.plain_tokens_per_s,
            m.acceptance_length,
            100.0 * m.acceptance_rate,
            if m.identical { "identical" } else { "DIFFERENT" }
        );
        println!(
            "mtp      one verify step of {} tokens costs {:.2}x a decode step; drafting {} tokens {:.2}x",
            m.draft + 1,
            m.verify_cost,
            m.draft,
            m.draft_cost
        );
    }
    println!(
        "memory   peak RSS {:.3} GB (weights {:.3} GB + KV caches held at once {:.1} MB, {kv_per_token} bytes per token: rows in {}, indexer keys in {}); {} the budget of weights + KV + 10% = {:.3} GB",
        rss as f64 / 1e9,
        weights as f64 / 1e9,
        kv_max as f64 / 1e6,
        model.kv_format().kv.name(),
        model.kv_format().index.name(),
        if rss <= rss_budget { "within" } else { "OVER" },
        rss_budget as f64 / 1e9
    );
    if let (Some(f), Some(b)) = (file_bytes, file_budget) {
        println!(
            "         {} the budget of weight file size {:.3} GB + KV + 10% = {:.3} GB",
            if rss <= b { "within" } else { "OVER" },
            f as f64 / 1e9,
            b as f64 / 1e9
        );
    }
    Ok(())
}

/// Bytes of the model's weight files: the GGUF file, or a folder's `.safetensors` files.
fn weight_file_bytes(path: &std::path::Path) -> Option<u64> {
    if path.is_file() {
        return std::fs::metadata(path).ok().map(|m| m.len());
    }
    let mut total = 0;
    for e in std::fs::read_dir(path).ok()?.flatten() {
        if e.path().extension().is_some_and(|x| x == "safetensors") {
            total += e.metadata().ok()?.len();
        }
    }
    (total > 0).then_some(total)
}

/// Aggregate decode tok/s of `batch` sequences (each after its own 16-token prompt) stepping
/// together, median of `reps`.
fn batch_decode(
    model: &Model,
    prompt: &[u32],
    batch: usize,
    gen: usize,
    reps: usize,
) -> Result<f64> {
    use glm5_engine::batch::BatchModel;
    let vocab = model.cfg.vocab_size as u32;
    let mut rates = Vec::new();
    for _ in 0..reps {
        let mut caches: Vec<_> = (0..batch)
            .map(|_| BatchModel::new_cache(model, false))
            .collect();
        let mut next: Vec<u32> = Vec::with_capacity(batch);
        for (s, c) in caches.iter_mut().enumerate() {
            let p: Vec<u32> = prompt
                .iter()
                .take(15)
                .map(|&t| (t + s as u32 * 31) % vocab)
                .collect();
            let l = BatchModel::forward(model, &mut [(&p[..], c)], &[1])?;
            next.push(argmax(&l[0]));
        }
        let t = Instant::now();
        for _ in 0..gen {
            let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let mut b: Vec<(&[u32], &mut glm5_engine::batch::SeqCache)> = toks
                .iter()
                .zip(caches.iter_mut())
                .map(|(t, c)| (&t[..], c))
                .collect();
            let logits = BatchModel::forward(model, &mut b, &vec![1; batch])?;
            next = logits.iter().map(|l| argmax(l)).collect();
        }
        rates.push((batch * gen) as f64 / t.elapsed().as_secs_f64());
    }
    Ok(median(rates))
}

/// The logits of the last of `tokens` appended to `cache` (as the engine's prefill computes
/// them: `lm_head` over one row, not all).
fn last_logits(model: &Model, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
    // In chunks, as `run` and `serve` prefill (peak memory stays that of one chunk).
    let mut hidden = Vec::new();
    for chunk in tokens.chunks(glm5_engine::PREFILL_CHUNK) {
        hidden = model.forward_hidden(chunk, cache, None)?;
    }
    let h = model.cfg.hidden_size;
    Ok(model.logits(&hidden[hidden.len() - h..], 1))
}

/// Fill one fresh cache per depth with a synthetic prompt in 512-token chunks (timed: prompt
/// tok/s at that depth), then decode `gen` tokens from every depth in turn for `reps` rounds,
/// each cache cut back to its depth after its turn: the depths' decodes are timed side by side
/// in the same minutes (this machine's bandwidth changes from one minute to the next, and a
/// depth measured minutes after another would compare the machine, not the depths). Per depth:
/// (ctx, fill tok/s, median decode tok/s, cache bytes).
fn at_depths(
    model: &Model,
    ctxs: &[usize],
    gen: usize,
    reps: usize,
) -> Result<Vec<(usize, f64, f64, usize)>> {
    let cfg = &model.cfg;
    let vocab = cfg.vocab_size.min(1 << 20);
    let mut filled = Vec::new();
    for &ctx in ctxs {
        if ctx == 0 || ctx + gen > cfg.max_position_embeddings {
            return Err(anyhow!(
                "--ctx {ctx}: must be at least 1 and leave room for --gen-tokens {gen} in the model's context of {}",
                cfg.max_position_embeddings
            ));
        }
        let prompt: Vec<u32> = (0..ctx).map(|i| ((i * 7919 + 17) % vocab) as u32).collect();
        let mut cache = model.new_cache();
        cache.reserve(ctx + gen);
        let t = Instant::now();
        let mut logits = Vec::new();
        for chunk in prompt.chunks(512) {
            logits = last_logits(model, chunk, &mut cache)?;
        }
        let pp = ctx as f64 / t.elapsed().as_secs_f64();
        let first = argmax(&logits[logits.len() - cfg.vocab_size..]);
        filled.push((ctx, pp, cache, first, Vec::new(), 0));
    }
    for _ in 0..reps.max(1) {
        for (ctx, _, cache, first, rates, bytes) in filled.iter_mut() {
            let mut next = *first;
            let t = Instant::now();
            for _ in 0..gen {
                next = argmax(&model.forward(&[next], cache, None)?);
            }
            rates.push(gen as f64 / t.elapsed().as_secs_f64());
            *bytes = cache.bytes();
            cache.truncate(*ctx);
        }
    }
    Ok(filled
        .into_iter()
        .map(|(ctx, pp, _, _, rates, bytes)| (ctx, pp, median(rates), bytes))
        .collect())
}
