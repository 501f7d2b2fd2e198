//! The GGML block formats that llama.cpp-made GGUFs carry besides Q8_0/Q4_K/Q5_K/Q6_K: the
//! legacy 32-value blocks (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL: llama-quantize's fallback for rows
//! that are not a multiple of 256), the small k-quants (Q2_K, Q3_K) and the i-quants (IQ1_S,
//! IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_XS), in plain reference form.
//!
//! Every one of them decodes to small integers with a float scale per 16 values and, for some,
//! a float offset per 16: `x = sc[k / 16] * q[k] (+ mn[k / 16])`, `|q| <= 127`. That one form
//! (`Decoded`) is both the dequantizer (the same f32 operations as gguf-py's, so the same bits:
//! tests/quant.rs) and what the dot kernels consume: the integer dot of `q` with 8-bit
//! activations per 16 values, then the scales. IQ1_S/IQ1_M's `grid +- 1/8` becomes
//! `q = 8 * grid +- 1` with `sc = dl / 8` (exact: a power-of-two scale).
//!
//! | type | block | bytes | per block |
//! |---|---|---|---|
//! | Q4_0 | 32 | 18 | f16 `d`, 16 bytes of nibbles; `x = d * (q - 8)` |
//! | Q4_1 | 32 | 20 | f16 `d`, f16 `m`, nibbles; `x = d * q + m` |
//! | Q5_0 | 32 | 22 | f16 `d`, 32 fifth bits, nibbles; `x = d * (q - 16)` |
//! | Q5_1 | 32 | 24 | f16 `d`, f16 `m`, fifth bits, nibbles; `x = d * q + m` |
//! | IQ4_NL | 32 | 18 | f16 `d`, nibbles indexing `KVALUES_IQ4NL`; `x = d * kv[q]` |
//! | Q2_K | 256 | 84 | 16 scale/min nibbles, 2-bit values, f16 `d`, `dmin`; `x = d*sc*q - dmin*m` per 16 |
//! | Q3_K | 256 | 110 | high-bit mask, 2-bit values, 12 bytes of 6-bit scales, f16 `d`; `x = d*(sc-32)*q`, `q` in -4..3 |
//! | IQ4_XS | 256 | 136 | f16 `d`, 6-bit scales per 32, nibbles into `kv`; `x = d*(ls-32)*kv[q]` |
//! | IQ2_XXS | 256 | 66 | f16 `d`; per 32: 4 grid bytes, 4 x 7 sign bits, 4-bit scale |
//! | IQ2_XS | 256 | 74 | f16 `d`; per 8 values a u16 (9-bit grid index, 7 sign bits); 4-bit scales per 16 |
//! | IQ2_S | 256 | 82 | f16 `d`; 10-bit grid indices per 8, explicit sign bytes, 4-bit scales per 16 |
//! | IQ3_XXS | 256 | 98 | f16 `d`; grid bytes per 4 values; per 32 a u32 of signs and scale |
//! | IQ3_S | 256 | 110 | f16 `d`; 9-bit grid indices per 4, sign bytes, 4-bit scales per 32 |
//! | IQ1_S | 256 | 50 | f16 `d`; 11-bit grid indices per 8 ({-1,0,1}), per 32 a 3-bit scale and the sign of a 1/8 shift |
//! | IQ1_M | 256 | 56 | 11-bit grid indices per 8, shift sign per 8, 3-bit scales per 16, f16 `d` spread over 4 nibbles |

use half::f16;

use crate::grids::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS, KVALUES_IQ4NL,
};

/// The formats of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LowBit {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    IQ4NL,
    Q2K,
    Q3K,
    IQ4XS,
    IQ2XXS,
    IQ2XS,
    IQ2S,
    IQ3XXS,
    IQ3S,
    IQ1S,
    IQ1M,
}

/// One block as small integers and per-16 scales: `x[k] = sc[k / 16] * q[k] (+ mn[k / 16])`.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub q: [i8; 256],
    pub sc: [f32; 16],
    /// Offsets per 16 values; all zero (and not added) unless `LowBit::has_min`.
    pub mn: [f32; 16],
}

