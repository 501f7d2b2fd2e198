//! Fast kernels against their plain twins on random rows of awkward sizes: every SIMD dot
//! against `dot_q_ref`/`dot_f_ref`, the integer reference against f32 math on the dequantized
//! values, the quantizers' round-trip error, and the pooled matmul against the f32 reference.

use glm5_kernels::qdot::{self, dot_f_ref, dot_q_ref, Isa, Q8Acts, WFormat};
use glm5_kernels::{cpu, Matrix};

mod common;

use common::{close, isas, Lcg};

#[test]
fn quantized_dots_match_the_reference_on_every_isa() {
    let mut rng = Lcg(11);
    for fmt in [WFormat::Q8_0, WFormat::Q4K, WFormat::Q5K, WFormat::Q6K] {
        for blocks in [1usize, 3, 7] {
            let cols = blocks * fmt.block_len().max(32);
            let cols = cols.div_ceil(fmt.block_len()) * fmt.block_len();
            // Uneven magnitudes, some outliers, some all-zero blocks.
            let mut w = rng.vec(cols, 0.05);
            w[cols / 3] = 0.9;
            let mut x = rng.vec(cols, 3.0);
            x[..32].iter_mut().for_each(|v| *v = 0.0);
            let m = Matrix::quantize(&w, 1, cols, fmt).unwrap();
            let acts = Q8Acts::quantize(&x, cols);
            let reference = dot_q_ref(fmt, m.row_bytes(0), acts.row(0));
            // The integer reference equals f32 math on the dequantized weights and activations.
            let wd = m.row_f32(0);
            let xd: Vec<f32> = (0..cols)
                .map(|i| acts.qs[i] as f32 * acts.d[i / 32])
                .collect();
            let scale: f32 = wd.iter().zip(&xd).map(|(a, b)| (a * b).abs()).sum();
            close(
                reference,
                cpu::dot(&wd, &xd),
                scale,
                &format!("{fmt:?} ref"),
            );
            for isa in isas() {
                let fast = qdot::dot_q(fmt, m.row_bytes(0), acts.row(0), isa);
                close(
                    fast,
                    reference,
                    scale,
                    &format!("{fmt:?} {isa:?} cols {cols}"),
                );
            }
        }
    }
}

#[test]
fn q5_k_reference_dot_matches_dequantized_math() {
    // No quantizer for Q5_K: build random blocks (valid f16 scales) and compare.
    let mut rng = Lcg(5);
    let mut bytes = Vec::new();
    for _ in 0..2 {
        bytes.extend_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        bytes.extend_from_slice(&half::f16::from_f32(0.02).to_le_bytes());
        bytes.extend((0..172).map(|_| ((rng.next() + 1.0) * 127.0) as u8));
    }
    let x = rng.vec(512, 2.0);
    let acts = Q8Acts::quantize(&x, 512);
    let mut wd = Vec::new();
    WFormat::Q5K.dequantize_row(&bytes, &mut wd);
    let xd: Vec<f32> = (0..512)
        .map(|i| acts.qs[i] as f32 * acts.d[i / 32])
        .collect();
    let scale: f32 = wd.iter().zip(&xd).map(|(a, b)| (a * b).abs()).sum();
    let r = dot_q_ref(WFormat::Q5K, &bytes, acts.row(0));
    close(r, cpu::dot(&wd, &xd), scale, "q5_k");
    for isa in isas() {
        close(
            qdot::dot_q(WFormat::Q5K, &bytes, acts.row(0), isa),
            r,
            scale,
            &format!("q5_k {isa:?}"),
        );
    }
}

