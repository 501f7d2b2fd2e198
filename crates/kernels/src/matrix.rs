//! A weight matrix `[rows, cols]` stored row-major in any `WFormat` (owned, or borrowed from a
//! mapped file), and `y = x W^T` over the thread pool.
//!
//! Work is cut into units of (weight rows x activation rows) and handed out by the pool's atomic
//! counter; one pool dispatch can cover several matrices (`matmul_many`), so the small
//! projections of one layer (q_a, kv_a, the indexer's) or the active experts' gate/up rows cost
//! one dispatch, not one each.

use std::borrow::Cow;
use std::sync::Arc;

use crate::lowbit::{DecodedRow, LowBit};
use crate::lowbit_quant;
use crate::packed::{self, GROUP};
use crate::pool::{self, SyncPtr};
use crate::qdot::{self, ActRow, Isa, Q8Acts, WFormat};
use crate::quant;

/// A shared buffer that matrices borrow ranges of (a memory-mapped file).
pub trait Owner: Send + Sync {
    fn bytes(&self) -> &[u8];
    /// The range was copied out and will not be read again: its pages may leave memory.
    fn release(&self, _offset: usize, _len: usize) {}
}

/// An anonymous mapping for weights the process builds itself (repacked), on 2 MiB pages where
/// the kernel allows: a stream over gigabytes of weights then takes no TLB miss per 4 KiB and
/// the hardware prefetchers are not stopped at every 4 KiB page boundary.
pub struct Anon(memmap2::MmapMut);

impl Anon {
    pub fn new(len: usize) -> Anon {
        let m = memmap2::MmapMut::map_anon(len.max(1)).expect("mapping anonymous memory");
        #[cfg(target_os = "linux")]
        let _ = m.advise(memmap2::Advice::HugePage);
        Anon(m)
    }
}

impl std::ops::Deref for Anon {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for Anon {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Owner for Anon {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The bytes of a matrix: its own, or a range of a shared buffer.
#[derive(Clone)]
pub enum Bytes {
    Owned(Vec<u8>),
    Shared {
        owner: Arc<dyn Owner>,
        offset: usize,
        len: usize,
    },
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Shared { owner, offset, len } => &owner.bytes()[*offset..*offset + *len],
        }
    }
}

#[derive(Clone)]
pub struct Matrix {
    pub format: WFormat,
    pub rows: usize,
    pub cols: usize,
    /// Rows regrouped by 16 (`packed`); otherwise plain rows.
    grouped: bool,
    data: Bytes,
}

impl std::fmt::Debug for Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Matrix[{}x{} {}{}]",
            self.rows,
            self.cols,
            self.format.name(),
            if self.grouped { " x16" } else { "" }
        )
    }
}

/// Activations for one or more matmuls: the f32 rows, and their 8-bit form when the width
/// allows (a multiple of 32).
pub struct Acts<'a> {
    pub x: &'a [f32],
    pub n: usize,
    pub cols: usize,
    /// The 8-bit rows: these activations' own, or borrowed from a larger set (`rows`), where
    /// row `t` is `q`'s row `q_row0 + t`.
    q: Option<Cow<'a, Q8Acts>>,
    q_row0: usize,
}