impl Default for Decoded {
    fn default() -> Decoded {
        Decoded {
            q: [0; 256],
            sc: [0.0; 16],
            mn: [0.0; 16],
        }
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Byte `j` of a grid entry, as i8.
fn grid_byte(entry: u64, j: usize) -> i8 {
    (entry >> (8 * j)) as u8 as i8
}

/// `v` with the sign of bit `j` of `signs` (set: negative).
fn signed(v: i8, signs: u8, j: usize) -> i8 {
    if signs >> j & 1 == 1 {
        -v
    } else {
        v
    }
}

impl LowBit {
    pub const ALL: [LowBit; 15] = [
        LowBit::Q4_0,
        LowBit::Q4_1,
        LowBit::Q5_0,
        LowBit::Q5_1,
        LowBit::IQ4NL,
        LowBit::Q2K,
        LowBit::Q3K,
        LowBit::IQ4XS,
        LowBit::IQ2XXS,
        LowBit::IQ2XS,
        LowBit::IQ2S,
        LowBit::IQ3XXS,
        LowBit::IQ3S,
        LowBit::IQ1S,
        LowBit::IQ1M,
    ];

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            LowBit::Q4_0 | LowBit::Q4_1 | LowBit::Q5_0 | LowBit::Q5_1 | LowBit::IQ4NL => 32,
            _ => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            LowBit::Q4_0 | LowBit::IQ4NL => 18,
            LowBit::Q4_1 => 20,
            LowBit::Q5_0 => 22,
            LowBit::Q5_1 => 24,
            LowBit::Q2K => 84,
            LowBit::Q3K => 110,
            LowBit::IQ4XS => 136,
            LowBit::IQ2XXS => 66,
            LowBit::IQ2XS => 74,
            LowBit::IQ2S => 82,
            LowBit::IQ3XXS => 98,
            LowBit::IQ3S => 110,
            LowBit::IQ1S => 50,
            LowBit::IQ1M => 56,
        }
    }

    /// Whether values carry an offset (`mn`) besides the scale.
    pub fn has_min(self) -> bool {
        matches!(self, LowBit::Q4_1 | LowBit::Q5_1 | LowBit::Q2K)
    }

