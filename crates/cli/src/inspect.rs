//! `glm5 inspect`.

use std::path::Path;

use anyhow::anyhow;
use glm5_format::Checkpoint;
use glm5_model::gguf_map;
use glm5_model::source::GgufSource;
use glm5_model::spec::{kv_values_per_token, param_counts};
use glm5_model::{weights, Config, KvFormat, RowFormat};
use serde_json::json;

pub fn run(
    dir: &Path,
    ctx: usize,
    as_json: bool,
    kv_cache: &str,
    index_cache: &str,
) -> anyhow::Result<()> {
    let fmt = KvFormat {
        kv: crate::run::row_format("kv-cache", kv_cache)?,
        index: crate::run::row_format("index-cache", index_cache)?,
    };
    if fmt.kv == RowFormat::Q8 {
        return Err(anyhow!(
            "--kv-cache q8: 8-bit rows are for the indexer keys only (--index-cache q8)"
        ));
    }
    if !dir.exists() {
        return Err(anyhow!(
            "{}: not a model folder or .gguf file (no such path)",
            dir.display()
        ));
    }
    // An HF folder, or a GGUF file (its metadata gives the config).
    let (cfg, report) = if dir.is_file() {
        let src = GgufSource::open(dir)?;
        let cfg = Config::from_json(&gguf_map::config_json(&src.file)?, dir)?;
        let report = src.check(&cfg);
        (cfg, report)
    } else {
        let ckpt = Checkpoint::open(dir)?;
        let cfg = Config::from_json(&ckpt.config, &dir.join("config.json"))?;
        let report = weights::check(&cfg, &ckpt)?;
        (cfg, report)
    };
    let params = param_counts(&cfg);
    let (kv_latent, kv_index) = kv_values_per_token(&cfg);
    let weight_bytes: u64 = report.bytes_per_dtype.values().sum();

    let n_moe = (0..cfg.num_hidden_layers)
        .filter(|&l| cfg.is_moe_layer(l))
        .count();
    let n_index = (0..cfg.num_hidden_layers)
        .filter(|&l| cfg.has_indexer(l))
        .count();
    let mtp_layers = if report.mtp_present {
        cfg.num_nextn_predict_layers
    } else {
        0
    };
    // Main layers only: the MTP layer's rows exist only with --mtp.
    let kv_bytes_per_token = fmt.bytes_per_token(&cfg, 0);
    let kv_total = kv_bytes_per_token as u64 * ctx as u64;
    if as_json {
        let v = json!({
            "model_type": cfg.model_type.as_str(),
            "num_hidden_layers": cfg.num_hidden_layers,
            "dense_layers": cfg.num_hidden_layers - n_moe,
            "moe_layers": n_moe,
            "indexer_layers": n_index,
            "hidden_size": cfg.hidden_size,
            "num_attention_heads": cfg.num_attention_heads,
            "n_routed_experts": cfg.n_routed_experts,
            "num_experts_per_tok": cfg.num_experts_per_tok,
            "n_shared_experts": cfg.n_shared_experts,
            "vocab_size": cfg.vocab_size,
            "params_total": params.total,
            "params_active": params.active,
            "params_mtp": params.mtp,
            "mtp_layers_config": cfg.num_nextn_predict_layers,
            "mtp_layers_present": mtp_layers,
            "kv_bytes_per_token": kv_bytes_per_token,
            "kv_cache_format": fmt.kv.name(),
            "index_cache_format": fmt.index.name(),
            "kv_latent_values_per_token": kv_latent,
            "kv_indexer_values_per_token": kv_index,
            "weight_bytes": weight_bytes,
            "bytes_per_dtype": report.bytes_per_dtype,
            "ctx": ctx,
            "kv_bytes_at_ctx": kv_total,
            "memory_estimate_bytes": weight_bytes + kv_total,
            "missing_tensors": report.missing,
            "unexpected_tensors": report.unexpected,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let b = |x: f64| x / 1e9;
    println!(
        "model        {} ({})",
        dir.display(),
        cfg.model_type.as_str()
    );
    println!(
        "layers       {} ({} dense, {} MoE), {} with their own indexer",
        cfg.num_hidden_layers,
        cfg.num_hidden_layers - n_moe,
        n_moe,
        n_index
    );
    println!(
        "attention    {} heads, MLA q_lora {:?} kv_lora {} nope {} rope {} v {}",
        cfg.num_attention_heads,
        cfg.q_lora_rank,
        cfg.kv_lora_rank,
        cfg.qk_nope_head_dim,
        cfg.qk_rope_head_dim,
        cfg.v_head_dim
    );
    if let Some(ix) = &cfg.indexer {
        println!(
            "indexer      {} heads x {}, top-{}",
            ix.index_n_heads, ix.index_head_dim, ix.index_topk
        );
    }
    println!(
        "experts      {} routed (top-{}, {} groups / top-{}), {} shared, width {}",
        cfg.n_routed_experts,
        cfg.num_experts_per_tok,
        cfg.n_group,
        cfg.topk_group,
        cfg.n_shared_experts,
        cfg.moe_intermediate_size
    );
    println!(
        "params       {:.3}B total, {:.3}B active per token (without the embedding table)",
        b(params.total as f64),
        b(params.active as f64)
    );
    if cfg.num_nextn_predict_layers > 0 {
        println!(
            "MTP          {} layer(s), {:.3}B params, {}",
            cfg.num_nextn_predict_layers,
            b(params.mtp as f64),
            if report.mtp_present {
                "present"
            } else {
                "absent from the files"
            }
        );
    }
    let dtypes: Vec<String> = report
        .bytes_per_dtype
        .iter()
        .map(|(k, v)| format!("{k} {:.3} GB", b(*v as f64)))
        .collect();
    println!(
        "weights      {:.3} GB on disk: {}",
        b(weight_bytes as f64),
        dtypes.join(", ")
    );
    println!(
        "KV cache     {} B/token ({} latent values in {}, {} indexer values in {})",
        kv_bytes_per_token,
        kv_latent,
        fmt.kv.name(),
        kv_index,
        fmt.index.name()
    );
    println!(
        "memory       ~{:.3} GB at ctx {} (weights + KV cache)",
        b((weight_bytes + kv_total) as f64),
        ctx
    );
    for name in &report.missing {
        println!("missing      {name}");
    }
    for name in &report.unexpected {
        println!("unexpected   {name}");
    }
    Ok(())
}
