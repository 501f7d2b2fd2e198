//! Written files appear whole or not at all: a writer that stops early (an error, a dropped
//! writer, a killed process) leaves no file under the final name.

use glm5_format::{
    partial_path, AtomicFile, DType, GgmlType, GgufWriter, SafetensorsWriter, TensorSpec,
};
use std::io::Write;

#[test]
fn an_unfinished_write_leaves_no_file_under_the_final_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.bin");

    let mut f = AtomicFile::create(&path).unwrap();
    f.write_all(b"half").unwrap();
    assert!(
        partial_path(&path).exists() && !path.exists(),
        "only the partial name while writing"
    );
    drop(f);
    assert!(
        !partial_path(&path).exists() && !path.exists(),
        "a dropped writer leaves nothing"
    );

    let mut f = AtomicFile::create(&path).unwrap();
    f.write_all(b"whole").unwrap();
    assert_eq!(f.commit().unwrap(), 5);
    assert_eq!(std::fs::read(&path).unwrap(), b"whole");
    assert!(!partial_path(&path).exists());

    // A safetensors file with a tensor missing is refused at finish and never appears.
    let st = dir.path().join("model.safetensors");
    let specs = vec![
        TensorSpec {
            name: "a".into(),
            dtype: DType::F32,
            shape: vec![2],
        },
        TensorSpec {
            name: "b".into(),
            dtype: DType::F32,
            shape: vec![2],
        },
    ];
    let mut w = SafetensorsWriter::create(&st, specs, &Default::default()).unwrap();
    w.write_tensor("a", &[0u8; 8]).unwrap();
    assert!(w.finish().is_err());
    assert!(!st.exists() && !partial_path(&st).exists());

    // So is a GGUF.
    let g = dir.path().join("m.gguf");
    let mut w = GgufWriter::create(&g, &[], vec![("t".into(), vec![32], GgmlType::F32)]).unwrap();
    assert!(!g.exists());
    w.write_tensor("t", &[0u8; 128]).unwrap();
    w.finish().unwrap();
    assert!(g.exists() && !partial_path(&g).exists());
}