    /// llama.cpp's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            LowBit::Q4_0 => "q4_0",
            LowBit::Q4_1 => "q4_1",
            LowBit::Q5_0 => "q5_0",
            LowBit::Q5_1 => "q5_1",
            LowBit::IQ4NL => "iq4_nl",
            LowBit::Q2K => "q2_k",
            LowBit::Q3K => "q3_k",
            LowBit::IQ4XS => "iq4_xs",
            LowBit::IQ2XXS => "iq2_xxs",
            LowBit::IQ2XS => "iq2_xs",
            LowBit::IQ2S => "iq2_s",
            LowBit::IQ3XXS => "iq3_xxs",
            LowBit::IQ3S => "iq3_s",
            LowBit::IQ1S => "iq1_s",
            LowBit::IQ1M => "iq1_m",
        }
    }

    /// Decode one block (`b.len() == block_bytes`) into `out`'s first `block_len` values and
    /// `block_len / 16` scales.
    pub fn decode(self, b: &[u8], out: &mut Decoded) {
        debug_assert_eq!(b.len(), self.block_bytes());
        let (q, sc, mn) = (&mut out.q, &mut out.sc, &mut out.mn);
        match self {
            LowBit::Q4_0 | LowBit::Q4_1 | LowBit::IQ4NL => {
                let (d, qs) = match self {
                    LowBit::Q4_1 => {
                        let m = f16_at(b, 2);
                        mn[..2].fill(m);
                        (f16_at(b, 0), &b[4..20])
                    }
                    _ => (f16_at(b, 0), &b[2..18]),
                };
                sc[..2].fill(d);
                for j in 0..16 {
                    let (lo, hi) = (qs[j] & 0x0F, qs[j] >> 4);
                    (q[j], q[j + 16]) = match self {
                        LowBit::Q4_0 => (lo as i8 - 8, hi as i8 - 8),
                        LowBit::Q4_1 => (lo as i8, hi as i8),
                        _ => (KVALUES_IQ4NL[lo as usize], KVALUES_IQ4NL[hi as usize]),
                    };
                }
            }
            LowBit::Q5_0 | LowBit::Q5_1 => {
                let at = if self == LowBit::Q5_1 {
                    mn[..2].fill(f16_at(b, 2));
                    4
                } else {
                    2
                };
                sc[..2].fill(f16_at(b, 0));
                let qh = u32_at(b, at);
                let qs = &b[at + 4..at + 20];
                let off = if self == LowBit::Q5_0 { 16 } else { 0 };
                for j in 0..16 {
                    let lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4) as u8;
                    let hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
                    (q[j], q[j + 16]) = (lo as i8 - off, hi as i8 - off);
                }
            }
            LowBit::Q2K => {
                let (scales, qs) = (&b[0..16], &b[16..80]);
                let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
                for s in 0..16 {
                    sc[s] = d * (scales[s] & 0x0F) as f32;
                    mn[s] = -(dmin * (scales[s] >> 4) as f32);
                }
                for k in 0..256 {
                    let (h, j, l) = (k / 128, (k % 128) / 32, k % 32);
                    q[k] = ((qs[h * 32 + l] >> (2 * j)) & 3) as i8;
                }
            }
            LowBit::Q3K => {
                let (hmask, qs, scales) = (&b[0..32], &b[32..96], &b[96..108]);
                let d = f16_at(b, 108);
                for s in 0..16 {
                    let low = if s < 8 {
                        scales[s] & 0x0F
                    } else {
                        scales[s - 8] >> 4
                    };
                    let high = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
                    sc[s] = d * ((low | (high << 4)) as i8 - 32) as f32;
                }
                for k in 0..256 {
                    let (h, j, l) = (k / 128, (k % 128) / 32, k % 32);
                    let low = ((qs[h * 32 + l] >> (2 * j)) & 3) as i8;
                    let hbit = (hmask[l] >> (k / 32)) & 1;
                    q[k] = low - if hbit == 1 { 0 } else { 4 };
                }
            }
            LowBit::IQ4XS => {
                let d = f16_at(b, 0);
                let scales_h = u16_at(b, 2);
                let (scales_l, qs) = (&b[4..8], &b[8..136]);
                for ib in 0..8 {
                    let ls = ((scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F)
                        | ((((scales_h >> (2 * ib)) & 3) as u8) << 4);
                    let dl = d * (ls as i8 - 32) as f32;
                    sc[2 * ib..2 * ib + 2].fill(dl);
                    for j in 0..16 {
                        let byte = qs[ib * 16 + j];
                        q[ib * 32 + j] = KVALUES_IQ4NL[(byte & 0x0F) as usize];
                        q[ib * 32 + j + 16] = KVALUES_IQ4NL[(byte >> 4) as usize];
                    }
                }
            }
            LowBit::IQ2XXS => {
                let d = f16_at(b, 0);
                for ib in 0..8 {
                    let (grids, aux) = (&b[2 + 8 * ib..6 + 8 * ib], u32_at(b, 6 + 8 * ib));
                    let db = d * (0.5 + (aux >> 28) as f32) * 0.25;
                    sc[2 * ib..2 * ib + 2].fill(db);
                    for l in 0..4 {
                        let g = IQ2XXS_GRID[grids[l] as usize];
                        let signs = KSIGNS[((aux >> (7 * l)) & 127) as usize];
                        for j in 0..8 {
                            q[ib * 32 + l * 8 + j] = signed(grid_byte(g, j), signs, j);
                        }
                    }
                }
            }
            LowBit::IQ2XS => {
                let d = f16_at(b, 0);
                let scales = &b[66..74];
                for s in 0..16 {
                    let ls = (scales[s / 2] >> (4 * (s % 2))) & 0x0F;
                    sc[s] = d * (0.5 + ls as f32) * 0.25;
                }
                for g in 0..32 {
                    let v = u16_at(b, 2 + 2 * g);
                    let grid = IQ2XS_GRID[(v & 511) as usize];
                    let signs = KSIGNS[(v >> 9) as usize];
                    for j in 0..8 {
                        q[g * 8 + j] = signed(grid_byte(grid, j), signs, j);
                    }
                }
            }
            LowBit::IQ2S => {
                let d = f16_at(b, 0);
                let (qs, signs, qh, scales) = (&b[2..34], &b[34..66], &b[66..74], &b[74..82]);
                for s in 0..16 {
                    let ls = (scales[s / 2] >> (4 * (s % 2))) & 0x0F;
                    sc[s] = d * (0.5 + ls as f32) * 0.25;
                }
                for g in 0..32 {
                    let idx = qs[g] as usize | (((qh[g / 4] >> (2 * (g % 4))) & 3) as usize) << 8;
                    let grid = IQ2S_GRID[idx];
                    for j in 0..8 {
                        q[g * 8 + j] = signed(grid_byte(grid, j), signs[g], j);
                    }
                }
            }
            LowBit::IQ3XXS => {
                let d = f16_at(b, 0);
                let qs = &b[2..66];
                for ib in 0..8 {
                    let aux = u32_at(b, 66 + 4 * ib);
                    let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
                    sc[2 * ib..2 * ib + 2].fill(db);
                    for l in 0..4 {
                        let signs = KSIGNS[((aux >> (7 * l)) & 127) as usize];
                        for m in 0..8 {
                            let k = ib * 32 + l * 8 + m;
                            let g = IQ3XXS_GRID[qs[k / 4] as usize] as u64;
                            q[k] = signed(grid_byte(g, m % 4), signs, m);
                        }
                    }
                }
            }
            LowBit::IQ3S => {
                let d = f16_at(b, 0);
                let (qs, qh, signs, scales) = (&b[2..66], &b[66..74], &b[74..106], &b[106..110]);
                for ib in 0..8 {
                    let ls = (scales[ib / 2] >> (4 * (ib % 2))) & 0x0F;
                    let db = d * (1 + 2 * ls) as f32;
                    sc[2 * ib..2 * ib + 2].fill(db);
                }
                for k in 0..256 {
                    let i = k / 4;
                    let idx = qs[i] as usize | (((qh[i / 8] >> (i % 8)) & 1) as usize) << 8;
                    let g = IQ3S_GRID[idx] as u64;
                    q[k] = signed(grid_byte(g, k % 4), signs[k / 8], k % 8);
                }
            }
            LowBit::IQ1S => {
                let d = f16_at(b, 0);
                let qs = &b[2..34];
                for ib in 0..8 {
                    let qh = u16_at(b, 34 + 2 * ib);
                    let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
                    sc[2 * ib..2 * ib + 2].fill(dl / 8.0);
                    let shift: i8 = if qh & 0x8000 == 0 { 1 } else { -1 };
                    for l in 0..4 {
                        let idx = qs[4 * ib + l] as usize | (((qh >> (3 * l)) & 7) as usize) << 8;
                        for j in 0..8 {
                            q[ib * 32 + l * 8 + j] = 8 * grid_byte(IQ1S_GRID[idx], j) + shift;
                        }
                    }
                }
            }
            LowBit::IQ1M => {
                let (qs, qh) = (&b[0..32], &b[32..48]);
                let s: [u16; 4] = std::array::from_fn(|i| u16_at(b, 48 + 2 * i));
                let bits =
                    (s[0] >> 12) | ((s[1] >> 8) & 0xF0) | ((s[2] >> 4) & 0xF00) | (s[3] & 0xF000);
                let d = f16::from_bits(bits).to_f32();
                for i in 0..16 {
                    let ls = (s[i / 4] >> (3 * (i % 4))) & 7;
                    sc[i] = d * (2 * ls + 1) as f32 / 8.0;
                }
                for g in 0..32 {
                    let h = (qh[g / 2] >> (4 * (g % 2))) & 0x0F;
                    let idx = qs[g] as usize | ((h & 7) as usize) << 8;
                    let shift: i8 = if h & 8 == 0 { 1 } else { -1 };
                    for j in 0..8 {
                        q[g * 8 + j] = 8 * grid_byte(IQ1S_GRID[idx], j) + shift;
                    }
                }
            }
        }
    }

    /// Dequantize whole blocks, appending to `out`: gguf-py's values, bit for bit.
    pub fn dequantize(self, bytes: &[u8], out: &mut Vec<f32>) {
        let (bb, bl) = (self.block_bytes(), self.block_len());
        assert_eq!(bytes.len() % bb, 0, "partial {} block", self.name());
        let mut dec = Decoded::default();
        for block in bytes.chunks_exact(bb) {
            self.decode(block, &mut dec);
            for k in 0..bl {
                let x = dec.sc[k / 16] * dec.q[k] as f32;
                out.push(if self.has_min() {
                    x + dec.mn[k / 16]
                } else {
                    x
                });
            }
        }
    }
}

