//! The lightning-indexer kernels against their references: fused scores within float rounding
//! of the plain formula, and the linear top-k selection equal to a full sort's set on random and
//! adversarial inputs (ties, -inf masks, NaN, k at the edges).

use glm5_kernels::cpu;
use glm5_kernels::dsa::{indexer_scores, indexer_scores_ref, topk_set};

fn rng(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

#[test]
fn fused_indexer_scores_match_the_reference() {
    let mut s = 9;
    for (heads, d, t) in [(1, 16, 1), (4, 32, 37), (16, 128, 300), (3, 33, 65)] {
        let q: Vec<f32> = (0..heads * d).map(|_| rng(&mut s)).collect();
        let w: Vec<f32> = (0..heads).map(|_| rng(&mut s)).collect();
        let keys: Vec<f32> = (0..t * d).map(|_| rng(&mut s)).collect();
        for last in [0, t / 2, t - 1] {
            let want = indexer_scores_ref(&q, &w, &keys, d, 0.125, last);
            let mut got = vec![0f32; t];
            // In two ranges, as the pool splits them.
            let mid = t / 3;
            indexer_scores(&q, &w, &keys, d, 0.125, last, (0, mid), &mut got[..mid]);
            indexer_scores(&q, &w, &keys, d, 0.125, last, (mid, t), &mut got[mid..]);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                if i > last {
                    assert_eq!(*a, f32::NEG_INFINITY);
                } else {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{heads}x{d} t={i}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn linear_topk_equals_the_full_sort_set() {
    let mut s = 5;
    let mut cases: Vec<Vec<f32>> = Vec::new();
    // 20011: several parts, run on the pool.
    for n in [1, 2, 3, 17, 1000, 5003, 20011] {
        cases.push((0..n).map(|_| rng(&mut s)).collect());
        // Heavy ties: few distinct values.
        cases.push((0..n).map(|_| (rng(&mut s) * 3.0).round()).collect());
        // Causal mask: a tail of -inf.
        cases.push(
            (0..n)
                .map(|i| {
                    if i > n / 2 {
                        f32::NEG_INFINITY
                    } else {
                        rng(&mut s)
                    }
                })
                .collect(),
        );
        // All equal, and a NaN among them.
        let mut c = vec![0.5f32; n];
        c[n / 2] = f32::NAN;
        cases.push(c);
        // Signed zeros (a negative head weight times a ReLU'd 0 gives -0), which rank equal,
        // and infinities.
        cases.push(
            (0..n)
                .map(|i| match i % 5 {
                    0 => -0.0,
                    1 => 0.0,
                    2 => f32::INFINITY,
                    _ => rng(&mut s).round(),
                })
                .collect(),
        );
        // Sorted ascending and descending (worst cases for naive pivots).
        cases.push((0..n).map(|i| i as f32).collect());
        cases.push((0..n).map(|i| -(i as f32)).collect());
    }
    for x in &cases {
        let n = x.len();
        for k in [0, 1, 2, 2048, n / 2, n.saturating_sub(1), n, n + 5] {
            let mut want = cpu::topk(x, k);
            want.sort_unstable();
            assert_eq!(topk_set(x, k), want, "n={n} k={k}");
        }
    }
}
