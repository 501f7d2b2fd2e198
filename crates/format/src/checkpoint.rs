//! HF checkpoint folders: `config.json` plus one or many safetensors shards, memory-mapped.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensorError;

use crate::{DType, Error, Result};

/// A borrowed view of one tensor's bytes inside a mapped shard. No copy is made.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
    /// The shard this tensor lives in (for error messages).
    pub file: &'a Path,
}

impl TensorView<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Decode to f32 (exact for every supported dtype).
    pub fn to_f32(&self) -> Vec<f32> {
        crate::decode_f32(self.dtype, self.bytes)
    }
}

#[derive(Debug)]
struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range inside the mapping.
    start: usize,
    end: usize,
}

/// One memory-mapped safetensors file.
#[derive(Debug)]
pub struct Shard {
    pub path: PathBuf,
    map: crate::mapped::Mapped,
    tensors: BTreeMap<String, Entry>,
    /// `__metadata__` of the header, if any.
    pub metadata: HashMap<String, String>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Shard {
    /// Map `path` and validate its header: JSON well formed, offsets contiguous and matching
    /// dtype x shape, and the file long enough for every tensor (no read past the mapping).
    pub fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::MissingFile {
                    path: path.to_path_buf(),
                    what: "safetensors shard".into(),
                }
            } else {
                Error::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if len < 8 {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                expected: 8,
                actual: len,
            });
        }
        // SAFETY: model files are opened read-only and assumed not to change while mapped
        // (the same contract as every mmap-based loader); all reads are bounds-checked below.
        let map =
            crate::mapped::Mapped::new(unsafe { Mmap::map(&file) }.map_err(io_err(path))?, path);
        let (header_len, meta) = match safetensors::SafeTensors::read_metadata(&map[..]) {
            Ok(v) => v,
            Err(e) => return Err(header_error(path, &map[..], e)),
        };
        let data_start = 8 + header_len;
        let mut tensors = BTreeMap::new();
        for (name, info) in meta.tensors() {
            let dtype =
                DType::from_safetensors(info.dtype).ok_or_else(|| Error::UnsupportedDType {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    dtype: format!("{:?}", info.dtype),
                })?;
            let (s, e) = info.data_offsets;
            tensors.insert(
                name.clone(),
                Entry {
                    dtype,
                    shape: info.shape.clone(),
                    start: data_start + s,
                    end: data_start + e,
                },
            );
        }
        let metadata = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            tensors,
            metadata,
        })
    }

    /// Tensor names in this shard, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// A view of one tensor, if present.
    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        let (key, e) = self.tensors.get_key_value(name)?;
        let bytes = &self.map[e.start..e.end];
        Some(TensorView {
            name: key,
            dtype: e.dtype,
            shape: &e.shape,
            bytes,
            file: &self.path,
        })
    }
}

/// Turn a safetensors header error into a one-line message naming the file.
fn header_error(path: &Path, buf: &[u8], e: SafeTensorError) -> Error {
    let p = path.to_path_buf();
    match e {
        SafeTensorError::MetadataIncompleteBuffer | SafeTensorError::InvalidHeaderLength => {
            let n = u64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8]));
            let expected = match header_data_len(buf, n) {
                Some(d) => 8 + n + d,
                None => 8 + n,
            };
            Error::Truncated {
                path: p,
                expected,
                actual: buf.len() as u64,
            }
        }
        SafeTensorError::HeaderTooLarge => Error::Header {
            path: p,
            reason: "header length is larger than the 100 MB safetensors limit".into(),
        },
        other => Error::Header {
            path: p,
            reason: other.to_string().replace('\n', " "),
        },
    }
}

/// Largest `data_offsets` end in a header, when the header itself is readable.
fn header_data_len(buf: &[u8], n: u64) -> Option<u64> {
    let end = usize::try_from(n).ok()?.checked_add(8)?;
    let text = std::str::from_utf8(buf.get(8..end)?).ok()?;
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
}

/// Read and parse a JSON file, naming the file in any error.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile {
                path: path.to_path_buf(),
                what: path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            }
        } else {
            Error::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// An HF-layout checkpoint folder with every shard mapped.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    /// `config.json`, parsed but untyped (the model crate types it).
    pub config: serde_json::Value,
    shards: Vec<Shard>,
    /// tensor name -> shard index
    index: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Open `dir`: `config.json` and either `model.safetensors.index.json` (sharded) or
    /// `model.safetensors` (single file).
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            return Err(Error::MissingFile {
                path: dir.to_path_buf(),
                what: "model folder".into(),
            });
        }
        let config = read_json(&dir.join("config.json"))?;
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        if index_path.exists() {
            let idx = read_json(&index_path)?;
            let map = idx
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Json {
                    path: index_path.clone(),
                    reason: "missing object field 'weight_map'".into(),
                })?;
            let mut file_ids: HashMap<String, usize> = HashMap::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| Error::Json {
                    path: index_path.clone(),
                    reason: format!("weight_map['{tensor}'] is not a string"),
                })?;
                if file.contains('/') || file.contains('\\') || file == ".." || file.is_empty() {
                    return Err(Error::Json {
                        path: index_path.clone(),
                        reason: format!(
                            "weight_map['{tensor}'] = '{file}' is not a file name in this folder"
                        ),
                    });
                }
                let id = match file_ids.get(file) {
                    Some(&id) => id,
                    None => {
                        let path = dir.join(file);
                        if !path.exists() {
                            return Err(Error::ShardMissing {
                                path,
                                tensor: tensor.clone(),
                            });
                        }
                        shards.push(Shard::open(&path)?);
                        file_ids.insert(file.to_string(), shards.len() - 1);
                        shards.len() - 1
                    }
                };
                if shards[id].get(tensor).is_none() {
                    return Err(Error::IndexMismatch {
                        path: shards[id].path.clone(),
                        tensor: tensor.clone(),
                    });
                }
                index.insert(tensor.clone(), id);
            }
            // Tensors present in a shard but not listed in the index are still loadable.
            for (id, shard) in shards.iter().enumerate() {
                for name in shard.names() {
                    index.entry(name.to_string()).or_insert(id);
                }
            }
        } else if single.exists() {
            let shard = Shard::open(&single)?;
            for name in shard.names() {
                index.insert(name.to_string(), 0);
            }
            shards.push(shard);
        } else {
            return Err(Error::NoWeights {
                path: dir.to_path_buf(),
            });
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            shards,
            index,
        })
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A zero-copy view of tensor `name`.
    pub fn get(&self, name: &str) -> Result<TensorView<'_>> {
        self.index
            .get(name)
            .and_then(|&id| self.shards[id].get(name))
            .ok_or_else(|| Error::MissingTensor { name: name.into() })
    }

    /// The mapped shards.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }
}
