//! GGML block formats, plain reference code: the layouts of llama.cpp's `ggml-common.h`, checked
//! against the PyPI `gguf` package's dequantizers (testdata/quant, scripts/make_quant_fixtures.py).
//! Fast kernels that read these blocks are tested against these functions.
//!
//! | type | block | bytes | layout |
//! |---|---|---|---|
//! | Q8_0 | 32 | 34 | f16 `d`, 32 x i8; `x = d * q` |
//! | Q4_K | 256 | 144 | f16 `d`, f16 `dmin`, 12 bytes of 6-bit sub-block scales and mins, 128 bytes of nibbles; `x = d*sc*q - dmin*m` per 32-value sub-block |
//! | Q5_K | 256 | 176 | as Q4_K plus 32 bytes holding each value's fifth bit |
//! | Q6_K | 256 | 210 | 128 bytes low nibbles, 64 bytes high 2 bits, 16 x i8 scales, f16 `d`; `x = d*sc*(q-32)` per 16 values |

use half::f16;

use crate::lowbit::LowBit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    /// The formats of `lowbit`.
    Low(LowBit),
}

pub const QK8_0: usize = 32;
pub const QK_K: usize = 256;

impl BlockFormat {
    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            BlockFormat::Q8_0 => QK8_0,
            BlockFormat::Low(l) => l.block_len(),
            _ => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q8_0 => 34,
            BlockFormat::Q4K => 144,
            BlockFormat::Q5K => 176,
            BlockFormat::Q6K => 210,
            BlockFormat::Low(l) => l.block_bytes(),
        }
    }

    /// Dequantize whole blocks: `bytes.len()` must be a multiple of `block_bytes`.
    pub fn dequantize(self, bytes: &[u8], out: &mut Vec<f32>) {
        let block: fn(&[u8], &mut Vec<f32>) = match self {
            BlockFormat::Q8_0 => dequantize_q8_0,
            BlockFormat::Q4K => dequantize_q4_k,
            BlockFormat::Q5K => dequantize_q5_k,
            BlockFormat::Q6K => dequantize_q6_k,
            BlockFormat::Low(l) => return l.dequantize(bytes, out),
        };
        let bb = self.block_bytes();
        assert_eq!(bytes.len() % bb, 0, "partial block");
        bytes.chunks_exact(bb).for_each(|b| block(b, out));
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

pub fn dequantize_q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
}

/// The 6-bit scale and min of sub-block `j` (0..8) from Q4_K/Q5_K's 12 packed bytes.
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 0x3F, s[j + 4] & 0x3F)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

pub fn dequantize_q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        // Sub-blocks 2i and 2i+1 share 32 bytes: low nibbles, then high nibbles.
        let bytes = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
        let shift = 4 * (j % 2);
        out.extend(
            bytes
                .iter()
                .map(|&q| d1 * ((q >> shift) & 0x0F) as f32 - m1),
        );
    }
}

pub fn dequantize_q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let bytes = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
        let shift = 4 * (j % 2);
        for i in 0..32 {
            let q = ((bytes[i] >> shift) & 0x0F) | (((qh[i] >> j) & 1) << 4);
            out.push(d1 * q as f32 - m1);
        }
    }
}

pub fn dequantize_q6_k(b: &[u8], out: &mut Vec<f32>) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = f16_at(b, 208);
    for k in 0..QK_K {
        // Two halves of 128 values; in each, value e takes a nibble of ql and two bits of qh.
        let (h, e) = (k / 128, k % 128);
        let low = (ql[h * 64 + e % 64] >> (4 * (e / 64))) & 0x0F;
        let high = (qh[h * 32 + e % 32] >> (2 * (e / 32))) & 0x03;
        let q = (low | (high << 4)) as i32 - 32;
        let sc = scales[k / 16] as i8 as f32;
        out.push(d * sc * q as f32);
    }
}

/// ggml's `quantize_row_q8_0_ref`: per 32 values, `d = amax / 127`, `q = round(x / d)` (half away
/// from zero), `d` stored as f16. `x.len()` must be a multiple of 32.
pub fn quantize_q8_0(x: &[f32], out: &mut Vec<u8>) {
    assert_eq!(x.len() % QK8_0, 0, "partial block");
    for block in x.chunks_exact(QK8_0) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|&v| (v * id).round() as i8 as u8));
    }
}

