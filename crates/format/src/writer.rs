//! A streaming safetensors writer: the header is written first from the tensor list, then each
//! tensor's bytes in order, so a multi-gigabyte shard never has to sit in memory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{DType, Error, Result};

/// Name, dtype and shape of one tensor to be written.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Writes one safetensors file. Tensors must be written in the order of the specs given.
#[derive(Debug)]
pub struct SafetensorsWriter {
    path: PathBuf,
    out: crate::atomic::AtomicFile,
    specs: Vec<TensorSpec>,
    next: usize,
}

impl SafetensorsWriter {
    /// Create `path` and write the header for `specs` (`__metadata__` gets `format: pt` plus
    /// `metadata`).
    pub fn create(
        path: &Path,
        specs: Vec<TensorSpec>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<SafetensorsWriter> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut header = serde_json::Map::new();
        let mut meta = serde_json::Map::new();
        meta.insert("format".into(), "pt".into());
        for (k, v) in metadata {
            meta.insert(k.clone(), v.clone().into());
        }
        header.insert("__metadata__".into(), meta.into());
        let mut offset = 0usize;
        for s in &specs {
            let end = offset + s.nbytes();
            header.insert(
                s.name.clone(),
                serde_json::json!({
                    "dtype": s.dtype.as_str(),
                    "shape": s.shape,
                    "data_offsets": [offset, end],
                }),
            );
            offset = end;
        }
        let mut text = serde_json::Value::Object(header).to_string();
        while !text.len().is_multiple_of(8) {
            text.push(' ');
        }
        let mut out = crate::atomic::AtomicFile::create(path)?;
        out.write_all(&(text.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(text.as_bytes()).map_err(io)?;
        Ok(SafetensorsWriter {
            path: path.to_path_buf(),
            out,
            specs,
            next: 0,
        })
    }

    /// Append the next tensor's bytes (may be called several times per tensor via
    /// [`SafetensorsWriter::write_part`]; this is the whole-tensor form).
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let spec = self.specs.get(self.next).ok_or_else(|| Error::Header {
            path: self.path.clone(),
            reason: format!("tensor '{name}' written but not declared in the header"),
        })?;
        if spec.name != name || spec.nbytes() != bytes.len() {
            return Err(Error::Header {
                path: self.path.clone(),
                reason: format!(
                    "expected tensor '{}' of {} bytes next, got '{name}' of {} bytes",
                    spec.name,
                    spec.nbytes(),
                    bytes.len()
                ),
            });
        }
        self.write_part(bytes)?;
        self.next += 1;
        Ok(())
    }

    fn write_part(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Flush and close; fails if a declared tensor was never written.
    pub fn finish(self) -> Result<()> {
        if self.next != self.specs.len() {
            return Err(Error::Header {
                path: self.path.clone(),
                reason: format!(
                    "only {} of {} declared tensors were written",
                    self.next,
                    self.specs.len()
                ),
            });
        }
        self.out.commit().map(|_| ())
    }
}