/// A weight row decoded once (`LowBit::decode` block by block) for several activation rows.
#[derive(Debug, Clone, Default)]
pub struct DecodedRow {
    pub q: Vec<i8>,
    pub sc: Vec<f32>,
    pub mn: Vec<f32>,
    pub has_min: bool,
}

impl DecodedRow {
    /// Decode `bytes` (whole blocks of `fmt`) into `self`, reusing its buffers.
    pub fn decode(&mut self, fmt: LowBit, bytes: &[u8]) {
        let (bb, bl) = (fmt.block_bytes(), fmt.block_len());
        let n = bytes.len() / bb * bl;
        self.q.resize(n, 0);
        self.sc.resize(n / 16, 0.0);
        self.mn.resize(n / 16, 0.0);
        self.has_min = fmt.has_min();
        let mut dec = Decoded::default();
        for (i, block) in bytes.chunks_exact(bb).enumerate() {
            fmt.decode(block, &mut dec);
            self.q[i * bl..(i + 1) * bl].copy_from_slice(&dec.q[..bl]);
            self.sc[i * bl / 16..(i + 1) * bl / 16].copy_from_slice(&dec.sc[..bl / 16]);
            self.mn[i * bl / 16..(i + 1) * bl / 16].copy_from_slice(&dec.mn[..bl / 16]);
        }
    }
}

/// Reference: a decoded row times 8-bit activations, integer sums per 16 values.
pub fn dot_decoded_ref(w: &DecodedRow, a: crate::qdot::ActRow) -> f32 {
    let mut sum = 0f32;
    for g in 0..w.sc.len() {
        let isum: i32 = (g * 16..g * 16 + 16)
            .map(|k| w.q[k] as i32 * a.qs[k] as i32)
            .sum();
        let mut v = w.sc[g] * isum as f32;
        if w.has_min {
            v += w.mn[g] * a.s16[g] as f32;
        }
        sum += a.d[g / 2] * v;
    }
    sum
}