/// Pack eight 6-bit sub-block scales and mins the way `scale_min_k4` unpacks them.
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = ls[j] | ((ls[j + 4] >> 4) << 6);
        s[j + 4] = lm[j] | ((lm[j + 4] >> 4) << 6);
        s[j + 8] = (ls[j + 4] & 0x0F) | ((lm[j + 4] & 0x0F) << 4);
    }
    s
}

/// Scale and min for `x ≈ scale * q - min`, `q` in `0..=nmax`: start from the range, then a few
/// rounds of least squares on the current assignment (the idea of ggml's `make_qkx2_quants`).
fn fit_scale_min(x: &[f32], nmax: f32) -> (f32, f32) {
    let lo = x.iter().fold(0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(f32::MIN, |m, &v| m.max(v));
    if hi <= lo {
        return (0.0, -lo);
    }
    let err = |scale: f32, min: f32| -> f32 {
        x.iter()
            .map(|&v| {
                let q = ((v + min) / scale).round().clamp(0.0, nmax);
                (scale * q - min - v).powi(2)
            })
            .sum()
    };
    let (mut best_s, mut best_m) = ((hi - lo) / nmax, -lo);
    let mut best_e = err(best_s, best_m);
    let (mut s, mut m) = (best_s, best_m);
    for _ in 0..4 {
        let n = x.len() as f32;
        let (mut sq, mut sq2, mut sx, mut sqx) = (0f32, 0f32, 0f32, 0f32);
        for &v in x {
            let q = ((v + m) / s).round().clamp(0.0, nmax);
            sq += q;
            sq2 += q * q;
            sx += v;
            sqx += q * v;
        }
        let det = n * sq2 - sq * sq;
        if det <= 0.0 {
            break;
        }
        let ns = (n * sqx - sq * sx) / det;
        let nm = (ns * sq - sx) / n; // x ≈ ns*q - nm
        if ns <= 0.0 || nm < 0.0 {
            break;
        }
        let e = err(ns, nm);
        (s, m) = (ns, nm);
        if e < best_e {
            (best_s, best_m, best_e) = (ns, nm, e);
        }
    }
    (best_s, best_m)
}

/// The eight sub-blocks' (scale, min) as the super-block's f16 `d`, `dmin` and 6-bit
/// multiples of them (Q4_K, Q5_K).
fn pack_fits(fits: &[(f32, f32)]) -> (f16, f16, [u8; 8], [u8; 8]) {
    let max_s = fits.iter().fold(0f32, |a, f| a.max(f.0));
    let max_m = fits.iter().fold(0f32, |a, f| a.max(f.1));
    let d = f16::from_f32(max_s / 63.0);
    let dmin = f16::from_f32(max_m / 63.0);
    let (df, dminf) = (d.to_f32(), dmin.to_f32());
    let six = |v: f32, unit: f32| {
        if unit > 0.0 {
            (v / unit).round().clamp(0.0, 63.0) as u8
        } else {
            0
        }
    };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for (j, &(s, m)) in fits.iter().enumerate() {
        (ls[j], lm[j]) = (six(s, df), six(m, dminf));
    }
    (d, dmin, ls, lm)
}

/// Q4_K: per 32 values `x ≈ d*sc*q - dmin*m` with 4-bit `q` and 6-bit `sc`, `m`.
/// `x.len()` must be a multiple of 256.
pub fn quantize_q4_k(x: &[f32], out: &mut Vec<u8>) {
    assert_eq!(x.len() % QK_K, 0, "partial block");
    for block in x.chunks_exact(QK_K) {
        let fits: Vec<(f32, f32)> = block.chunks(32).map(|s| fit_scale_min(s, 15.0)).collect();
        let (d, dmin, ls, lm) = pack_fits(&fits);
        let (df, dminf) = (d.to_f32(), dmin.to_f32());
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&dmin.to_le_bytes());
        out.extend_from_slice(&pack_scale_min_k4(&ls, &lm));
        let mut qs = [0u8; 128];
        for j in 0..8 {
            let (sc, m) = (df * ls[j] as f32, dminf * lm[j] as f32);
            for i in 0..32 {
                let q = if sc > 0.0 {
                    ((block[j * 32 + i] + m) / sc).round().clamp(0.0, 15.0) as u8
                } else {
                    0
                };
                qs[(j / 2) * 32 + i] |= q << (4 * (j % 2));
            }
        }
        out.extend_from_slice(&qs);
    }
}

