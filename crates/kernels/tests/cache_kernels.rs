//! The KV-cache kernels against their reference twins on awkward sizes: stored rows read back
//! (f32 exactly, bf16 within its rounding, 8-bit within its step), register-blocked attention
//! scores and weighted sums, and the indexer scan over bf16 and 8-bit keys (the 8-bit SIMD scan
//! equal to the integer reference; its effect against f32 keys bounded).

use glm5_kernels::attn;
use glm5_kernels::dsa::{self, QueryQ8};
use glm5_kernels::rows::{RowFormat, Rows};

fn rng(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn rand(n: usize, s: &mut u64) -> Vec<f32> {
    (0..n).map(|_| rng(s)).collect()
}

#[test]
fn rows_read_back_in_every_format_and_truncate() {
    let mut s = 3;
    for w in [4, 36, 128, 576] {
        let vals = rand(37 * w, &mut s);
        for fmt in [RowFormat::F32, RowFormat::Bf16, RowFormat::Q8] {
            let mut r = Rows::new(fmt, w);
            // Room reserved for part of them (a capacity only), then appended in uneven pieces,
            // as prefill chunks and decode steps do.
            r.reserve(20);
            r.push(&vals[..5 * w]);
            r.push(&vals[5 * w..21 * w]);
            r.push(&vals[21 * w..]);
            assert_eq!(r.len(), 37);
            let back = r.to_f32(0, 37);
            for t in 0..37 {
                let row = &vals[t * w..(t + 1) * w];
                let amax = row.iter().fold(0f32, |a, &x| a.max(x.abs()));
                for (a, b) in back[t * w..(t + 1) * w].iter().zip(row) {
                    let tol = match fmt {
                        RowFormat::F32 => 0.0,
                        RowFormat::Bf16 => b.abs() / 256.0,
                        RowFormat::Q8 => amax / 254.0 + 1e-7,
                    };
                    assert!((a - b).abs() <= tol, "{fmt:?} w {w} row {t}: {a} vs {b}");
                }
            }
            // Rollback then new rows: what is read is what was written last.
            r.truncate(18);
            assert_eq!(r.len(), 18);
            let fresh = rand(3 * w, &mut s);
            r.push(&fresh);
            let mut want = Rows::new(fmt, w);
            want.push(&vals[..18 * w]);
            want.push(&fresh);
            assert_eq!(r.to_f32(0, 21), want.to_f32(0, 21), "{fmt:?} w {w}");
            assert!(r.bytes() >= 21 * fmt.row_bytes(w) - 4 * w);
        }
    }
}

#[test]
fn attention_unit_matches_the_reference_over_f32_and_bf16_rows() {
    let mut s = 11;
    for (nh, w, r, nk) in [
        (1, 40, 32, 1),
        (4, 80, 64, 7),
        (5, 96, 64, 13),
        (16, 576, 512, 37),
        (20, 576, 512, 9),
        (17, 34, 32, 8),
        (6, 40, 24, 3),
        (3, 33, 32, 5),
    ] {
        let t_all = 50;
        let vals = rand(t_all * w, &mut s);
        // A scattered, unsorted selection with a repeat, as chunks of a selection can be.
        let mut ts: Vec<usize> = (0..nk).map(|i| (i * 17 + 3) % t_all).collect();
        if nk > 2 {
            ts[nk - 1] = ts[0];
        }
        // Scores of a few units, as the softmax scale makes them.
        let q: Vec<f32> = rand(nh * w, &mut s).iter().map(|x| x * 0.3).collect();
        for fmt in [RowFormat::F32, RowFormat::Bf16] {
            let mut rows = Rows::new(fmt, w);
            rows.push(&vals);
            let packed = attn::PackedQuery::new(&q, nh, w, r, fmt);
            let (mut got, mut want) = (vec![f32::NAN; nh * (r + 2)], vec![0f32; nh * (r + 2)]);
            attn::unit(&packed, &rows, &ts, r, &mut got);
            attn::unit_ref(&q, nh, &rows, &ts, r, &mut want);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{fmt:?} {nh} heads x {w} (r {r}) over {nk} keys, value {i}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn indexer_scan_over_bf16_and_8bit_keys() {
    let mut s = 21;
    for (heads, d, t) in [
        (1, 16, 1),
        (4, 32, 37),
        (16, 128, 300),
        (3, 36, 65),
        (32, 128, 40),
    ] {
        let q = rand(heads * d, &mut s);
        let w = rand(heads, &mut s);
        let vals = rand(t * d, &mut s);
        let mut f = Rows::new(RowFormat::F32, d);
        f.push(&vals);
        let mut scratch = Vec::new();
        for fmt in [RowFormat::F32, RowFormat::Bf16, RowFormat::Q8] {
            let mut rows = Rows::new(fmt, d);
            rows.push(&vals);
            // The f32 scan over the keys as stored is what bf16 must give exactly (up to
            // summation order); 8-bit also rounds the query, so it is compared for size.
            let widened = rows.to_f32(0, t);
            for last in [0, t / 2, t - 1] {
                let want = dsa::indexer_scores_ref(&q, &w, &widened, d, 0.125, last);
                let exact = dsa::indexer_scores_ref(&q, &w, &vals, d, 0.125, last);
                let mut got = vec![0f32; t];
                // Two ranges split at a block boundary, as the pool splits them.
                let mid = (t / 2) / 16 * 16;
                let query = dsa::IndexQuery::new(&q, &w, d, fmt);
                for (a, b) in [(0, mid), (mid, t)] {
                    dsa::indexer_scores_rows(
                        &query,
                        &rows,
                        0.125,
                        last,
                        (a, b),
                        &mut got[a..b],
                        &mut scratch,
                    );
                }
                let wsum: f32 = w.iter().map(|x| x.abs()).sum();
                for i in 0..t {
                    if i > last {
                        assert_eq!(got[i], f32::NEG_INFINITY);
                        continue;
                    }
                    let tol = match fmt {
                        RowFormat::F32 | RowFormat::Bf16 => 1e-5 * (1.0 + want[i].abs()),
                        // Query and key each within half a step of 1/127 of their range.
                        _ => 0.125 * wsum * (d as f32).sqrt() * 0.02,
                    };
                    assert!(
                        (got[i] - want[i]).abs() <= tol.max(1e-5),
                        "{fmt:?} {heads}x{d} t={i}: {} vs {}",
                        got[i],
                        want[i]
                    );
                    assert!(
                        (got[i] - exact[i]).abs() <= 0.125 * wsum * (d as f32).sqrt() * 0.02 + 1e-5
                    );
                }
            }
        }
        // The SIMD 8-bit scan equals the integer reference.
        let mut rows = Rows::new(RowFormat::Q8, d);
        rows.push(&vals);
        let qq = QueryQ8::new(&q, d);
        let (mut a, mut b) = (vec![0f32; t], vec![0f32; t]);
        dsa::indexer_scores_q8(&qq, &w, &rows, 0.125, t - 1, (0, t), &mut a);
        dsa::indexer_scores_q8_ref(&qq, &w, &rows, 0.125, (0, t), &mut b);
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "q8 scan {heads}x{d}: {x} vs {y}"
            );
        }
    }
}