impl<'a> Acts<'a> {
    /// `x: [n, cols]`.
    pub fn new(x: &'a [f32], cols: usize) -> Acts<'a> {
        assert!(
            cols > 0 && x.len().is_multiple_of(cols),
            "activations are not [n, {cols}]"
        );
        let q = cols
            .is_multiple_of(32)
            .then(|| Cow::Owned(Q8Acts::quantize(x, cols)));
        Acts {
            x,
            n: x.len() / cols,
            cols,
            q,
            q_row0: 0,
        }
    }

    /// `x: [n, cols]` with its 8-bit form already made (`q`, the same shape).
    pub fn quantized(x: &'a [f32], cols: usize, q: Q8Acts) -> Acts<'a> {
        assert!(
            q.cols == cols && q.rows * cols == x.len(),
            "8-bit rows [{}, {}] for activations of {} values of width {cols}",
            q.rows,
            q.cols,
            x.len()
        );
        Acts {
            x,
            n: q.rows,
            cols,
            q: Some(Cow::Owned(q)),
            q_row0: 0,
        }
    }

    /// Rows `r0..r1` of `all` as activations of their own: the 8-bit rows are borrowed, not
    /// quantized again (one quantization for, say, every head's query row of a decode step
    /// instead of one per head).
    pub fn rows(all: &'a Acts, r0: usize, r1: usize) -> Acts<'a> {
        assert!(r0 <= r1 && r1 <= all.n, "rows {r0}..{r1} of {}", all.n);
        Acts {
            x: &all.x[r0 * all.cols..r1 * all.cols],
            n: r1 - r0,
            cols: all.cols,
            q: all.q.as_deref().map(Cow::Borrowed),
            q_row0: all.q_row0 + r0,
        }
    }

    /// Whether the rows have their 8-bit form (the width is a multiple of 32).
    pub fn is_quantized(&self) -> bool {
        self.q.is_some()
    }

    /// Row `t`'s 8-bit form.
    pub fn q_row(&self, t: usize) -> Option<ActRow<'_>> {
        self.q.as_ref().map(|q| q.row(self.q_row0 + t))
    }

    /// Rows `rows` of `all`, whose f32 values the caller has gathered into `x` (`[rows.len(),
    /// cols]`): the 8-bit rows are copied from `all`, not quantized again.
    pub fn gather(all: &Acts, rows: &[usize], x: &'a [f32]) -> Acts<'a> {
        assert_eq!(
            x.len(),
            rows.len() * all.cols,
            "gathered activations are not [{}, {}]",
            rows.len(),
            all.cols
        );
        Acts {
            x,
            n: rows.len(),
            cols: all.cols,
            q: all.q.as_ref().map(|q| {
                let rows: Vec<usize> = rows.iter().map(|r| all.q_row0 + r).collect();
                Cow::Owned(q.gather(&rows))
            }),
            q_row0: 0,
        }
    }
}

/// Whether `format` can store rows of `cols` values.
pub fn fits(format: WFormat, cols: usize) -> bool {
    cols.is_multiple_of(format.block_len())
}

impl Matrix {
    /// Wrap stored bytes; the length must be exactly `rows` rows of `cols` values.
    pub fn from_bytes(
        format: WFormat,
        rows: usize,
        cols: usize,
        data: Bytes,
    ) -> Result<Matrix, String> {
        if !fits(format, cols) {
            return Err(format!(
                "{} rows of {cols} values are not whole {}-value blocks",
                format.name(),
                format.block_len()
            ));
        }
        let want = rows * format.row_bytes(cols);
        let have = data.as_slice().len();
        if have != want {
            return Err(format!(
                "[{rows}, {cols}] {} needs {want} bytes, found {have}",
                format.name()
            ));
        }
        Ok(Matrix {
            format,
            rows,
            cols,
            grouped: false,
            data,
        })
    }

    /// The same matrix in the layout its fast kernel prefers: with at least 16 rows, the
    /// formats `packed::groups` names are regrouped by 16 rows; others are returned as they
    /// are. Borrowed bytes are copied, and their source pages released.
    pub fn packed(self) -> Matrix {
        if self.grouped || !packed::groups(self.format) || self.rows < GROUP {
            return self;
        }
        let rb = self.format.row_bytes(self.cols);
        let src = self.bytes();
        let mut out = Anon::new(src.len());
        let grouped = packed::grouped_rows(self.rows);
        let (format, cols) = (self.format, self.cols);
        let dst = SyncPtr(out.as_mut_ptr() as *mut f32);
        pool::run(grouped / GROUP, &|g| {
            let span = g * GROUP * rb..(g + 1) * GROUP * rb;
            // SAFETY: group g alone writes bytes `span` of `out`.
            let o = unsafe {
                std::slice::from_raw_parts_mut((dst.get() as *mut u8).add(span.start), span.len())
            };
            packed::pack(format, &src[span], cols, o);
        });
        out[grouped * rb..].copy_from_slice(&src[grouped * rb..]);
        if let Bytes::Shared { owner, offset, len } = &self.data {
            owner.release(*offset, *len);
        }
        let len = out.len();
        Matrix {
            grouped: true,
            data: Bytes::Shared {
                owner: Arc::new(out),
                offset: 0,
                len,
            },
            ..self
        }
    }

    /// Whether the rows are regrouped by 16 (`packed`).
    pub fn is_grouped(&self) -> bool {
        self.grouped
    }

    /// Store f32 values `[rows, cols]` in `format`, quantizing if needed.
    pub fn quantize(
        w: &[f32],
        rows: usize,
        cols: usize,
        format: WFormat,
    ) -> Result<Matrix, String> {
        assert_eq!(w.len(), rows * cols, "matrix is not [{rows}, {cols}]");
        if !fits(format, cols) {
            return Err(format!(
                "rows of {cols} values cannot be stored as {} ({}-value blocks)",
                format.name(),
                format.block_len()
            ));
        }
        let rb = format.row_bytes(cols);
        let mut out = vec![0u8; rows * rb];
        // Rows are independent: quantize blocks of rows on the pool.
        const ROWS_PER_UNIT: usize = 16;
        let dst = SyncPtr(out.as_mut_ptr() as *mut f32);
        let result = std::sync::Mutex::new(Ok(()));
        pool::run(rows.div_ceil(ROWS_PER_UNIT), &|u| {
            let (r0, r1) = (u * ROWS_PER_UNIT, ((u + 1) * ROWS_PER_UNIT).min(rows));
            let src = &w[r0 * cols..r1 * cols];
            let mut buf = Vec::with_capacity((r1 - r0) * rb);
            match format {
                WFormat::F32 => src
                    .iter()
                    .for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
                WFormat::F16 => src
                    .iter()
                    .for_each(|v| buf.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
                WFormat::BF16 => src
                    .iter()
                    .for_each(|v| buf.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
                WFormat::Q8_0 => quant::quantize_q8_0(src, &mut buf),
                WFormat::Q4K => quant::quantize_q4_k(src, &mut buf),
                WFormat::Q6K => quant::quantize_q6_k(src, &mut buf),
                WFormat::Low(LowBit::IQ4NL) => lowbit_quant::quantize_iq4_nl(src, &mut buf),
                WFormat::Low(LowBit::IQ4XS) => lowbit_quant::quantize_iq4_xs(src, &mut buf),
                WFormat::Q5K => quant::quantize_q5_k(src, &mut buf),
                f @ WFormat::Low(_) => {
                    *result.lock().unwrap_or_else(|e| e.into_inner()) =
                        Err(format!("quantizing to {} is not supported", f.name()));
                    return;
                }
            }
            // SAFETY: unit u alone writes bytes r0*rb..r1*rb of `out`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    buf.as_ptr(),
                    (dst.get() as *mut u8).add(r0 * rb),
                    buf.len(),
                )
            };
        });
        result.into_inner().unwrap_or_else(|e| e.into_inner())?;
        Matrix::from_bytes(format, rows, cols, Bytes::Owned(out))
    }

    /// f32 values, owned.
    pub fn from_f32(w: Vec<f32>, rows: usize, cols: usize) -> Matrix {
        assert_eq!(w.len(), rows * cols, "matrix is not [{rows}, {cols}]");
        let bytes = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        Matrix {
            format: WFormat::F32,
            rows,
            cols,
            grouped: false,
            data: Bytes::Owned(bytes),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// Bytes read by one pass over the matrix.
    pub fn nbytes(&self) -> usize {
        self.rows * self.format.row_bytes(self.cols)
    }

    /// The stored bytes of row `r` (plain layout only).
    pub fn row_bytes(&self, r: usize) -> &[u8] {
        assert!(!self.grouped, "{self:?} has no plain rows");
        let rb = self.format.row_bytes(self.cols);
        &self.bytes()[r * rb..(r + 1) * rb]
    }

    /// Row `r` as f32.
    pub fn row_f32(&self, r: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.cols);
        if self.grouped {
            let row = packed::unpack_row(self.format, self.bytes(), self.rows, self.cols, r);
            self.format.dequantize_row(&row, &mut out);
        } else {
            self.format.dequantize_row(self.row_bytes(r), &mut out);
        }
        out
    }

    /// The whole matrix as f32 `[rows, cols]`.
    pub fn to_f32(&self) -> Vec<f32> {
        (0..self.rows).flat_map(|r| self.row_f32(r)).collect()
    }

    /// Rows `r0..r1` as a new matrix (shares mapped bytes; copies owned ones). A grouped
    /// matrix is cut at group boundaries only (or at its end).
    pub fn slice_rows(&self, r0: usize, r1: usize) -> Matrix {
        assert!(
            !self.grouped
                || (r0.is_multiple_of(GROUP)
                    && ((r1 - r0).is_multiple_of(GROUP) || r1 == self.rows)),
            "rows {r0}..{r1} cut a 16-row group of {self:?}"
        );
        let rb = self.format.row_bytes(self.cols);
        let data = match &self.data {
            Bytes::Owned(v) => Bytes::Owned(v[r0 * rb..r1 * rb].to_vec()),
            Bytes::Shared { owner, offset, .. } => Bytes::Shared {
                owner: owner.clone(),
                offset: offset + r0 * rb,
                len: (r1 - r0) * rb,
            },
        };
        Matrix {
            format: self.format,
            rows: r1 - r0,
            cols: self.cols,
            grouped: self.grouped,
            data,
        }
    }

    /// `y = x W^T`: `x: [n, cols]` -> `[n, rows]`.
    pub fn matmul(&self, x: &[f32]) -> Vec<f32> {
        let a = Acts::new(x, self.cols);
        matmul_many(&[(self, &a)]).pop().expect("one result")
    }

    /// Reference twin of `matmul`: dequantize, then the plain f32 kernel. (Quantized formats
    /// also quantize the activations in the fast path, so compare with a tolerance.)
    pub fn matmul_ref(&self, x: &[f32]) -> Vec<f32> {
        crate::cpu::matmul_t(x, &self.to_f32(), x.len() / self.cols, self.cols, self.rows)
    }
}

/// Activation rows up to which a matmul is decode-like (a decode or verify step): long units,
/// and each thread on its own share of them (`pool::run_split`).
const FEW_ROWS: usize = 8;

/// Activation rows handled per unit in prefill (their 8-bit rows stay in L2 while a block of
/// weight rows is reused across them).
const TOKENS_PER_UNIT: usize = 64;

/// Rows `rows` of `x W^T` for activation rows `tokens`: `put(t, r, values)` receives the
/// values of rows `r..r + values.len()` of token `t` (16 at a time from a group, one at a time
/// from plain rows), each exactly once. Quantized weights need `a`'s 8-bit rows.
pub(crate) fn unit_rows(
    m: &Matrix,
    a: &Acts,
    rows: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    isa: Isa,
    put: &mut dyn FnMut(usize, usize, &[f32]),
) {
    let (mut r0, r1, t0, t1) = (rows.start, rows.end, tokens.start, tokens.end);
    let bytes = m.bytes();
    let rb = m.format.row_bytes(m.cols);
    if m.grouped {
        let g1 = r1.min(packed::grouped_rows(m.rows));
        // The unit's activation rows, built once for all of its groups.
        let arows: Vec<ActRow> = (t0..t1)
            .map(|t| a.q_row(t).expect("grouped weights are quantized"))
            .collect();
        for g0 in (r0..g1).step_by(GROUP) {
            let group = &bytes[g0 * rb..(g0 + GROUP) * rb];
            // Several tokens: the first pass over a group prefetches the unit's next one.
            let ahead = t1 - t0 > 1 && g0 + GROUP < g1;
            for tt in (t0..t1).step_by(4) {
                let rows = &arows[tt - t0..(tt + 4).min(t1) - t0];
                let mut y = [[0f32; GROUP]; 4];
                packed::dot16(m.format, group, rows, &mut y, isa, ahead && tt == t0);
                for (i, yt) in y[..rows.len()].iter().enumerate() {
                    put(tt + i, g0, yt);
                }
            }
        }
        // The rows after the last group are plain.
        r0 = r0.max(g1);
    }
    let mut decoded = DecodedRow::default();
    for r in r0..r1 {
        let w = &bytes[r * rb..(r + 1) * rb];
        if let (WFormat::Low(l), true) = (m.format, t1 - t0 > 1) {
            // Decoded once for all of the unit's activation rows.
            qdot::decode_row(l, w, &mut decoded, isa);
            for t in t0..t1 {
                let q = a.q_row(t).expect("low-bit weights are quantized");
                put(t, r, &[qdot::dot_decoded(&decoded, q, isa)]);
            }
            continue;
        }
        for t in t0..t1 {
            let v = match a.q_row(t) {
                Some(q) if m.format.is_quantized() => qdot::dot_q(m.format, w, q, isa),
                _ => qdot::dot_f(m.format, w, &a.x[t * a.cols..(t + 1) * a.cols], isa),
            };
            put(t, r, &[v]);
        }
    }
}

/// Several `y = x W^T` in one pool dispatch; returns one `[n, rows]` per pair.
pub fn matmul_many(jobs: &[(&Matrix, &Acts)]) -> Vec<Vec<f32>> {
    let isa = Isa::detect();
    let threads = pool::global().threads();
    // Not zeroed: the units below write every value (set_len at the end).
    let mut outs: Vec<Vec<f32>> = jobs
        .iter()
        .map(|(m, a)| Vec::with_capacity(a.n * m.rows))
        .collect();
    // Units: (job, row range, token range).
    let mut units: Vec<(usize, usize, usize, usize, usize)> = Vec::new();
    let total_rows: usize = jobs.iter().map(|(m, _)| m.rows).sum();
    for (j, (m, a)) in jobs.iter().enumerate() {
        assert_eq!(a.cols, m.cols, "activations of width {} meet {m:?}", a.cols);
        assert!(
            !m.format.is_quantized() || a.is_quantized(),
            "{m:?} needs activations whose width is a multiple of 32"
        );
        // Enough units to balance the threads, in whole groups of 16 rows, each unit a
        // sequential stream of weights that several groups long lets `dot16` prefetch the next
        // group while it computes. A few tokens (decode, a speculative verify step) read each
        // weight row once for all of them, in units of up to 2,048 rows (7% faster than 256
        // when the machine read ~53 GB/s, `--example decode_step`). More tokens (prefill, a
        // batch of sequences) take at most 256 rows x 64 tokens per unit: against 16-row units
        // with the prefetch, a 512-token prompt ran +15% (Q8_0, 5 of 5 alternating pairs;
        // Q4_K_M 4 of 5) and a 16-sequence decode step 5% faster (6 of 6).
        let cap = if a.n <= FEW_ROWS { 2048 } else { 256 };
        let per = (total_rows / (threads * 8)).clamp(16, cap) / 16 * 16;
        for r0 in (0..m.rows).step_by(per) {
            for t0 in (0..a.n).step_by(TOKENS_PER_UNIT) {
                units.push((
                    j,
                    r0,
                    (r0 + per).min(m.rows),
                    t0,
                    (t0 + TOKENS_PER_UNIT).min(a.n),
                ));
            }
        }
    }
    let ptrs: Vec<SyncPtr> = outs.iter_mut().map(|o| SyncPtr(o.as_mut_ptr())).collect();
    // A few tokens (decode): each thread streams its own share of the units (`run_split`).
    // More: neighbouring units, which read the same weight rows, run together (`run`).
    let few = jobs.iter().all(|(_, a)| a.n <= FEW_ROWS);
    let run = if few { pool::run_split } else { pool::run };
    run(units.len(), &|u| {
        let (j, r0, r1, t0, t1) = units[u];
        let (m, a) = jobs[j];
        let out = &ptrs[j];
        unit_rows(m, a, r0..r1, t0..t1, isa, &mut |t, r, v| {
            // SAFETY: rows r0..r1 of tokens t0..t1 belong to this unit only; t < n and
            // r + v.len() <= rows.
            unsafe {
                let dst = out.get().add(t * m.rows + r);
                std::ptr::copy_nonoverlapping(v.as_ptr(), dst, v.len());
            }
        });
    });
    for (o, (m, a)) in outs.iter_mut().zip(jobs) {
        // SAFETY: the units cover every (token, row) of every job once: row ranges step through
        // 0..rows and token ranges through 0..n, and each unit writes all of its (t, r), grouped
        // or plain. The capacity was reserved above.
        unsafe { o.set_len(a.n * m.rows) };
    }
    outs
}
