//! Dot products of one stored weight row with one activation row: the inner loop of every
//! linear layer. Quantized weights meet activations quantized once per op to 8 bits (`Q8Acts`,
//! 32-value blocks with an f32 scale and per-16 integer sums), so the inner loop is integer
//! (rust-stack.md §4.1); float weights meet the f32 activations.
//!
//! Each format has a plain reference here (`dot_ref`) and SIMD twins in `x86` picked at run
//! time (`Isa::detect`); tests/qdot.rs compares them on random rows of awkward lengths.

use half::{bf16, f16};

use crate::lowbit::{self, DecodedRow, LowBit};
use crate::pool::{self, Disjoint};
use crate::quant::{scale_min_k4, BlockFormat, QK8_0, QK_K};

/// How a weight row is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WFormat {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    /// The other GGML block formats (`lowbit`): read from llama.cpp's GGUFs, not regrouped.
    Low(LowBit),
}

impl WFormat {
    /// Values per block (1 for float formats).
    pub fn block_len(self) -> usize {
        match self.block() {
            Some(b) => b.block_len(),
            None => 1,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            WFormat::F32 => 4,
            WFormat::F16 | WFormat::BF16 => 2,
            q => q.block().map_or(0, |b| b.block_bytes()),
        }
    }

    pub fn block(self) -> Option<BlockFormat> {
        match self {
            WFormat::Q8_0 => Some(BlockFormat::Q8_0),
            WFormat::Q4K => Some(BlockFormat::Q4K),
            WFormat::Q5K => Some(BlockFormat::Q5K),
            WFormat::Q6K => Some(BlockFormat::Q6K),
            WFormat::Low(l) => Some(BlockFormat::Low(l)),
            _ => None,
        }
    }

    /// Whether activations meet this format as `Q8Acts` (else as f32).
    pub fn is_quantized(self) -> bool {
        self.block().is_some()
    }

    /// Bytes of one row of `cols` values (`cols` a multiple of `block_len`).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    pub fn name(self) -> &'static str {
        match self {
            WFormat::F32 => "f32",
            WFormat::F16 => "f16",
            WFormat::BF16 => "bf16",
            WFormat::Q8_0 => "q8_0",
            WFormat::Q4K => "q4_k",
            WFormat::Q5K => "q5_k",
            WFormat::Q6K => "q6_k",
            WFormat::Low(l) => l.name(),
        }
    }

    /// Dequantize one stored row into `out` (appending `cols` values).
    pub fn dequantize_row(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            WFormat::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            WFormat::F16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            WFormat::BF16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            q => q.block().expect("quantized").dequantize(bytes, out),
        }
    }
}

/// Activations quantized to 8 bits: per 32 values an f32 scale `d` (`x ≈ d * q`, `|q| <= 127`),
/// and per 16 values the integer sum of `q` (for the offset and min terms of the k-quants); per
/// 32 values `-128 * sum(q)` (the offset correction of `packed`'s unsigned weights).
#[derive(Debug, Clone, Default)]
pub struct Q8Acts {
    pub rows: usize,
    pub cols: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s16: Vec<i32>,
    pub bias: Vec<i32>,
}

/// Shared access to the blocks of a `Q8Acts` (`Q8Acts::blocks`).
pub struct Q8Blocks<'a> {
    qs: Disjoint<'a, i8>,
    d: Disjoint<'a, f32>,
    s16: Disjoint<'a, i32>,
    bias: Disjoint<'a, i32>,
}

impl Q8Blocks<'_> {
    /// Quantize `xs` (whole 32-value blocks) into blocks `b0..`: the same bits as
    /// `Q8Acts::quantize` of the values there. The blocks are bounds-checked.
    ///
    /// # Safety
    /// Calls that run at the same time write disjoint blocks.
    pub unsafe fn quantize(&self, b0: usize, xs: &[f32]) {
        assert!(
            xs.len().is_multiple_of(32),
            "{} values are not whole blocks",
            xs.len()
        );
        let b1 = b0 + xs.len() / 32;
        // SAFETY: the ranges are blocks b0..b1's; concurrent callers keep theirs disjoint.
        let (qs, d, s16, bias) = unsafe {
            (
                self.qs.range(b0 * 32..b1 * 32),
                self.d.range(b0..b1),
                self.s16.range(2 * b0..2 * b1),
                self.bias.range(b0..b1),
            )
        };
        #[cfg(target_arch = "x86_64")]
        if Isa::detect() == Isa::Avx512Vnni {
            // SAFETY: AVX-512 was detected; the slices hold blocks b0..b1.
            return unsafe { crate::x86::quantize_blocks(xs, qs, d, s16, bias) };
        }
        for (i, (xs, q)) in xs.chunks_exact(32).zip(qs.chunks_exact_mut(32)).enumerate() {
            let (di, s0, s1) = quantize_block_ref(xs, q);
            (d[i], s16[2 * i], s16[2 * i + 1]) = (di, s0, s1);
            bias[i] = -128 * (s0 + s1);
        }
    }
}

