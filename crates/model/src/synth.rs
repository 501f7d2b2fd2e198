//! `glm5 synth`: a complete HF-style checkpoint with deterministic random weights at realistic
//! scales, for benchmarks and tests. Values depend only on (seed, tensor name, element index),
//! never on the number of threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use glm5_format::{f32_to_bf16, f32_to_fp8_e4m3, DType, SafetensorsWriter};
use rayon::prelude::*;

use crate::config::Config;
use crate::spec::{tensor_specs, Role, TensorSpec};
use crate::weights::{is_fp8_role, SCALE_SUFFIX};
use crate::{Error, Result};

/// Storage dtype of the synthetic checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthDType {
    F32,
    Bf16,
    /// e4m3 block-quantized projections (128x128 blocks) as GLM-5-FP8 stores them; the rest BF16.
    Fp8,
}

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub seed: u64,
    pub dtype: SynthDType,
    /// Largest shard in bytes (a tensor is never split).
    pub max_shard_bytes: u64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            seed: 0,
            dtype: SynthDType::Bf16,
            max_shard_bytes: 2 << 30,
        }
    }
}

/// splitmix64: the seed mixer.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn name_hash(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the seed.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ splitmix(seed);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(h)
}

/// xoshiro256+ generator (fast, good enough for weights).
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Rng {
        let a = splitmix(seed);
        let b = splitmix(a);
        let c = splitmix(b);
        let d = splitmix(c);
        Rng([a, b, c, d])
    }
    #[inline]
    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[0].wrapping_add(s[3]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
    /// Uniform in (0, 1].
    #[inline]
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 1.0) * (1.0 / (1u64 << 24) as f32)
    }
}

const CHUNK: usize = 1 << 16;

/// Fill `out` with N(0,1) samples (Box-Muller), chunk-seeded from `seed`.
pub fn fill_normal(seed: u64, out: &mut [f32]) {
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(ci, chunk)| {
            let mut rng = Rng::new(seed ^ splitmix(ci as u64 + 1));
            for pair in chunk.chunks_mut(2) {
                let (u1, u2) = (rng.uniform(), rng.uniform());
                let r = (-2.0 * u1.ln()).sqrt();
                let (s, c) = (std::f32::consts::TAU * u2).sin_cos();
                pair[0] = r * c;
                if pair.len() > 1 {
                    pair[1] = r * s;
                }
            }
        });
}

/// The f32 values synth writes for tensor `spec` (before storage rounding).
pub fn synth_values(seed: u64, spec: &TensorSpec) -> Vec<f32> {
    let mut v = vec![0f32; spec.numel()];
    fill_normal(name_hash(seed, &spec.name), &mut v);
    let (mean, std) = match spec.role {
        Role::Norm => (1.0, 0.05),
        Role::NormBias => (0.0, 0.02),
        Role::RouterBias => (0.0, 0.01),
        _ => (0.0, 0.02),
    };
    v.par_iter_mut().for_each(|x| *x = mean + std * *x);
    v
}

/// Quantize a row-major `[rows, cols]` matrix to e4m3 in `[b0, b1]` blocks:
/// `scale_inv = amax / 448` per block, `q = round(w / scale_inv)`. Returns (codes, scale_inv).
pub fn quantize_fp8_blocks(
    w: &[f32],
    rows: usize,
    cols: usize,
    b0: usize,
    b1: usize,
) -> (Vec<u8>, Vec<f32>) {
    let (sr, sc) = (rows.div_ceil(b0), cols.div_ceil(b1));
    let mut scale = vec![0f32; sr * sc];
    for i in 0..rows {
        for j in 0..cols {
            let s = &mut scale[(i / b0) * sc + j / b1];
            *s = s.max(w[i * cols + j].abs());
        }
    }
    for s in scale.iter_mut() {
        *s = if *s > 0.0 { *s / 448.0 } else { 1.0 };
    }
    let mut q = vec![0u8; rows * cols];
    q.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
        for (j, out) in row.iter_mut().enumerate() {
            *out = f32_to_fp8_e4m3(w[i * cols + j] / scale[(i / b0) * sc + j / b1]);
        }
    });
    (q, scale)
}

/// One tensor as it will be stored: a header spec and a way to produce its bytes.
struct Planned {
    spec: glm5_format::TensorSpec,
    source: usize,
    part: Part,
}

#[derive(Clone, Copy)]
enum Part {
    Values,
    Fp8Codes,
    Fp8Scale,
}

fn plan(cfg: &Config, specs: &[TensorSpec], dtype: SynthDType) -> Vec<Planned> {
    let mut out = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let fp8 = dtype == SynthDType::Fp8 && is_fp8_role(s.role);
        let stored = match (dtype, s.role) {
            (_, Role::RouterBias) => DType::F32,
            (SynthDType::F32, _) => DType::F32,
            _ if fp8 => DType::F8E4M3,
            _ => DType::BF16,
        };
        out.push(Planned {
            spec: glm5_format::TensorSpec {
                name: s.name.clone(),
                dtype: stored,
                shape: s.shape.clone(),
            },
            source: i,
            part: if fp8 { Part::Fp8Codes } else { Part::Values },
        });
        if fp8 {
            let [b0, b1] = cfg.fp8.as_ref().map_or([128, 128], |q| q.weight_block_size);
            out.push(Planned {
                spec: glm5_format::TensorSpec {
                    name: format!("{}{SCALE_SUFFIX}", s.name),
                    dtype: DType::F32,
                    shape: vec![s.shape[0].div_ceil(b0), s.shape[1].div_ceil(b1)],
                },
                source: i,
                part: Part::Fp8Scale,
            });
        }
    }
    out
}

