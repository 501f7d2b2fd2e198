//! GGUF v2/v3: a zero-copy reader over `mmap` and a streaming writer.
//!
//! Layout (llama.cpp `ggml/docs/gguf.md`): magic `GGUF`, version u32, tensor count u64, metadata
//! count u64; metadata as (string key, u32 type, value); tensor infos as (string name, u32
//! n_dims, u64 dims (innermost first), u32 ggml type, u64 offset); then padding to
//! `general.alignment` (default 32) and the data section. All little-endian.
//!
//! Every tensor's byte range is checked against the file when it is opened, so a truncated
//! file or an unknown type fails at open with the tensor's name, never later inside a kernel.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::{Error, Result};

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The ggml tensor types glm5 reads or writes, with their block geometry (ggml.h's ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    IQ2XXS,
    IQ2XS,
    IQ3XXS,
    IQ1S,
    IQ4NL,
    IQ3S,
    IQ2S,
    IQ4XS,
    IQ1M,
    BF16,
}

/// (type, id, name, values per block, bytes per block).
const TYPES: [(GgmlType, u32, &str, u64, u64); 22] = [
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q2K, 10, "Q2_K", 256, 84),
    (GgmlType::Q3K, 11, "Q3_K", 256, 110),
    (GgmlType::Q4K, 12, "Q4_K", 256, 144),
    (GgmlType::Q5K, 13, "Q5_K", 256, 176),
    (GgmlType::Q6K, 14, "Q6_K", 256, 210),
    (GgmlType::IQ2XXS, 16, "IQ2_XXS", 256, 66),
    (GgmlType::IQ2XS, 17, "IQ2_XS", 256, 74),
    (GgmlType::IQ3XXS, 18, "IQ3_XXS", 256, 98),
    (GgmlType::IQ1S, 19, "IQ1_S", 256, 50),
    (GgmlType::IQ4NL, 20, "IQ4_NL", 32, 18),
    (GgmlType::IQ3S, 21, "IQ3_S", 256, 110),
    (GgmlType::IQ2S, 22, "IQ2_S", 256, 82),
    (GgmlType::IQ4XS, 23, "IQ4_XS", 256, 136),
    (GgmlType::IQ1M, 29, "IQ1_M", 256, 56),
    (GgmlType::BF16, 30, "BF16", 1, 2),
];

/// ggml's names of the type ids glm5 does not read, for error messages.
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    if let Some(t) = GgmlType::from_id(id) {
        return Some(t.name());
    }
    Some(match id {
        9 => "Q8_1",
        15 => "Q8_K",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

impl GgmlType {
    fn entry(self) -> &'static (GgmlType, u32, &'static str, u64, u64) {
        TYPES
            .iter()
            .find(|e| e.0 == self)
            .expect("every type has an entry")
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPES.iter().find(|e| e.1 == id).map(|e| e.0)
    }

    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (u64, u64) {
        let e = self.entry();
        (e.3, e.4)
    }

    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Every type, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TYPES.iter().map(|e| e.0)
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => self.as_u64().map(|v| v != 0),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
}

/// One tensor's entry: dims innermost first (as GGUF stores them).
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Which file of a split set holds the data (0 for a single file).
    pub part: usize,
    /// Absolute byte range in that file.
    pub start: usize,
    pub len: usize,
}

