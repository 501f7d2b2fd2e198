//! Cached rows (the KV cache's latent, rope key and indexer key per token) in a chosen storage
//! format: f32, bf16 (round to nearest even, read back exactly widened), or 8-bit (symmetric,
//! one f32 scale per row). Rows are appended and truncated; readers get them widened to f32,
//! except the indexer's 8-bit scan (`dsa::indexer_scores_q8`), which reads the blocked bytes
//! directly.
//!
//! The 8-bit layout is built for `vpdpbusd`: rows are stored in blocks of 16, and within a block
//! as `[width / 4 groups][16 rows][4 bytes]`, each byte the signed value plus 128. One 64-byte
//! load then holds the same 4 dimensions of 16 rows, so a query dimension group broadcast to
//! every lane scores 16 keys at once without a horizontal sum.

use std::io::{self, Read, Write};

use half::bf16;

/// Rows per 8-bit block.
pub const Q8_BLOCK: usize = 16;

/// Where value `j` of 8-bit row `t` (width `w`) lies in the blocked bytes.
pub fn q8_index(t: usize, j: usize, w: usize) -> usize {
    t / Q8_BLOCK * Q8_BLOCK * w + j / 4 * Q8_BLOCK * 4 + t % Q8_BLOCK * 4 + j % 4
}

/// Symmetric 8-bit quantization of `x` into `out` (`round(x / s)`, `s = max|x| / 127`);
/// returns `s`.
pub fn quantize_i8(x: &[f32], out: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let s = amax / 127.0;
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    s
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowFormat {
    F32,
    Bf16,
    /// 8-bit, one scale per row (indexer keys only).
    Q8,
}

impl RowFormat {
    pub fn parse(s: &str) -> Option<RowFormat> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(RowFormat::F32),
            "bf16" => Some(RowFormat::Bf16),
            "q8" | "q8_0" | "int8" => Some(RowFormat::Q8),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RowFormat::F32 => "f32",
            RowFormat::Bf16 => "bf16",
            RowFormat::Q8 => "q8",
        }
    }

    /// Bytes one row of `width` values takes.
    pub fn row_bytes(self, width: usize) -> usize {
        match self {
            RowFormat::F32 => 4 * width,
            RowFormat::Bf16 => 2 * width,
            RowFormat::Q8 => width + 4,
        }
    }
}

#[derive(Clone, Debug)]
enum Data {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    /// `bytes`: whole blocks of `Q8_BLOCK` rows (see the module docs); `scale`: one per row.
    Q8 {
        bytes: Vec<u8>,
        scale: Vec<f32>,
    },
}

/// `len` rows of `width` values.
#[derive(Clone, Debug)]
pub struct Rows {
    width: usize,
    len: usize,
    data: Data,
}

impl Rows {
    /// Empty rows. 8-bit rows need `width` divisible by 4.
    pub fn new(format: RowFormat, width: usize) -> Rows {
        let data = match format {
            RowFormat::F32 => Data::F32(Vec::new()),
            RowFormat::Bf16 => Data::Bf16(Vec::new()),
            RowFormat::Q8 => {
                assert!(
                    width.is_multiple_of(4),
                    "8-bit rows need a width divisible by 4, not {width}"
                );
                Data::Q8 {
                    bytes: Vec::new(),
                    scale: Vec::new(),
                }
            }
        };
        Rows {
            width,
            len: 0,
            data,
        }
    }

    pub fn format(&self) -> RowFormat {
        match self.data {
            Data::F32(_) => RowFormat::F32,
            Data::Bf16(_) => RowFormat::Bf16,
            Data::Q8 { .. } => RowFormat::Q8,
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append `rows.len() / width` rows.
    pub fn push(&mut self, rows: &[f32]) {
        let w = self.width;
        assert!(
            rows.len().is_multiple_of(w),
            "{} values are not whole rows of {w}",
            rows.len()
        );
        match &mut self.data {
            Data::F32(v) => v.extend_from_slice(rows),
            Data::Bf16(v) => v.extend(rows.iter().map(|&x| bf16::from_f32(x).to_bits())),
            Data::Q8 { bytes, scale } => {
                for row in rows.chunks_exact(w) {
                    let t = scale.len();
                    if bytes.len() < (t / Q8_BLOCK + 1) * Q8_BLOCK * w {
                        bytes.resize((t / Q8_BLOCK + 1) * Q8_BLOCK * w, 128);
                    }
                    let mut q = vec![0i8; w];
                    let s = quantize_i8(row, &mut q);
                    for (j, &v) in q.iter().enumerate() {
                        bytes[q8_index(t, j, w)] = (v as i32 + 128) as u8;
                    }
                    scale.push(s);
                }
            }
        }
        self.len += rows.len() / w;
    }

    /// Room for `total` rows in all without reallocating (a capacity only: pages are not
    /// touched until rows are written, so nothing becomes resident). A cache that grows to a
    /// known length then never copies itself into a buffer twice its size mid-sequence. Best
    /// effort: where the address space is refused (strict overcommit), rows grow as before.
    pub fn reserve(&mut self, total: usize) {
        let extra = total.saturating_sub(self.len);
        let w = self.width;
        let _ = match &mut self.data {
            Data::F32(v) => v.try_reserve_exact(extra * w),
            Data::Bf16(v) => v.try_reserve_exact(extra * w),
            Data::Q8 { bytes, scale } => {
                let blocks = total.div_ceil(Q8_BLOCK) * Q8_BLOCK * w;
                bytes
                    .try_reserve_exact(blocks.saturating_sub(bytes.len()))
                    .and_then(|_| scale.try_reserve_exact(extra))
            }
        };
    }

    /// Keep the first `len` rows.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let w = self.width;
        match &mut self.data {
            Data::F32(v) => v.truncate(len * w),
            Data::Bf16(v) => v.truncate(len * w),
            Data::Q8 { bytes, scale } => {
                // Whole blocks stay; the rows past `len` are overwritten when pushed again.
                bytes.truncate(len.div_ceil(Q8_BLOCK) * Q8_BLOCK * w);
                scale.truncate(len);
            }
        }
        self.len = len;
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(v) => 4 * v.len(),
            Data::Bf16(v) => 2 * v.len(),
            Data::Q8 { bytes, scale } => bytes.len() + 4 * scale.len(),
        }
    }