/// One row of `Q8Acts`.
#[derive(Debug, Clone, Copy)]
pub struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s16: &'a [i32],
    pub bias: &'a [i32],
}

impl Q8Acts {
    /// Quantize `x: [rows, cols]`; `cols` must be a multiple of 32.
    pub fn quantize(x: &[f32], cols: usize) -> Q8Acts {
        assert!(
            cols.is_multiple_of(QK8_0),
            "activation width {cols} is not a multiple of 32"
        );
        let mut a = Q8Acts::zeroed(x.len() / cols.max(1), cols);
        let nb = x.len() / 32;
        let blocks = a.blocks();
        // A prefill's activations quantize on the pool (it was ~5% of a 512-token prompt,
        // all on one thread); a decode step's few thousand values stay on this one.
        if x.len() < pool::PARALLEL_MIN {
            // SAFETY: the only call.
            unsafe { blocks.quantize(0, &x[..nb * 32]) };
        } else {
            const PER: usize = 256;
            pool::run(nb.div_ceil(PER), &|c| {
                let b1 = ((c + 1) * PER).min(nb);
                // SAFETY: chunk c alone writes blocks c * PER..b1.
                unsafe { blocks.quantize(c * PER, &x[c * PER * 32..b1 * 32]) }
            });
        }
        a
    }

    /// `rows` rows of `cols` values (a multiple of 32), every block zero, to be filled through
    /// `blocks`.
    pub fn zeroed(rows: usize, cols: usize) -> Q8Acts {
        assert!(
            cols.is_multiple_of(QK8_0),
            "activation width {cols} is not a multiple of 32"
        );
        let len = rows * cols;
        Q8Acts {
            rows,
            cols,
            qs: vec![0; len],
            d: vec![0.0; len / 32],
            s16: vec![0; len / 16],
            bias: vec![0; len / 32],
        }
    }

    /// A writer of this set's blocks that several pool units can share, each quantizing its
    /// own blocks (counted over all rows, `row * cols / 32 + j`).
    pub fn blocks(&mut self) -> Q8Blocks<'_> {
        Q8Blocks {
            qs: Disjoint::new(&mut self.qs),
            d: Disjoint::new(&mut self.d),
            s16: Disjoint::new(&mut self.s16),
            bias: Disjoint::new(&mut self.bias),
        }
    }

    /// Rows `rows` (indices into `self`, in that order) as their own activations: the same
    /// bits as quantizing those f32 rows again.
    pub fn gather(&self, rows: &[usize]) -> Q8Acts {
        // Whole rows copied (`extend_from_slice`): a flattening iterator here cost ~1 ns per value.
        fn pick<T: Copy>(v: &[T], rows: &[usize], per: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(rows.len() * per);
            for &r in rows {
                out.extend_from_slice(&v[r * per..(r + 1) * per]);
            }
            out
        }
        let c = self.cols;
        Q8Acts {
            rows: rows.len(),
            cols: c,
            qs: pick(&self.qs, rows, c),
            d: pick(&self.d, rows, c / 32),
            s16: pick(&self.s16, rows, c / 16),
            bias: pick(&self.bias, rows, c / 32),
        }
    }

    pub fn row(&self, i: usize) -> ActRow<'_> {
        let c = self.cols;
        ActRow {
            qs: &self.qs[i * c..(i + 1) * c],
            d: &self.d[i * c / 32..(i + 1) * c / 32],
            s16: &self.s16[i * c / 16..(i + 1) * c / 16],
            bias: &self.bias[i * c / 32..(i + 1) * c / 32],
        }
    }
}

/// Reference: one block of 32 activations to 8 bits (`d = max|x| / 127`, round half away from
/// zero); returns `d` and the sums of the two halves' quants.
pub fn quantize_block_ref(xs: &[f32], qs: &mut [i8]) -> (f32, i32, i32) {
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(xs) {
        *q = (v * id).round() as i8;
    }
    let sum = |q: &[i8]| q.iter().map(|&q| q as i32).sum::<i32>();
    (d, sum(&qs[..16]), sum(&qs[16..]))
}

/// The instruction set the fast kernels use, detected once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512Vnni,
}

impl Isa {
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            if std::env::var("GLM5_ISA").as_deref() == Ok("scalar") {
                return Isa::Scalar;
            }
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 = is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c");
                let vnni = avx2
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni");
                if vnni && std::env::var("GLM5_ISA").as_deref() != Ok("avx2") {
                    return Isa::Avx512Vnni;
                }
                if avx2 {
                    return Isa::Avx2;
                }
            }
            Isa::Scalar
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// Fast dot of a quantized weight row with an activation row, on `isa`.
pub fn dot_q(fmt: WFormat, w: &[u8], a: ActRow, isa: Isa) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        let vnni = isa == Isa::Avx512Vnni;
        // SAFETY: `isa` was detected on this machine. The low-bit and Q5_K kernels check the
        // lengths; the others rely on the callers' shape checks (a row of `cols` values
        // against `cols` activations).
        unsafe {
            match fmt {
                WFormat::Low(l) => return crate::x86_lowbit::dot(l, w, a, vnni),
                WFormat::Q5K => return crate::x86_lowbit::dot_q5_k(w, a, vnni),
                _ => {
                    if let Some(v) = crate::x86::dot_q(fmt, w, a, vnni) {
                        return v;
                    }
                }
            }
        }
    }
    let _ = isa;
    dot_q_ref(fmt, w, a)
}