#[test]
fn float_dots_match_the_reference() {
    let mut rng = Lcg(3);
    for fmt in [WFormat::F32, WFormat::F16, WFormat::BF16] {
        for n in [1, 15, 16, 17, 100, 257] {
            let w = rng.vec(n, 1.0);
            let x = rng.vec(n, 1.0);
            let m = Matrix::quantize(&w, 1, n, fmt).unwrap();
            let r = dot_f_ref(fmt, m.row_bytes(0), &x);
            for isa in isas() {
                let f = qdot::dot_f(fmt, m.row_bytes(0), &x, isa);
                close(f, r, n as f32, &format!("{fmt:?} {isa:?} n {n}"));
            }
        }
    }
}

#[test]
fn quantizers_round_trip_within_their_step() {
    let mut rng = Lcg(9);
    let x = rng.vec(256 * 8, 1.0);
    for (fmt, rel_rmse) in [
        (WFormat::Q8_0, 0.006),
        (WFormat::Q6K, 0.02),
        (WFormat::Q5K, 0.035),
        (WFormat::Q4K, 0.07),
    ] {
        let m = Matrix::quantize(&x, 8, 256, fmt).unwrap();
        let y = m.to_f32();
        let err = (x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f32>()
            / x.iter().map(|a| a * a).sum::<f32>())
        .sqrt();
        assert!(err < rel_rmse, "{fmt:?}: relative RMSE {err}");
    }
    // Constant and zero blocks survive.
    for fmt in [WFormat::Q4K, WFormat::Q6K, WFormat::Q8_0] {
        let z = Matrix::quantize(&[0.0; 256], 1, 256, fmt).unwrap().to_f32();
        assert!(z.iter().all(|v| *v == 0.0), "{fmt:?} zeros");
        let c = Matrix::quantize(&[0.5; 256], 1, 256, fmt).unwrap().to_f32();
        assert!(
            c.iter().all(|v| (v - 0.5).abs() < 0.01),
            "{fmt:?} constant: {:?}",
            &c[..4]
        );
    }
}