/// Q5_K: per 32 values `x ≈ d*sc*q - dmin*m` with 5-bit `q` (low nibbles in `qs`, fifth bits in
/// `qh`, bit `j` for sub-block `j`) and 6-bit `sc`, `m`. `x.len()` must be a multiple of 256.
pub fn quantize_q5_k(x: &[f32], out: &mut Vec<u8>) {
    assert_eq!(x.len() % QK_K, 0, "partial block");
    for block in x.chunks_exact(QK_K) {
        let fits: Vec<(f32, f32)> = block.chunks(32).map(|s| fit_scale_min(s, 31.0)).collect();
        let (d, dmin, ls, lm) = pack_fits(&fits);
        let (df, dminf) = (d.to_f32(), dmin.to_f32());
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&dmin.to_le_bytes());
        out.extend_from_slice(&pack_scale_min_k4(&ls, &lm));
        let (mut qh, mut qs) = ([0u8; 32], [0u8; 128]);
        for j in 0..8 {
            let (sc, m) = (df * ls[j] as f32, dminf * lm[j] as f32);
            for i in 0..32 {
                let q = if sc > 0.0 {
                    ((block[j * 32 + i] + m) / sc).round().clamp(0.0, 31.0) as u8
                } else {
                    0
                };
                qs[(j / 2) * 32 + i] |= (q & 0x0F) << (4 * (j % 2));
                qh[i] |= (q >> 4) << j;
            }
        }
        out.extend_from_slice(&qh);
        out.extend_from_slice(&qs);
    }
}

/// Q6_K: per 16 values `x ≈ d*sc*(q-32)` with 6-bit `q` and signed 8-bit `sc`; the value of
/// largest magnitude in each 16 maps to -32 exactly. `x.len()` must be a multiple of 256.
pub fn quantize_q6_k(x: &[f32], out: &mut Vec<u8>) {
    assert_eq!(x.len() % QK_K, 0, "partial block");
    for block in x.chunks_exact(QK_K) {
        let scales: Vec<f32> = block
            .chunks(16)
            .map(|s| {
                let v = s
                    .iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                v / -32.0
            })
            .collect();
        let amax = scales.iter().fold(0f32, |m, s| m.max(s.abs()));
        let d = f16::from_f32(amax / 127.0);
        let df = d.to_f32();
        let ls: Vec<i8> = scales
            .iter()
            .map(|&s| {
                if df > 0.0 {
                    (s / df).round().clamp(-127.0, 127.0) as i8
                } else {
                    0
                }
            })
            .collect();
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for k in 0..QK_K {
            let step = df * ls[k / 16] as f32;
            let q = if step != 0.0 {
                ((block[k] / step).round().clamp(-32.0, 31.0) as i32 + 32) as u8
            } else {
                32
            };
            let (h, e) = (k / 128, k % 128);
            ql[h * 64 + e % 64] |= (q & 0x0F) << (4 * (e / 64));
            qh[h * 32 + e % 32] |= (q >> 4) << (2 * (e / 32));
        }
        out.extend_from_slice(&ql);
        out.extend_from_slice(&qh);
        out.extend(ls.iter().map(|&s| s as u8));
        out.extend_from_slice(&d.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_round_trip_error_is_within_half_a_step() {
        let x: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut q = Vec::new();
        quantize_q8_0(&x, &mut q);
        assert_eq!(q.len(), 3 * 34);
        let mut y = Vec::new();
        BlockFormat::Q8_0.dequantize(&q, &mut y);
        for (b, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let step = amax / 127.0;
            for (a, c) in xs.iter().zip(ys) {
                assert!(
                    (a - c).abs() <= 0.5 * step * 1.01 + 1e-3 * step,
                    "block {b}: {a} vs {c}"
                );
            }
        }
    }
}
