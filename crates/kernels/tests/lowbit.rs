//! The low-bit formats' dots against their plain twins: the integer reference against f32 math
//! on the dequantized values, every ISA's kernel against the reference, and a matmul of several
//! activation rows (a row decoded once for all of them) against the f32 reference. Weight rows
//! are cut from the gguf-py fixtures (testdata/quant), whose scales are valid.

use std::path::PathBuf;

use glm5_kernels::lowbit::{DecodedRow, LowBit};
use glm5_kernels::matrix::Bytes;
use glm5_kernels::qdot::{self, dot_q_ref, Q8Acts, WFormat};
use glm5_kernels::{cpu, Matrix};

mod common;

use common::{close, isas, Lcg};

fn blocks(l: LowBit) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/quant")
        .join(format!("{}.blocks.bin", l.name()));
    std::fs::read(path).unwrap()
}

/// `n` blocks of `l` from its fixture, starting at block `at` (wrapping).
fn row(l: LowBit, at: usize, n: usize) -> Vec<u8> {
    let all = blocks(l);
    let (bb, count) = (l.block_bytes(), all.len() / l.block_bytes());
    (0..n)
        .flat_map(|i| {
            let b = (at + i) % count;
            all[b * bb..(b + 1) * bb].to_vec()
        })
        .collect()
}

/// The SIMD decoders give the reference's integers, scales and offsets exactly.
#[test]
fn register_decoders_match_the_reference_decoder() {
    for l in LowBit::ALL {
        let bytes = blocks(l);
        let mut want = DecodedRow::default();
        want.decode(l, &bytes);
        for isa in isas() {
            let mut got = DecodedRow::default();
            qdot::decode_row(l, &bytes, &mut got, isa);
            assert_eq!(got.q, want.q, "{} {isa:?} values", l.name());
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.sc), bits(&want.sc), "{} {isa:?} scales", l.name());
            if l.has_min() {
                assert_eq!(
                    bits(&got.mn),
                    bits(&want.mn),
                    "{} {isa:?} offsets",
                    l.name()
                );
            }
            assert_eq!(got.has_min, want.has_min);
        }
    }
}

#[test]
fn low_bit_dots_match_the_reference_on_every_isa() {
    let mut rng = Lcg(23);
    for l in LowBit::ALL {
        let fmt = WFormat::Low(l);
        for (at, n) in [(0, 1), (5, 3), (11, 7)] {
            let bytes = row(l, at, n);
            let cols = n * l.block_len();
            let mut x = rng.vec(cols, 3.0);
            x[..32].iter_mut().for_each(|v| *v = 0.0);
            let acts = Q8Acts::quantize(&x, cols);
            let reference = dot_q_ref(fmt, &bytes, acts.row(0));
            let mut wd = Vec::new();
            fmt.dequantize_row(&bytes, &mut wd);
            let xd: Vec<f32> = (0..cols)
                .map(|i| acts.qs[i] as f32 * acts.d[i / 32])
                .collect();
            let scale: f32 = wd.iter().zip(&xd).map(|(a, b)| (a * b).abs()).sum();
            let what = format!("{} {n} blocks", l.name());
            close(reference, cpu::dot(&wd, &xd), scale, &format!("{what} ref"));
            for isa in isas() {
                let fast = qdot::dot_q(fmt, &bytes, acts.row(0), isa);
                close(fast, reference, scale, &format!("{what} {isa:?}"));
            }
        }
    }
}

#[test]
fn low_bit_matmul_matches_the_f32_reference() {
    let mut rng = Lcg(31);
    for l in LowBit::ALL {
        // 19 rows of 2 (or 9 legacy) blocks; 1, 5 and 70 activation rows (decode, a verify
        // step, a prefill unit boundary).
        let per_row = if l.block_len() == 32 { 9 } else { 2 };
        let (rows, cols) = (19, per_row * l.block_len());
        let bytes = row(l, 3, rows * per_row);
        let m = Matrix::from_bytes(WFormat::Low(l), rows, cols, Bytes::Owned(bytes)).unwrap();
        for n in [1, 5, 70] {
            let x = rng.vec(n * cols, 1.0);
            let (fast, reference) = (m.matmul(&x), m.matmul_ref(&x));
            let w = m.to_f32();
            for t in 0..n {
                for r in 0..rows {
                    let scale: f32 = (0..cols)
                        .map(|c| (w[r * cols + c] * x[t * cols + c]).abs())
                        .sum();
                    // The fast path quantizes activations to 8 bits: within a percent of the
                    // row's absolute sum.
                    let (a, b) = (fast[t * rows + r], reference[t * rows + r]);
                    assert!(
                        (a - b).abs() <= 1e-2 * scale + 1e-5,
                        "{} n {n} token {t} row {r}: {a} vs {b} (scale {scale})",
                        l.name()
                    );
                }
            }
        }
    }
}

/// The IQ4 quantizers: relative RMS error of a round trip within what 4-bit levels allow, an
/// all-zero block stays zero, and the stored bytes decode through the reference.
#[test]
fn iq4_quantizers_round_trip() {
    use glm5_kernels::lowbit_quant::{quantize_iq4_nl, quantize_iq4_xs};
    // Bell-shaped values (a sum of three uniforms), as trained weights are.
    let mut rng = Lcg(41);
    let mut x: Vec<f32> = (0..1024)
        .map(|_| (rng.next() + rng.next() + rng.next()) * 0.02)
        .collect();
    x[7] = 0.3; // an outlier
    x[256..288].iter_mut().for_each(|v| *v = 0.0);
    for (l, quantize) in [
        (LowBit::IQ4NL, quantize_iq4_nl as fn(&[f32], &mut Vec<u8>)),
        (LowBit::IQ4XS, quantize_iq4_xs),
    ] {
        let mut bytes = Vec::new();
        quantize(&x, &mut bytes);
        assert_eq!(bytes.len(), x.len() / l.block_len() * l.block_bytes());
        let mut y = Vec::new();
        l.dequantize(&bytes, &mut y);
        assert!(y[256..288].iter().all(|&v| v == 0.0), "{}", l.name());
        let err: f32 = x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum();
        let norm: f32 = x.iter().map(|a| a * a).sum();
        let rel = (err / norm).sqrt();
        assert!(rel < 0.1, "{}: relative RMS error {rel}", l.name());
    }
}
