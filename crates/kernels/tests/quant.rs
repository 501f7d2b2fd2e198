//! Block formats against the independent oracle: the PyPI `gguf` package (llama.cpp's gguf-py)
//! dequantized the same bytes (testdata/quant, made by scripts/make_quant_fixtures.py).

use std::path::PathBuf;

use glm5_kernels::lowbit::LowBit;
use glm5_kernels::quant::{quantize_q8_0, BlockFormat};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/quant")
        .join(name)
}

fn check(format: BlockFormat, name: &str) {
    let bytes = std::fs::read(fixture(&format!("{name}.blocks.bin"))).unwrap();
    let (shape, expected) =
        glm5_format::read_npy_f32(&fixture(&format!("{name}.dequant.npy"))).unwrap();
    let blocks = bytes.len() / format.block_bytes();
    assert!(blocks >= 24, "{name}: {blocks} blocks");
    assert_eq!(shape.iter().product::<usize>(), blocks * format.block_len());
    let mut got = Vec::new();
    format.dequantize(&bytes, &mut got);
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        // Same f32 operations in the same order as gguf-py: exact up to one rounding.
        let tol = 1e-6 * e.abs().max(1e-6);
        assert!(
            (g - e).abs() <= tol,
            "{name} value {i} (block {}): {g} vs {e}",
            i / format.block_len()
        );
    }
}

#[test]
fn q8_0_matches_gguf_py() {
    check(BlockFormat::Q8_0, "q8_0");
}

#[test]
fn q4_k_matches_gguf_py() {
    check(BlockFormat::Q4K, "q4_k");
}

#[test]
fn q5_k_matches_gguf_py() {
    check(BlockFormat::Q5K, "q5_k");
}

#[test]
fn q6_k_matches_gguf_py() {
    check(BlockFormat::Q6K, "q6_k");
}

#[test]
fn q8_0_quantize_is_bit_exact_with_ggml_reference() {
    let (shape, x) = glm5_format::read_npy_f32(&fixture("q8_0.input.npy")).unwrap();
    assert_eq!(shape, vec![8, 96]);
    let expected = std::fs::read(fixture("q8_0.quantized.bin")).unwrap();
    let mut got = Vec::new();
    quantize_q8_0(&x, &mut got);
    assert_eq!(got, expected);
}

/// The low-bit formats: the same f32 operations as gguf-py's, so the same values exactly. The
/// i-quants' fixtures index every grid entry, so a changed entry fails here.
#[test]
fn low_bit_formats_match_gguf_py_exactly() {
    for l in LowBit::ALL {
        let bytes = std::fs::read(fixture(&format!("{}.blocks.bin", l.name()))).unwrap();
        let (_, expected) =
            glm5_format::read_npy_f32(&fixture(&format!("{}.dequant.npy", l.name()))).unwrap();
        let mut got = Vec::new();
        BlockFormat::Low(l).dequantize(&bytes, &mut got);
        assert_eq!(got.len(), expected.len(), "{}", l.name());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(
                g == e,
                "{} value {i} (block {}): {g} vs {e}",
                l.name(),
                i / l.block_len()
            );
        }
    }
}