    /// Row `t` widened to f32 into `out[..width]`.
    pub fn row_into(&self, t: usize, out: &mut [f32]) {
        assert!(
            t < self.len,
            "row {t} of {} rows (width {})",
            self.len,
            self.width
        );
        let w = self.width;
        let out = &mut out[..w];
        match &self.data {
            Data::F32(v) => out.copy_from_slice(&v[t * w..(t + 1) * w]),
            Data::Bf16(v) => crate::fvec::bf16_to_f32(&v[t * w..(t + 1) * w], out),
            Data::Q8 { bytes, scale } => {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = (bytes[q8_index(t, j, w)] as i32 - 128) as f32 * scale[t];
                }
            }
        }
    }

    /// Rows `t0..t1` widened to f32, `[t1 - t0, width]`.
    pub fn to_f32(&self, t0: usize, t1: usize) -> Vec<f32> {
        let mut out = Vec::new();
        self.widen_into(t0, t1, &mut out);
        out
    }

    /// `to_f32` into a reused buffer (resized to `[t1 - t0, width]`).
    pub fn widen_into(&self, t0: usize, t1: usize, out: &mut Vec<f32>) {
        let w = self.width;
        out.resize((t1 - t0) * w, 0.0);
        match &self.data {
            Data::F32(v) => out.copy_from_slice(&v[t0 * w..t1 * w]),
            Data::Bf16(v) => crate::fvec::bf16_to_f32(&v[t0 * w..t1 * w], out),
            Data::Q8 { .. } => {
                for (t, o) in (t0..t1).zip(out.chunks_exact_mut(w)) {
                    self.row_into(t, o);
                }
            }
        }
    }

    /// The f32 rows, when stored as f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The bf16 bits of the rows, when stored as bf16.
    pub fn as_bf16(&self) -> Option<&[u16]> {
        match &self.data {
            Data::Bf16(v) => Some(v),
            _ => None,
        }
    }

    /// The 8-bit blocks and per-row scales, when stored as 8-bit.
    pub fn as_q8(&self) -> Option<(&[u8], &[f32])> {
        match &self.data {
            Data::Q8 { bytes, scale } => Some((bytes, scale)),
            _ => None,
        }
    }
}

/// Native-endian bytes of plain numbers (f32, u16, u8).
fn write_raw<T: Copy>(w: &mut dyn Write, v: &[T]) -> io::Result<()> {
    w.write_all(&(v.len() as u64).to_le_bytes())?;
    // SAFETY: T is one of f32/u16/u8 (no padding, every bit pattern valid); the slice is read
    // as its own bytes.
    let bytes =
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) };
    w.write_all(bytes)
}

fn read_u64(r: &mut dyn Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// At most this many values in one stored vector (a corrupt length fails instead of
/// allocating the machine away).
const MAX_STORED: u64 = 1 << 40;

fn read_raw<T: Copy + Default>(r: &mut dyn Read) -> io::Result<Vec<T>> {
    let n = read_u64(r)?;
    if n > MAX_STORED / std::mem::size_of::<T>() as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a stored vector claims {n} values"),
        ));
    }
    let mut v = vec![T::default(); n as usize];
    // SAFETY: as in `write_raw`: plain numbers, every bit pattern valid.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            v.as_mut_ptr().cast::<u8>(),
            std::mem::size_of_val(v.as_slice()),
        )
    };
    r.read_exact(bytes)?;
    Ok(v)
}

impl Rows {
    /// The rows as bytes: format, width, length, then the data (native byte order; read back
    /// by `read_from` on the same kind of machine).
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        let tag: u8 = match self.data {
            Data::F32(_) => 0,
            Data::Bf16(_) => 1,
            Data::Q8 { .. } => 2,
        };
        w.write_all(&[tag])?;
        w.write_all(&(self.width as u64).to_le_bytes())?;
        w.write_all(&(self.len as u64).to_le_bytes())?;
        match &self.data {
            Data::F32(v) => write_raw(w, v),
            Data::Bf16(v) => write_raw(w, v),
            Data::Q8 { bytes, scale } => {
                write_raw(w, bytes)?;
                write_raw(w, scale)
            }
        }
    }

    /// Rows written by `write_to`; an inconsistent record is `InvalidData`.
    pub fn read_from(r: &mut dyn Read) -> io::Result<Rows> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)?;
        let width = read_u64(r)? as usize;
        let len = read_u64(r)? as usize;
        let data = match tag[0] {
            0 => Data::F32(read_raw(r)?),
            1 => Data::Bf16(read_raw(r)?),
            2 => Data::Q8 {
                bytes: read_raw(r)?,
                scale: read_raw(r)?,
            },
            t => return Err(bad(format!("unknown row format {t}"))),
        };
        let ok = match &data {
            Data::F32(v) => v.len() == len * width,
            Data::Bf16(v) => v.len() == len * width,
            Data::Q8 { bytes, scale } => {
                scale.len() == len && bytes.len() == len.div_ceil(Q8_BLOCK) * Q8_BLOCK * width
            }
        };
        if !ok || width == 0 {
            return Err(bad(format!(
                "{len} rows of width {width} do not match their data"
            )));
        }
        Ok(Rows { width, len, data })
    }
}
