//! Reference kernels in f32. Row-major everywhere; a linear weight is `[out, in]` as PyTorch
//! stores it, so `y = x W^T`.

use rayon::prelude::*;

/// Dot product with 8 independent accumulators (vectorizes; fixed summation order).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = 0f32;
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + s
}

/// `y[n, m] = x[n, k] · w[m, k]^T`.
pub fn matmul_t(x: &[f32], w: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    assert_eq!(
        x.len(),
        n * k,
        "matmul_t: x has {} values, expected [{n}, {k}]",
        x.len()
    );
    assert_eq!(
        w.len(),
        m * k,
        "matmul_t: w has {} values, expected [{m}, {k}]",
        w.len()
    );
    let mut y = vec![0f32; n * m];
    if n * m * k < 1 << 14 {
        for (i, row) in y.chunks_mut(m.max(1)).enumerate() {
            let xi = &x[i * k..(i + 1) * k];
            for (j, out) in row.iter_mut().enumerate() {
                *out = dot(xi, &w[j * k..(j + 1) * k]);
            }
        }
        return y;
    }
    // Parallel over blocks of output columns (one pass over each weight block for all rows).
    const BLOCK: usize = 16;
    let blocks: Vec<(usize, Vec<f32>)> = (0..m.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let (j0, j1) = (b * BLOCK, ((b + 1) * BLOCK).min(m));
            let mut out = vec![0f32; n * (j1 - j0)];
            for i in 0..n {
                let xi = &x[i * k..(i + 1) * k];
                for j in j0..j1 {
                    out[i * (j1 - j0) + j - j0] = dot(xi, &w[j * k..(j + 1) * k]);
                }
            }
            (j0, out)
        })
        .collect();
    for (j0, out) in blocks {
        let width = out.len() / n.max(1);
        for i in 0..n {
            y[i * m + j0..i * m + j0 + width].copy_from_slice(&out[i * width..(i + 1) * width]);
        }
    }
    y
}

/// RMSNorm over rows of width `weight.len()`: `w * x / sqrt(mean(x^2) + eps)`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let d = weight.len();
    let mut y = vec![0f32; x.len()];
    // Rows on the pool for a prefill (the values are the same either way).
    crate::pool::rows_mut(&mut y, d, 16, &|r0, ys| {
        for (xr, yr) in x[r0 * d..].chunks(d).zip(ys.chunks_mut(d)) {
            let ms = sum_squares(xr) / d as f32;
            let r = 1.0 / (ms + eps).sqrt();
            for i in 0..d {
                yr[i] = weight[i] * (xr[i] * r);
            }
        }
    });
    y
}

/// `sum x_i^2` in 16 interleaved partial sums (lane `j` takes `x[16k + j]`), added pairwise at
/// the end: the compiler vectorizes it on any target, to the same bits (a strict left-to-right
/// sum was a chain of dependent adds, ~3 us per 2,048-value row).
pub fn sum_squares(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    for (a, v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v * v;
    }
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0]
}

/// LayerNorm over rows of width `weight.len()` with bias (biased variance, as PyTorch).
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let d = weight.len();
    let mut y = vec![0f32; x.len()];
    for (xr, yr) in x.chunks(d).zip(y.chunks_mut(d)) {
        let mean = xr.iter().sum::<f32>() / d as f32;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let r = 1.0 / (var + eps).sqrt();
        for i in 0..d {
            yr[i] = (xr[i] - mean) * r * weight[i] + bias[i];
        }
    }
    y
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// In-place softmax over `x` (max-subtracted).
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Indices of the `k` largest values, largest first; equal values keep the lower index first.
/// NaN sorts last.
pub fn topk(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| {
        x[b].partial_cmp(&x[a])
            .unwrap_or_else(|| x[a].is_nan().cmp(&x[b].is_nan()))
            .then(a.cmp(&b))
    });
    idx.truncate(k.min(x.len()));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_squares_matches_a_sum_in_f64() {
        // Lengths below, at and past the 16 lanes, with a remainder, up to a hidden row.
        for len in [0, 1, 15, 16, 17, 100, 511, 2048, 6147] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0)
                .collect();
            let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
            let got = sum_squares(&x) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1.0),
                "len {len}: {got} vs {want}"
            );
        }
    }

    fn naive_matmul(x: &[f32], w: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
        let mut y = vec![0f64; n * m];
        for i in 0..n {
            for j in 0..m {
                for t in 0..k {
                    y[i * m + j] += x[i * k + t] as f64 * w[j * k + t] as f64;
                }
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn matmul_matches_f64_on_awkward_sizes() {
        let mut s = 7u64;
        for &(n, k, m) in &[
            (1, 1, 1),
            (3, 17, 5),
            (1, 129, 67),
            (5, 64, 300),
            (2, 1000, 33),
        ] {
            let x: Vec<f32> = (0..n * k).map(|_| lcg(&mut s)).collect();
            let w: Vec<f32> = (0..m * k).map(|_| lcg(&mut s)).collect();
            let (a, b) = (matmul_t(&x, &w, n, k, m), naive_matmul(&x, &w, n, k, m));
            for (p, q) in a.iter().zip(&b) {
                assert!(
                    (p - q).abs() <= 1e-5 * (1.0 + q.abs()) * (k as f32).sqrt(),
                    "{n}x{k}x{m}: {p} vs {q}"
                );
            }
        }
    }

    #[test]
    fn topk_orders_and_breaks_ties_by_index() {
        assert_eq!(topk(&[1.0, 3.0, 3.0, 2.0], 3), vec![1, 2, 3]);
        assert_eq!(topk(&[f32::NEG_INFINITY, 0.0], 2), vec![1, 0]);
        assert_eq!(topk(&[1.0, 2.0], 5), vec![1, 0]);
    }

    #[test]
    fn norms() {
        let y = rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((y[0] - 3.0 / r).abs() < 1e-6 && (y[1] - 8.0 / r).abs() < 1e-6);
        let y = layer_norm(&[1.0, 3.0], &[1.0, 1.0], &[0.5, 0.5], 0.0);
        assert!((y[0] + 0.5).abs() < 1e-6 && (y[1] - 1.5).abs() < 1e-6);
    }
}