#[test]
fn pooled_matmul_matches_the_f32_reference() {
    let mut rng = Lcg(21);
    for fmt in [
        WFormat::F32,
        WFormat::BF16,
        WFormat::Q8_0,
        WFormat::Q4K,
        WFormat::Q6K,
    ] {
        for (n, rows, cols) in [(1, 37, 256), (3, 129, 512), (70, 19, 256)] {
            let w = rng.vec(rows * cols, 0.1);
            let x = rng.vec(n * cols, 1.0);
            let m = Matrix::quantize(&w, rows, cols, fmt).unwrap();
            let fast = m.matmul(&x);
            let reference = m.matmul_ref(&x);
            // Quantized formats also quantize the activations (8-bit, ~0.4% per value).
            let tol = if fmt.is_quantized() { 0.02 } else { 1e-4 };
            let norm =
                (reference.iter().map(|v| v * v).sum::<f32>() / reference.len() as f32).sqrt();
            for (a, b) in fast.iter().zip(&reference) {
                assert!(
                    (a - b).abs() <= tol * norm + 1e-5,
                    "{fmt:?} {n}x{rows}x{cols}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    assert!(Matrix::quantize(&[0.0; 100], 1, 100, WFormat::Q8_0).is_err());
    assert!(Matrix::quantize(&[0.0; 96], 1, 96, WFormat::Q4K).is_err());
    let m = Matrix::from_bytes(
        WFormat::Q8_0,
        2,
        32,
        glm5_kernels::Bytes::Owned(vec![0; 67]),
    );
    assert!(m.unwrap_err().contains("68 bytes"));
}

/// Q8_0 rows with every byte value (including -128) and random f16 scales.
fn raw_q8_0(rng: &mut Lcg, rows: usize, cols: usize) -> Matrix {
    let mut bytes = Vec::with_capacity(rows * cols / 32 * 34);
    for _ in 0..rows * cols / 32 {
        bytes.extend_from_slice(&half::f16::from_f32(rng.next() * 0.01).to_le_bytes());
        bytes.extend((0..32).map(|_| (rng.next() * 128.0 + 128.0) as u8));
    }
    Matrix::from_bytes(WFormat::Q8_0, rows, cols, glm5_kernels::Bytes::Owned(bytes)).unwrap()
}

#[test]
fn grouped_q8_0_keeps_every_value_and_matches_plain_rows() {
    let mut rng = Lcg(31);
    for (rows, cols) in [(16, 32), (37, 96), (64, 512), (15, 64)] {
        let plain = raw_q8_0(&mut rng, rows, cols);
        let grouped = plain.clone().packed();
        assert_eq!(grouped.is_grouped(), rows >= 16, "{rows}x{cols}");
        assert_eq!(grouped.to_f32(), plain.to_f32(), "{rows}x{cols}");
        assert_eq!(grouped.nbytes(), plain.nbytes());
        if rows >= 32 {
            let s = grouped.slice_rows(16, rows);
            assert_eq!(s.to_f32(), plain.slice_rows(16, rows).to_f32());
        }
        // The group reference dot is the per-row reference, bit for bit; the SIMD twins agree
        // with it to float rounding.
        let x = rng.vec(4 * cols, 1.0);
        let acts = Q8Acts::quantize(&x, cols);
        let rb = WFormat::Q8_0.row_bytes(cols);
        for g in 0..rows / 16 {
            let group = &grouped.bytes()[g * 16 * rb..(g + 1) * 16 * rb];
            for t in 0..4 {
                let r16 = glm5_kernels::packed::dot16_ref(WFormat::Q8_0, group, acts.row(t));
                for (i, v) in r16.iter().enumerate() {
                    let want = dot_q_ref(WFormat::Q8_0, plain.row_bytes(g * 16 + i), acts.row(t));
                    assert_eq!(*v, want, "{rows}x{cols} row {} token {t}", g * 16 + i);
                }
            }
            for isa in isas() {
                for n in 1..=4 {
                    let rows_t: Vec<_> = (0..n).map(|t| acts.row(t)).collect();
                    let mut y = [[0f32; 16]; 4];
                    // Prefetching the next group (past the end for the last) changes no value.
                    let ahead = g % 2 == 0;
                    glm5_kernels::packed::dot16(WFormat::Q8_0, group, &rows_t, &mut y, isa, ahead);
                    for (t, yt) in y[..n].iter().enumerate() {
                        let r16 =
                            glm5_kernels::packed::dot16_ref(WFormat::Q8_0, group, acts.row(t));
                        let scale = r16.iter().fold(1f32, |m, v| m.max(v.abs()));
                        for (a, b) in yt.iter().zip(&r16) {
                            close(*a, *b, scale, &format!("{isa:?} n={n} {rows}x{cols}"));
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn grouped_matmul_matches_the_plain_matmul() {
    let mut rng = Lcg(41);
    for (n, rows, cols) in [(1, 48, 64), (5, 37, 256), (70, 35, 128), (9, 16, 32)] {
        let plain = raw_q8_0(&mut rng, rows, cols);
        let grouped = plain.clone().packed();
        let x = rng.vec(n * cols, 1.0);
        let (a, b) = (grouped.matmul(&x), plain.matmul(&x));
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            close(*p, *q, scale, &format!("{n}x{rows}x{cols} at {i}"));
        }
    }
}

#[test]
fn float_vector_ops_match_their_reference() {
    let mut rng = Lcg(51);
    for n in [1usize, 15, 16, 17, 33, 64, 511, 576] {
        let (a, b) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
        close(
            glm5_kernels::fvec::dot(&a, &b),
            cpu::dot(&a, &b),
            n as f32,
            &format!("dot n={n}"),
        );
        let mut y1 = rng.vec(n, 1.0);
        let mut y2 = y1.clone();
        glm5_kernels::fvec::axpy(&mut y1, 0.37, &a);
        glm5_kernels::fvec::axpy_ref(&mut y2, 0.37, &a);
        for (p, q) in y1.iter().zip(&y2) {
            close(*p, *q, 1.0, &format!("axpy n={n}"));
        }
        // SwiGLU over gate values wide enough to reach both tails of the exponential.
        let g: Vec<f32> = rng.vec(n, 30.0);
        let (v1, v2) = (
            glm5_kernels::fvec::swiglu(&g, &b),
            glm5_kernels::fvec::swiglu_ref(&g, &b),
        );
        assert_eq!(v1.len(), n);
        for (i, (p, q)) in v1.iter().zip(&v2).enumerate() {
            let tol = 4.0 * f32::EPSILON * q.abs() + 1e-30;
            assert!(
                (p - q).abs() <= tol,
                "swiglu n={n} at {i}: g={} u={}: {p} vs {q}",
                g[i],
                b[i]
            );
        }
        // Softmax numerators over scores down to far below the max (exp underflows to 0).
        let x: Vec<f32> = rng.vec(n, 60.0);
        let m = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let (mut e1, mut e2) = (x.clone(), x.clone());
        let (s1, s2) = (
            glm5_kernels::fvec::exp_sub(&mut e1, m),
            glm5_kernels::fvec::exp_sub_ref(&mut e2, m),
        );
        for (i, (p, q)) in e1.iter().zip(&e2).enumerate() {
            let tol = 4.0 * f32::EPSILON * q.abs() + 1e-38;
            assert!((p - q).abs() <= tol, "exp_sub n={n} at {i}: {p} vs {q}");
        }
        assert!(
            (s1 - s2).abs() <= 1e-5 * s2,
            "exp_sub n={n}: sums {s1} vs {s2}"
        );
    }
}

#[test]
fn activation_quantizer_matches_its_reference_bit_for_bit() {
    let mut rng = Lcg(61);
    // Random blocks, blocks with exact halves after scaling, zeros, one huge value.
    let mut x = rng.vec(32 * 40, 3.0);
    for (i, v) in x[32..64].iter_mut().enumerate() {
        *v = (i as f32 - 16.0) * 0.5;
    }
    x[64..96].fill(0.0);
    x[100] = 1e30;
    for (i, v) in x[128..160].iter_mut().enumerate() {
        *v = 127.0 - i as f32 + 0.5;
    }
    // Repeated past PARALLEL_MIN values, so the blocks quantize in parallel chunks too.
    let blocks = 40 * (glm5_kernels::pool::PARALLEL_MIN / (32 * 40) + 2);
    let x = x.repeat(blocks / 40);
    let a = Q8Acts::quantize(&x, 32 * 40);
    for b in 0..blocks {
        let mut qs = [0i8; 32];
        let (d, s0, s1) = qdot::quantize_block_ref(&x[b * 32..b * 32 + 32], &mut qs);
        assert_eq!(&a.qs[b * 32..b * 32 + 32], &qs, "block {b}");
        assert_eq!(
            (a.d[b], a.s16[2 * b], a.s16[2 * b + 1]),
            (d, s0, s1),
            "block {b}"
        );
        assert_eq!(a.bias[b], -128 * (s0 + s1));
    }
}

#[test]
fn gathered_activation_rows_are_the_rows_quantized_again() {
    let mut rng = Lcg(71);
    let cols = 96;
    let x = rng.vec(7 * cols, 2.0);
    let all = Q8Acts::quantize(&x, cols);
    let rows = [5usize, 0, 5, 3];
    let xs: Vec<f32> = rows
        .iter()
        .flat_map(|&r| x[r * cols..(r + 1) * cols].iter().copied())
        .collect();
    let (g, want) = (all.gather(&rows), Q8Acts::quantize(&xs, cols));
    assert_eq!((g.rows, g.cols), (4, cols));
    assert_eq!((&g.qs, &g.d), (&want.qs, &want.d));
    assert_eq!((&g.s16, &g.bias), (&want.s16, &want.bias));
}

#[test]
fn grouped_k_quants_keep_every_value_and_match_plain_rows() {
    let mut rng = Lcg(71);
    for (fmt, (n, rows, cols)) in [WFormat::Q4K, WFormat::Q6K]
        .into_iter()
        .flat_map(|f| [(1, 16, 256), (3, 37, 512), (70, 32, 256), (5, 48, 768)].map(|c| (f, c)))
    {
        // Random bytes: every scale/min bit pattern and nibble; sane f16 d and dmin.
        let mut bytes = Vec::with_capacity(rows * fmt.row_bytes(cols));
        for _ in 0..rows * cols / 256 {
            let mut b: Vec<u8> = (0..fmt.block_bytes())
                .map(|_| (rng.next() * 128.0 + 128.0) as u8)
                .collect();
            let d = half::f16::from_f32(rng.next() * 0.01).to_le_bytes();
            let at = if fmt == WFormat::Q4K { 0 } else { 208 };
            b[at..at + 2].copy_from_slice(&d);
            if fmt == WFormat::Q4K {
                b[2..4].copy_from_slice(&half::f16::from_f32(rng.next() * 0.01).to_le_bytes());
            }
            bytes.extend(b);
        }
        let plain = Matrix::from_bytes(fmt, rows, cols, glm5_kernels::Bytes::Owned(bytes)).unwrap();
        let grouped = plain.clone().packed();
        assert_eq!(grouped.is_grouped(), Isa::detect() == Isa::Avx512Vnni);
        assert_eq!(grouped.to_f32(), plain.to_f32(), "{rows}x{cols}");
        let x = rng.vec(n * cols, 1.0);
        let (a, b) = (grouped.matmul(&x), plain.matmul(&x));
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            close(*p, *q, scale, &format!("{fmt:?} {n}x{rows}x{cols} at {i}"));
        }
        // The SIMD group kernel against the group reference, 1-4 tokens.
        let acts = Q8Acts::quantize(&x[..cols.min(x.len())].repeat(4), cols);
        let rb = fmt.row_bytes(cols);
        let group = &plain.clone().packed().bytes()[..16 * rb].to_vec();
        if grouped.is_grouped() {
            for isa in isas() {
                let rows_t: Vec<_> = (0..4).map(|t| acts.row(t)).collect();
                let mut y = [[0f32; 16]; 4];
                glm5_kernels::packed::dot16(fmt, group, &rows_t, &mut y, isa, true);
                let r16 = glm5_kernels::packed::dot16_ref(fmt, group, acts.row(0));
                for yt in &y {
                    for (p, q) in yt.iter().zip(&r16) {
                        close(*p, *q, scale, &format!("{fmt:?} group {isa:?}"));
                    }
                }
            }
        }
    }
}

#[test]
fn activation_row_views_compute_what_their_own_rows_do() {
    use glm5_kernels::matrix::matmul_many;
    use glm5_kernels::Acts;
    let mut rng = Lcg(93);
    let (rows, cols) = (48, 96);
    for fmt in [WFormat::Q8_0, WFormat::Q4K, WFormat::F32] {
        let cols = if fmt == WFormat::Q4K { 256 } else { cols };
        let m = Matrix::quantize(&rng.vec(rows * cols, 0.5), rows, cols, fmt)
            .unwrap()
            .packed();
        let x = rng.vec(7 * cols, 1.0);
        let all = Acts::new(&x, cols);
        // Views of rows 2..5 and 5..7, and a gather from a view (rows offset twice).
        let (a, b) = (Acts::rows(&all, 2, 5), Acts::rows(&all, 5, 7));
        let gx = [&x[6 * cols..7 * cols], &x[5 * cols..6 * cols]].concat();
        let g = Acts::gather(&b, &[1, 0], &gx);
        let got = matmul_many(&[(&m, &a), (&m, &b)]);
        let own = |r0: usize, r1: usize| m.matmul(&x[r0 * cols..r1 * cols]);
        assert_eq!(got[0], own(2, 5), "{fmt:?} rows 2..5");
        assert_eq!(got[1], own(5, 7), "{fmt:?} rows 5..7");
        let q = |a: &Acts, t: usize| a.q_row(t).map(|r| (r.qs.to_vec(), r.d.to_vec()));
        assert_eq!(
            (q(&g, 0), q(&g, 1)),
            (q(&all, 6), q(&all, 5)),
            "{fmt:?} gather"
        );
    }
}

/// The fused decode SwiGLU (`fused::swiglu_many`) gives the bits of its three steps done apart:
/// `matmul_many` of gate and up, `fvec::swiglu`, `Acts::new` (the 8-bit hidden rows too), for
/// grouped and plain weights, 1-8 activation rows, several MLPs of different widths at once
/// (units that split an MLP's rows, and ones that hold it whole).
#[test]
fn fused_swiglu_matches_its_steps_bit_for_bit() {
    use glm5_kernels::fused::{fits, swiglu_many};
    use glm5_kernels::matrix::matmul_many;
    use glm5_kernels::{fvec, Acts};
    let mut rng = Lcg(101);
    // What it does not take (the callers fall back): mixed formats, 16-row widths, 9 rows.
    let m = |rows: usize, fmt: WFormat, rng: &mut Lcg| {
        Matrix::quantize(&rng.vec(rows * 256, 0.5), rows, 256, fmt).unwrap()
    };
    let (q8, q4, q8_16) = (
        m(32, WFormat::Q8_0, &mut rng),
        m(32, WFormat::Q4K, &mut rng),
        m(16, WFormat::Q8_0, &mut rng),
    );
    let (x1, x9) = (rng.vec(256, 1.0), rng.vec(9 * 256, 1.0));
    let (a1, a9) = (Acts::new(&x1, 256), Acts::new(&x9, 256));
    assert!(fits(&q8, &q8, &a1));
    assert!(!fits(&q8, &q4, &a1) && !fits(&q8_16, &q8_16, &a1) && !fits(&q8, &q8, &a9));
    for (fmt, cols, grouped) in [
        (WFormat::Q8_0, 96, true),
        (WFormat::Q8_0, 64, false),
        (WFormat::Q4K, 256, true),
        (WFormat::Q6K, 256, true),
        (WFormat::BF16, 40, false),
    ] {
        let mats: Vec<(Matrix, Matrix)> = [32usize, 96, 2048]
            .iter()
            .map(|&inter| {
                let m = |rng: &mut Lcg| {
                    let m = Matrix::quantize(&rng.vec(inter * cols, 0.5), inter, cols, fmt);
                    let m = m.unwrap();
                    if grouped {
                        m.packed()
                    } else {
                        m
                    }
                };
                (m(&mut rng), m(&mut rng))
            })
            .collect();
        for n in [1usize, 3, 8] {
            let xs: Vec<Vec<f32>> = mats.iter().map(|_| rng.vec(n * cols, 1.0)).collect();
            let acts: Vec<Acts> = xs.iter().map(|x| Acts::new(x, cols)).collect();
            let mlps: Vec<_> = mats
                .iter()
                .zip(&acts)
                .map(|((g, u), a)| (g, u, a))
                .collect();
            let got = swiglu_many(&mlps);
            for (k, ((g, u), a)) in mats.iter().zip(&acts).enumerate() {
                let gu = matmul_many(&[(g, a), (u, a)]);
                let h = fvec::swiglu(&gu[0], &gu[1]);
                let what = format!("{fmt:?} inter {} n {n}", g.rows);
                assert_eq!(got[k].0, h, "{what}: hidden rows");
                let want = Acts::new(&h, g.rows);
                for t in 0..n {
                    let (w, q) = (want.q_row(t).unwrap(), got[k].1.row(t));
                    assert_eq!(
                        (w.qs, w.d, w.s16, w.bias),
                        (q.qs, q.d, q.s16, q.bias),
                        "{what}: 8-bit row {t}"
                    );
                }
            }
        }
    }
}