/// Decode a low-bit row into `out` once for several activation rows (`dot_decoded`): the same
/// integers and scales as `DecodedRow::decode`, on `isa`.
pub fn decode_row(l: LowBit, w: &[u8], out: &mut DecodedRow, isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: `isa` (at least AVX2) was detected on this machine.
        return unsafe { crate::x86_lowbit::decode_row(l, w, out) };
    }
    let _ = isa;
    out.decode(l, w)
}

/// Fast dot of a decoded low-bit row (`DecodedRow`) with an activation row, on `isa`.
pub fn dot_decoded(w: &DecodedRow, a: ActRow, isa: Isa) -> f32 {
    debug_assert_eq!(w.q.len(), a.qs.len());
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: `isa` was detected on this machine; the row and activations have one length.
        unsafe {
            return crate::x86_lowbit::dot_decoded(w, a, isa == Isa::Avx512Vnni);
        }
    }
    let _ = isa;
    lowbit::dot_decoded_ref(w, a)
}

/// Fast dot of a float weight row with f32 activations.
pub fn dot_f(fmt: WFormat, w: &[u8], x: &[f32], isa: Isa) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: AVX-512F was detected; `w` holds `x.len()` values of `fmt`.
        unsafe {
            return crate::x86::dot_f(fmt, w, x);
        }
    }
    let _ = isa;
    dot_f_ref(fmt, w, x)
}

/// Reference: float weight row (`F32`/`F16`/`BF16` bytes) times f32 activations.
pub fn dot_f_ref(fmt: WFormat, w: &[u8], x: &[f32]) -> f32 {
    let mut row = Vec::with_capacity(x.len());
    fmt.dequantize_row(w, &mut row);
    crate::cpu::dot(&row, x)
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Reference: a quantized weight row times quantized activations, integer sums per block.
pub fn dot_q_ref(fmt: WFormat, w: &[u8], a: ActRow) -> f32 {
    let mut sum = 0f32;
    match fmt {
        WFormat::Q8_0 => {
            for (b, blk) in w.chunks_exact(34).enumerate() {
                let x = &a.qs[b * 32..b * 32 + 32];
                let isum: i32 = (0..32).map(|i| blk[2 + i] as i8 as i32 * x[i] as i32).sum();
                sum += f16_at(blk, 0) * a.d[b] * isum as f32;
            }
        }
        WFormat::Q4K | WFormat::Q5K => {
            let five = fmt == WFormat::Q5K;
            let bb = fmt.block_bytes();
            for (sb, blk) in w.chunks_exact(bb).enumerate() {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let scales = &blk[4..16];
                let (qh, qs) = if five {
                    (&blk[16..48], &blk[48..176])
                } else {
                    (&blk[0..0], &blk[16..144])
                };
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, scales);
                    let ab = sb * 8 + j;
                    let x = &a.qs[ab * 32..ab * 32 + 32];
                    let bytes = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
                    let isum: i32 = (0..32)
                        .map(|i| {
                            let mut q = ((bytes[i] >> (4 * (j % 2))) & 0x0F) as i32;
                            if five {
                                q |= (((qh[i] >> j) & 1) as i32) << 4;
                            }
                            q * x[i] as i32
                        })
                        .sum();
                    let xsum = (a.s16[2 * ab] + a.s16[2 * ab + 1]) as f32;
                    sum += a.d[ab] * (d * sc as f32 * isum as f32 - dmin * m as f32 * xsum);
                }
            }
        }
        WFormat::Q6K => {
            for (sb, blk) in w.chunks_exact(210).enumerate() {
                let (ql, qh, scales) = (&blk[0..128], &blk[128..192], &blk[192..208]);
                let d = f16_at(blk, 208);
                for s in 0..16 {
                    let mut isum = 0i32;
                    for k in s * 16..s * 16 + 16 {
                        let (h, e) = (k / 128, k % 128);
                        let low = (ql[h * 64 + e % 64] >> (4 * (e / 64))) & 0x0F;
                        let high = (qh[h * 32 + e % 32] >> (2 * (e / 32))) & 0x03;
                        isum += (low | (high << 4)) as i32 * a.qs[sb * QK_K + k] as i32;
                    }
                    let s16 = sb * 16 + s;
                    let corr = isum - 32 * a.s16[s16];
                    sum += d * (scales[s] as i8) as f32 * a.d[s16 / 2] * corr as f32;
                }
            }
        }
        WFormat::Low(l) => {
            let mut row = DecodedRow::default();
            row.decode(l, w);
            sum = lowbit::dot_decoded_ref(&row, a);
        }
        f => panic!("dot_q_ref: {} is not a quantized format", f.name()),
    }
    sum
}
