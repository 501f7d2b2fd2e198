//! Rotary position embedding as HF computes it: `inv_freq` in f32, `cos/sin` of
//! `pos * inv_freq`, YaRN frequency blending and attention factor for `rope_type: yarn`.

use crate::config::{yarn_get_mscale, Config, RopeScaling};

/// Per-pair inverse frequencies and the cos/sin multiplier (`attention_scaling`).
#[derive(Clone, Debug)]
pub struct Rope {
    /// `[rope_dim / 2]`
    pub inv_freq: Vec<f32>,
    pub attention_scaling: f32,
}

impl Rope {
    pub fn new(cfg: &Config) -> Rope {
        let dim = cfg.qk_rope_head_dim;
        let base = cfg.rope_parameters.rope_theta;
        // torch: base ** (arange(0, dim, 2).float() / dim), in f32.
        let pos_freqs: Vec<f32> = (0..dim / 2)
            .map(|j| (base as f32).powf((2 * j) as f32 / dim as f32))
            .collect();
        match &cfg.rope_parameters.scaling {
            RopeScaling::Default => Rope {
                inv_freq: pos_freqs.iter().map(|p| 1.0 / p).collect(),
                attention_scaling: 1.0,
            },
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate,
            } => {
                let attention =
                    attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
                        (Some(m), Some(a)) if *m != 0.0 && *a != 0.0 => {
                            yarn_get_mscale(*factor, *m) / yarn_get_mscale(*factor, *a)
                        }
                        _ => yarn_get_mscale(*factor, 1.0),
                    });
                let correction_dim = |rot: f64| {
                    (dim as f64
                        * (*original_max_position_embeddings as f64
                            / (rot * 2.0 * std::f64::consts::PI))
                            .ln())
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(dim as f64 - 1.0);
                let high = if low == high { high + 0.001 } else { high };
                let inv_freq = pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        let ramp =
                            ((j as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
                        let extrapolation_factor = 1.0 - ramp;
                        let interp = 1.0 / (*factor as f32 * p);
                        let extrap = 1.0 / p;
                        interp * (1.0 - extrapolation_factor) + extrap * extrapolation_factor
                    })
                    .collect();
                Rope {
                    inv_freq,
                    attention_scaling: attention as f32,
                }
            }
        }
    }

    /// `(cos, sin)` of each pair's angle at `pos`, each `[rope_dim / 2]`, times `attention_scaling`.
    pub fn cos_sin(&self, pos: usize) -> (Vec<f32>, Vec<f32>) {
        self.inv_freq
            .iter()
            .map(|f| {
                let a = pos as f32 * f;
                (
                    a.cos() * self.attention_scaling,
                    a.sin() * self.attention_scaling,
                )
            })
            .unzip()
    }
}

/// Rotate `x` (`rope_dim` wide) in place.
///
/// * interleaved (GPT-J pairs `(x[2j], x[2j+1])`), written out de-interleaved as HF does:
///   `out[j] = x[2j] c_j - x[2j+1] s_j`, `out[d/2 + j] = x[2j+1] c_j + x[2j] s_j`;
/// * half-split (NeoX): pairs `(x[j], x[j + d/2])`.
///
/// Queries and keys go through the same permutation, so dot products equal the textbook rotation.
pub fn apply(x: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = x.len() / 2;
    let mut out = vec![0f32; x.len()];
    for j in 0..half {
        let (a, b) = if interleaved {
            (x[2 * j], x[2 * j + 1])
        } else {
            (x[j], x[j + half])
        };
        out[j] = a * cos[j] - b * sin[j];
        out[half + j] = b * cos[j] + a * sin[j];
    }
    x.copy_from_slice(&out);
}
