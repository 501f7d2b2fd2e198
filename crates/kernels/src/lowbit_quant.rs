//! Quantizers for the low-bit formats `glm5 quantize` writes: IQ4_NL and IQ4_XS (the
//! non-linear 4-bit levels `KVALUES_IQ4NL`), by ggml's method without an importance matrix:
//! per 32 values, start from the scale that maps the largest magnitude to the outermost level,
//! try 15 nearby scales, keep the one with the least weighted squared error (weights `x^2`),
//! then fit the scale by least squares. IQ4_XS stores those scales as 6-bit multiples of one
//! f16 scale per 256 values; IQ4_NL stores each as f16.

use half::f16;

use crate::grids::KVALUES_IQ4NL;

/// Below this magnitude a block is stored as zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Scales tried around the first guess: `(itry + kv[0]) / max` for `itry` in `-NTRY..=NTRY`.
const NTRY: i32 = 7;

/// The level nearest `v` (ties to the lower level).
fn nearest_level(v: f32) -> u8 {
    let mut best = (0u8, f32::INFINITY);
    for (i, &k) in KVALUES_IQ4NL.iter().enumerate() {
        let e = (k as f32 - v).abs();
        if e < best.1 {
            best = (i as u8, e);
        }
    }
    best.0
}

/// The best scale for 32 values (0 for an all-zero block).
fn fit_scale(x: &[f32]) -> f32 {
    let (amax, max) = x.iter().fold((0f32, 0f32), |(a, m), &v| {
        if v.abs() > a {
            (v.abs(), v)
        } else {
            (a, m)
        }
    });
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let kv0 = KVALUES_IQ4NL[0] as f32;
    // Weighted sums of the assignment at inverse scale `id`.
    let sums = |id: f32| {
        x.iter().fold((0f32, 0f32), |(sqx, sq2), &v| {
            let q = KVALUES_IQ4NL[nearest_level(id * v) as usize] as f32;
            let w = v * v;
            (sqx + w * q * v, sq2 + w * q * q)
        })
    };
    let (sqx, sq2) = sums(kv0 / -max);
    let mut d = if sq2 > 0.0 { sqx / sq2 } else { 0.0 };
    let mut best = d * sqx;
    for itry in -NTRY..=NTRY {
        let (sqx, sq2) = sums((itry as f32 + kv0) / max);
        if sq2 > 0.0 && sqx * sqx > best * sq2 {
            d = sqx / sq2;
            best = d * sqx;
        }
    }
    d
}

/// 32 values at scale `d` as 16 bytes of level indices (low nibbles the first 16 values).
fn pack(x: &[f32], d: f32, out: &mut Vec<u8>) {
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let l: Vec<u8> = x.iter().map(|&v| nearest_level(id * v)).collect();
    out.extend((0..16).map(|j| l[j] | (l[j + 16] << 4)));
}

/// IQ4_NL: per 32 values an f16 scale and 16 bytes of level indices. `x.len() % 32 == 0`.
pub fn quantize_iq4_nl(x: &[f32], out: &mut Vec<u8>) {
    assert_eq!(x.len() % 32, 0, "partial block");
    for b in x.chunks_exact(32) {
        let d = f16::from_f32(fit_scale(b));
        out.extend_from_slice(&d.to_le_bytes());
        pack(b, d.to_f32(), out);
    }
}

/// IQ4_XS: per 256 values an f16 scale, eight 6-bit sub-scales (signed, stored + 32) and 128
/// bytes of level indices. `x.len() % 256 == 0`.
pub fn quantize_iq4_xs(x: &[f32], out: &mut Vec<u8>) {
    assert_eq!(x.len() % 256, 0, "partial block");
    for sb in x.chunks_exact(256) {
        let scales: Vec<f32> = sb.chunks_exact(32).map(fit_scale).collect();
        let max_scale = scales
            .iter()
            .fold(0f32, |m, &s| if s.abs() > m.abs() { s } else { m });
        let d = f16::from_f32(-max_scale / 32.0);
        let df = d.to_f32();
        let id = if df != 0.0 { 1.0 / df } else { 0.0 };
        let (mut scales_h, mut scales_l) = (0u16, [0u8; 4]);
        let mut qs = Vec::with_capacity(128);
        for (ib, (xb, &s)) in sb.chunks_exact(32).zip(&scales).enumerate() {
            let l = ((id * s).round() as i32).clamp(-32, 31);
            pack(xb, df * l as f32, &mut qs);
            let l = (l + 32) as u8;
            scales_l[ib / 2] |= (l & 0x0F) << (4 * (ib % 2));
            scales_h |= ((l >> 4) as u16) << (2 * ib);
        }
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&scales_h.to_le_bytes());
        out.extend_from_slice(&scales_l);
        out.extend_from_slice(&qs);
    }
}
