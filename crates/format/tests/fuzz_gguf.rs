//! Property tests over the GGUF reader: a valid file with random bytes changed or cut off
//! never panics, and whatever it accepts stays inside the file (every tensor's bytes are
//! exactly its type's size for its shape). Cases: GLM5_FUZZ_CASES (default 300; longer runs
//! are recorded in RELIABILITY.md).

use glm5_format::{GgmlType, GgufFile, GgufValue, GgufWriter};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("GLM5_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// A small GGUF with every metadata kind the reader parses and three block types.
fn valid_file() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    let meta = vec![
        (
            "general.architecture".to_string(),
            GgufValue::Str("glm-dsa".into()),
        ),
        ("glm-dsa.block_count".to_string(), GgufValue::U32(2)),
        ("glm-dsa.rope.freq_base".to_string(), GgufValue::F32(1e6)),
        (
            "tokenizer.ggml.add_bos_token".to_string(),
            GgufValue::Bool(false),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            GgufValue::Array(vec![
                GgufValue::Str("a".into()),
                GgufValue::Str("<|user|>".into()),
            ]),
        ),
        ("general.size".to_string(), GgufValue::U64(7)),
    ];
    let plan = vec![
        ("a.weight".to_string(), vec![2, 32], GgmlType::F32),
        ("b.weight".to_string(), vec![2, 64], GgmlType::Q8_0),
        ("c.weight".to_string(), vec![1, 256], GgmlType::Q4K),
    ];
    let mut w = GgufWriter::create(&p, &meta, plan).unwrap();
    w.write_tensor("a.weight", &[0u8; 2 * 32 * 4]).unwrap();
    w.write_tensor("b.weight", &[0u8; 4 * 34]).unwrap();
    w.write_tensor("c.weight", &[0u8; 144]).unwrap();
    w.finish().unwrap();
    std::fs::read(&p).unwrap()
}

#[test]
fn the_valid_file_reads() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    std::fs::write(&p, valid_file()).unwrap();
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.tensors.len(), 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn a_damaged_gguf_never_panics_nor_reads_outside(
        flips in proptest::collection::vec((0usize..700, any::<u8>()), 0..6),
        cut in proptest::option::of(0usize..1200),
    ) {
        let mut bytes = valid_file();
        for (pos, val) in flips {
            if pos < bytes.len() {
                bytes[pos] = val;
            }
        }
        if let Some(c) = cut {
            bytes.truncate(c.min(bytes.len()));
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(f) = GgufFile::open(&p) {
            for t in f.tensors.values() {
                let (bl, bb) = t.ggml_type.block();
                let numel: u64 = t.dims.iter().product();
                prop_assert_eq!(f.bytes(t).len() as u64, numel / bl * bb);
            }
            for k in ["general.architecture", "tokenizer.ggml.tokens"] {
                let _ = f.get(k);
            }
        }
    }
}