impl GgufTensor {
    /// Shape outermost first (PyTorch order): `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// An open, mapped GGUF file, or a whole split set (`NAME-0000k-of-0000n.gguf`) opened from
/// any of its parts: the first part's metadata, every part's tensors.
#[derive(Debug)]
pub struct GgufFile {
    /// The file, or the set's first part.
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, GgufTensor>,
    /// Tensor names in file order.
    pub order: Vec<String>,
    /// The mapping of each part (one for a single file).
    pub maps: Vec<Arc<crate::mapped::Mapped>>,
    /// Each part's path.
    pub parts: Vec<PathBuf>,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl Cursor<'_> {
    fn bad(&self, reason: String) -> Error {
        Error::Gguf {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        if self.at + n > self.b.len() {
            return Err(self.bad(format!(
                "truncated: {what} at byte {} runs past the end ({} bytes)",
                self.at,
                self.b.len()
            )));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)? as usize;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.bad(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        let mut fixed = |n: usize| -> Result<Vec<u8>> { Ok(self.take(n, key)?.to_vec()) };
        Ok(match ty {
            0 => Value::U8(fixed(1)?[0]),
            1 => Value::I8(fixed(1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(fixed(2)?.try_into().expect("2"))),
            3 => Value::I16(i16::from_le_bytes(fixed(2)?.try_into().expect("2"))),
            4 => Value::U32(u32::from_le_bytes(fixed(4)?.try_into().expect("4"))),
            5 => Value::I32(i32::from_le_bytes(fixed(4)?.try_into().expect("4"))),
            6 => Value::F32(f32::from_le_bytes(fixed(4)?.try_into().expect("4"))),
            7 => Value::Bool(fixed(1)?[0] != 0),
            8 => Value::Str(self.string(key)?),
            9 if depth == 0 => {
                let ety = self.u32(key)?;
                let n = self.u64(key)? as usize;
                if n > self.b.len() {
                    return Err(self.bad(format!("metadata '{key}': array of {n} items")));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(fixed(8)?.try_into().expect("8"))),
            11 => Value::I64(i64::from_le_bytes(fixed(8)?.try_into().expect("8"))),
            12 => Value::F64(f64::from_le_bytes(fixed(8)?.try_into().expect("8"))),
            t => return Err(self.bad(format!("metadata '{key}' has unknown value type {t}"))),
        })
    }
}

impl GgufFile {
    /// One file, as stored: a split part is read alone (`open` reads the whole set).
    pub fn open_part(path: &Path) -> Result<GgufFile> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the file is mapped read-only; glm5 never writes to files it reads.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let mut c = Cursor {
            b: &map,
            at: 0,
            path,
        };
        if c.take(4, "magic")? != GGUF_MAGIC {
            return Err(c.bad("not a GGUF file (no 'GGUF' magic)".into()));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(c.bad(format!("GGUF version {version} (glm5 reads 2 and 3)")));
        }
        let n_tensors = c.u64("tensor count")? as usize;
        let n_kv = c.u64("metadata count")? as usize;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| c.bad(format!("general.alignment {v:?} is not a power of two")))?,
            None => DEFAULT_ALIGNMENT,
        };
        let mut infos = Vec::with_capacity(n_tensors.min(1 << 20));
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims > 4 {
                return Err(c.bad(format!("tensor '{name}' has {n_dims} dimensions")));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64(&name))
                .collect::<Result<Vec<u64>>>()?;
            let ty = c.u32(&name)?;
            let offset = c.u64(&name)?;
            infos.push((name, dims, ty, offset));
        }
        let data_start = (c.at as u64).div_ceil(alignment) * alignment;
        let file_len = map.len() as u64;
        let mut tensors = BTreeMap::new();
        let mut order = Vec::with_capacity(infos.len());
        for (name, dims, ty, offset) in infos {
            let ggml_type = GgmlType::from_id(ty).ok_or_else(|| {
                let known = ggml_type_name(ty).map_or(String::new(), |n| format!(" ({n})"));
                let supported: Vec<&str> = GgmlType::all().map(GgmlType::name).collect();
                c.bad(format!(
                    "tensor '{name}' has ggml type {ty}{known}, which glm5 does not read \
                     (supported: {})",
                    supported.join(", ")
                ))
            })?;
            let (bl, bb) = ggml_type.block();
            if dims.first().is_some_and(|d| d % bl != 0) {
                return Err(c.bad(format!(
                    "tensor '{name}': rows of {} values are not whole {} blocks",
                    dims[0],
                    ggml_type.name()
                )));
            }
            if !offset.is_multiple_of(alignment) {
                return Err(c.bad(format!(
                    "tensor '{name}' ({}): data offset {offset} is not a multiple of the \
                     alignment {alignment}",
                    ggml_type.name()
                )));
            }
            let range = dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .and_then(|numel| (numel / bl).checked_mul(bb))
                .and_then(|len| Some((data_start.checked_add(offset)?, len)))
                .and_then(|(start, len)| Some((start, start.checked_add(len)?)));
            let Some((start, end)) = range.filter(|&(_, end)| end <= file_len) else {
                return Err(c.bad(format!(
                    "truncated: tensor '{name}' ({}, dims {dims:?} at offset {offset}) runs \
                     past the end of the file ({file_len} bytes)",
                    ggml_type.name()
                )));
            };
            order.push(name.clone());
            let t = GgufTensor {
                name: name.clone(),
                dims,
                ggml_type,
                part: 0,
                start: start as usize,
                len: (end - start) as usize,
            };
            if tensors.insert(name.clone(), t).is_some() {
                return Err(c.bad(format!("tensor '{name}' appears twice")));
            }
        }
        // Tensors may not share bytes: a file whose ranges overlap is damaged.
        let mut ranges: Vec<&GgufTensor> = tensors.values().filter(|t| t.len > 0).collect();
        ranges.sort_by_key(|t| t.start);
        for w in ranges.windows(2) {
            if w[1].start < w[0].start + w[0].len {
                return Err(c.bad(format!(
                    "tensor '{}' ({}) overlaps tensor '{}' (bytes {}..{} and {}..{})",
                    w[1].name,
                    w[1].ggml_type.name(),
                    w[0].name,
                    w[1].start,
                    w[1].start + w[1].len,
                    w[0].start,
                    w[0].start + w[0].len
                )));
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            order,
            maps: vec![Arc::new(crate::mapped::Mapped::new(map, path))],
            parts: vec![path.to_path_buf()],
        })
    }