fn to_bytes(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => {
            let mut out = vec![0u8; values.len() * 2];
            out.par_chunks_mut(2 * CHUNK)
                .zip(values.par_chunks(CHUNK))
                .for_each(|(o, v)| {
                    for (dst, x) in o.chunks_exact_mut(2).zip(v) {
                        dst.copy_from_slice(&f32_to_bf16(*x).to_le_bytes());
                    }
                });
            out
        }
    }
}

/// Total bytes `write_checkpoint` will write for these tensors (for a progress bar).
pub fn planned_bytes(cfg: &Config, dtype: SynthDType) -> u64 {
    plan(cfg, &tensor_specs(cfg), dtype)
        .iter()
        .map(|p| p.spec.nbytes() as u64)
        .sum()
}

/// Write `config.json`, the shards and `model.safetensors.index.json` into `out`.
/// `config_json` is the source config; `quantization_config` and `dtype` are set to match.
pub fn write_checkpoint(
    config_json: &serde_json::Value,
    cfg: &Config,
    out: &Path,
    opts: &SynthOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<PathBuf>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| {
            Error::Format(glm5_format::Error::Io {
                path: path.clone(),
                source,
            })
        }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut cfg = cfg.clone();
    let mut config_json = config_json.clone();
    let obj = config_json.as_object_mut().ok_or_else(|| Error::Config {
        path: out.join("config.json"),
        field: "<root>".into(),
        reason: "config must be a JSON object".into(),
    })?;
    obj.insert(
        "dtype".into(),
        match opts.dtype {
            SynthDType::F32 => "float32",
            _ => "bfloat16",
        }
        .into(),
    );
    if opts.dtype == SynthDType::Fp8 {
        let q = serde_json::json!({
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "weight_block_size": [128, 128],
            "modules_to_not_convert": ["lm_head", "model.embed_tokens", "mlp.gate", "indexer.weights_proj", "eh_proj"]
        });
        obj.insert("quantization_config".into(), q);
        cfg.fp8 = Some(crate::config::Fp8Config {
            weight_block_size: [128, 128],
            modules_to_not_convert: Vec::new(),
        });
    } else {
        obj.remove("quantization_config");
        cfg.fp8 = None;
    }
    let cfg_path = out.join("config.json");
    let cfg_text = serde_json::to_string_pretty(&config_json).unwrap_or_default() + "\n";

    let specs = tensor_specs(&cfg);
    let planned = plan(&cfg, &specs, opts.dtype);
    // Split into shards by size, keeping a weight and its scale together.
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0u64;
    for (i, p) in planned.iter().enumerate() {
        let n = p.spec.nbytes() as u64;
        let starts_group = !matches!(p.part, Part::Fp8Scale);
        if starts_group && size > 0 && size + n > opts.max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        if let Some(s) = shards.last_mut() {
            s.push(i);
        }
        size += n;
    }
    let n_shards = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut total_size = 0u64;
    let mut files = Vec::new();
    let mut cache: Option<(usize, Vec<u8>)> = None; // fp8 scale bytes of the last weight
    for (k, members) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, n_shards);
        let path = out.join(&file);
        let mut w = SafetensorsWriter::create(
            &path,
            members.iter().map(|&i| planned[i].spec.clone()).collect(),
            &BTreeMap::new(),
        )?;
        for &i in members {
            let p = &planned[i];
            let s = &specs[p.source];
            let bytes = match p.part {
                Part::Values => to_bytes(&synth_values(opts.seed, s), p.spec.dtype),
                Part::Fp8Codes => {
                    let [b0, b1] = cfg.fp8.as_ref().map_or([128, 128], |q| q.weight_block_size);
                    let v = synth_values(opts.seed, s);
                    let (q, scale) = quantize_fp8_blocks(&v, s.shape[0], s.shape[1], b0, b1);
                    cache = Some((p.source, to_bytes(&scale, DType::F32)));
                    q
                }
                Part::Fp8Scale => match cache.take() {
                    Some((src, b)) if src == p.source => b,
                    _ => unreachable!("a scale is always planned right after its weight"),
                },
            };
            w.write_tensor(&p.spec.name, &bytes)?;
            total_size += bytes.len() as u64;
            progress(bytes.len() as u64);
            weight_map.insert(p.spec.name.clone(), file.clone().into());
        }
        w.finish()?;
        files.push(path);
    }
    let index = serde_json::json!({
        "metadata": {"total_size": total_size},
        "weight_map": weight_map,
    });
    let index_path = out.join("model.safetensors.index.json");
    glm5_format::write_atomic(
        &index_path,
        (serde_json::to_string_pretty(&index).unwrap_or_default() + "\n").as_bytes(),
    )?;
    // Last: a folder without config.json is not a model, so an interrupted synth is never
    // taken for a whole one (every file also appears whole or not at all).
    glm5_format::write_atomic(&cfg_path, cfg_text.as_bytes())?;
    Ok(files)
}
