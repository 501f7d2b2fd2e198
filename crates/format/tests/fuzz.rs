//! Property tests over the safetensors / index parsing: arbitrary bytes never panic and never
//! read outside the file. Cases: GLM5_FUZZ_CASES (default 300).

use glm5_format::{Checkpoint, Shard};
use proptest::prelude::*;

fn valid_file() -> Vec<u8> {
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 12]);
    bytes
}

#[test]
fn valid_file_reads() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    std::fs::write(&p, valid_file()).unwrap();
    let s = Shard::open(&p).unwrap();
    assert_eq!(s.get("b").unwrap().shape, &[1, 2]);
    assert_eq!(s.get("a").unwrap().to_f32(), vec![0.0, 0.0]);
}

fn cases() -> u32 {
    std::env::var("GLM5_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn shard_open_never_panics(flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..8), cut in 0usize..200) {
        let mut bytes = valid_file();
        for (pos, val) in flips {
            if pos < bytes.len() {
                bytes[pos] = val;
            }
        }
        bytes.truncate(cut.max(1).min(bytes.len()));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(s) = Shard::open(&p) {
            for n in s.names() {
                let v = s.get(n).unwrap();
                prop_assert_eq!(v.bytes.len(), v.numel() * v.dtype.size());
            }
        }
    }

    #[test]
    fn index_parsing_never_panics(index in "\\PC{0,80}", config in prop_oneof![Just("{}".to_string()), "\\PC{0,40}"]) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), valid_file()).unwrap();
        let _ = Checkpoint::open(dir.path());
    }

    #[test]
    fn index_with_hostile_file_names(name in prop_oneof![Just("../x".to_string()), Just("/etc/passwd".to_string()), Just("".to_string()), "[a-z.]{1,12}"]) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let idx = serde_json::json!({"weight_map": {"a": name}});
        std::fs::write(dir.path().join("model.safetensors.index.json"), idx.to_string()).unwrap();
        prop_assert!(Checkpoint::open(dir.path()).is_err());
    }
}