    pub fn bytes(&self, t: &GgufTensor) -> &[u8] {
        &self.maps[t.part][t.start..t.start + t.len]
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }
}

/// Writes a GGUF v3 file: metadata and tensor infos first, then each tensor's data as it is
/// handed over (so a large model is never held in memory twice).
pub struct GgufWriter {
    path: PathBuf,
    out: crate::atomic::AtomicFile,
    /// (name, shape, type, byte length) of every tensor, in write order.
    plan: Vec<(String, Vec<usize>, GgmlType, usize)>,
    next: usize,
    data_start: u64,
    written: u64,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.push(*x as u8),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(*x as u8),
        Value::Str(s) => put_str(buf, s),
        Value::Array(items) => {
            let ety = items.first().map_or(4, Value::type_id);
            buf.extend_from_slice(&ety.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| put_value(buf, i));
        }
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
    }
}

fn padded(n: u64) -> u64 {
    n.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT
}

impl GgufWriter {
    /// Start a file with `metadata` and the tensors of `plan` (name, shape, type); their data
    /// follows through `write_tensor` in the same order.
    pub fn create(
        path: &Path,
        metadata: &[(String, Value)],
        plan: Vec<(String, Vec<usize>, GgmlType)>,
    ) -> Result<GgufWriter> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut head = Vec::new();
        head.extend_from_slice(GGUF_MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(plan.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut head, k);
            head.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut head, v);
        }
        let mut offset = 0u64;
        let mut sized = Vec::with_capacity(plan.len());
        for (name, shape, ty) in plan {
            put_str(&mut head, &name);
            head.extend_from_slice(&(shape.len() as u32).to_le_bytes());
            for &d in shape.iter().rev() {
                head.extend_from_slice(&(d as u64).to_le_bytes());
            }
            head.extend_from_slice(&ty.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            let (bl, bb) = ty.block();
            let numel: u64 = shape.iter().map(|&d| d as u64).product();
            let len = numel / bl * bb;
            offset = padded(offset + len);
            sized.push((name, shape, ty, len as usize));
        }
        let data_start = padded(head.len() as u64);
        head.resize(data_start as usize, 0);
        let mut out = crate::atomic::AtomicFile::create(path)?;
        out.write_all(&head).map_err(io)?;
        Ok(GgufWriter {
            path: path.to_path_buf(),
            out,
            plan: sized,
            next: 0,
            data_start,
            written: 0,
        })
    }

    /// The next tensor's data (must match the plan's size).
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let bad = |reason: String| Error::Gguf {
            path: self.path.clone(),
            reason,
        };
        let Some((pname, _, _, len)) = self.plan.get(self.next) else {
            return Err(bad(format!("tensor '{name}' is not in the plan")));
        };
        if pname != name || *len != data.len() {
            return Err(bad(format!(
                "tensor '{name}' ({} bytes) written where the plan has '{pname}' ({len} bytes)",
                data.len()
            )));
        }
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        self.out.write_all(data).map_err(io)?;
        let pad = padded(data.len() as u64) - data.len() as u64;
        self.out.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        self.written += data.len() as u64 + pad;
        self.next += 1;
        Ok(())
    }

    /// Check every planned tensor was written, flush and close.
    pub fn finish(self) -> Result<u64> {
        if self.next != self.plan.len() {
            return Err(Error::Gguf {
                path: self.path.clone(),
                reason: format!(
                    "only {} of {} tensors were written",
                    self.next,
                    self.plan.len()
                ),
            });
        }
        let end = self.out.commit()?;
        debug_assert_eq!(end, self.data_start + self.written);
        Ok(end)
    }
}
