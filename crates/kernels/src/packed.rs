//! Q8_0, Q4_K and Q6_K weights repacked in groups of 16 rows, so one 512-bit `vpdpbusd` serves 16 rows at once
//! (rust-stack.md §4.1: llama.cpp's "repack" buffers do the same for its CPU backend).
//!
//! A matrix of `rows` Q8_0 rows keeps its byte size and row-group offsets: the first
//! `rows / 16 * 16` rows are stored as groups, the remaining rows in plain Q8_0 after them. A
//! group of 16 rows is `cols / 32` blocks of 544 bytes, block `b` holding
//!
//! ```text
//! [16 x f16]          the 16 rows' scales for block b, in row order
//! [8 x 16 x 4 bytes]  quad c (values 4c..4c+4 of the block) of row 0, of row 1, ..., of row 15
//! ```
//!
//! and each stored byte is the signed weight plus 128 (`w ^ 0x80`): `vpdpbusd` multiplies
//! unsigned by signed bytes, so the weights take the unsigned side and the activation block's
//! sum corrects the offset (`Q8Acts::bias`, `-128 * sum(x)`).
//!
//! Q4_K (where AVX-512 VNNI runs it) is regrouped the same way, again at the same size: a
//! group's 256-value super-block `sb` is 2304 bytes,
//!
//! ```text
//! [16 x f16] d, [16 x f16] dmin       the rows' super-block scales
//! [12 x 16 bytes]                     byte k of the 12 packed 6-bit scale/min bytes, per row
//! [4 x 8 x 16 x 4 bytes]              pair p (sub-blocks 2p | 2p+1 << 4), quad c, row r
//! ```
//!
//! so one 64-byte load holds 4 nibble pairs of 16 rows: its low nibbles meet sub-block 2p's
//! activations, its high nibbles sub-block 2p+1's, each in one `vpdpbusd` (nibbles are
//! unsigned already; the mins are subtracted with the activation sums).
//!
//! `dot16_ref` is the plain reference for the layouts; `dot16` dispatches to the SIMD twins.

use crate::qdot::{dot_q_ref, ActRow, Isa, WFormat};
use crate::quant::{QK8_0, QK_K};

/// Rows per group.
pub const GROUP: usize = 16;
/// Bytes of one block of a group: 16 scales and 16 x 32 quants.
pub const GROUP_BLOCK: usize = GROUP * 34;

/// Rows stored as groups (the rest follow in plain rows).
pub fn grouped_rows(rows: usize) -> usize {
    rows / GROUP * GROUP
}

/// Whether `format` is regrouped on this machine (a layout only pays with its SIMD kernel).
pub fn groups(format: WFormat) -> bool {
    match format {
        WFormat::Q8_0 => true,
        WFormat::Q4K | WFormat::Q6K => Isa::detect() == Isa::Avx512Vnni,
        _ => false,
    }
}

/// One group of 16 plain rows of `cols` values of `format` -> the grouped layout.
pub fn pack(format: WFormat, plain: &[u8], cols: usize, out: &mut [u8]) {
    match format {
        WFormat::Q8_0 => pack_q8_0(plain, cols / QK8_0, out),
        WFormat::Q4K => pack_q4_k(plain, cols / QK_K, out),
        WFormat::Q6K => pack_q6_k(plain, cols / QK_K, out),
        f => panic!("{} has no grouped layout", f.name()),
    }
}

fn pack_q4_k(plain: &[u8], nsb: usize, out: &mut [u8]) {
    let rb = nsb * 144;
    for sb in 0..nsb {
        let dst = &mut out[sb * 2304..(sb + 1) * 2304];
        for r in 0..GROUP {
            let blk = &plain[r * rb + sb * 144..r * rb + (sb + 1) * 144];
            dst[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
            dst[32 + 2 * r..34 + 2 * r].copy_from_slice(&blk[2..4]);
            for k in 0..12 {
                dst[64 + k * 16 + r] = blk[4 + k];
            }
            for pc in 0..32 {
                let at = 256 + pc * 64 + r * 4;
                dst[at..at + 4].copy_from_slice(&blk[16 + pc * 4..20 + pc * 4]);
            }
        }
    }
}

/// Q6_K super-block `sb` of a group (3360 bytes): `[16 x f16]` d, `[16 x 16]` the rows' i8
/// scales by sub-block, then the 32 nibble quads of `ql` and the 16 2-bit quads of `qh`, each
/// as 16 rows x 4 bytes, in the order the kernel reads them (`q6_k_line`): for k = 8h + c,
/// `qh` quad k, then `ql` quads 16h + c and 16h + 8 + c. One pass over a super-block is then
/// one ascending stream, which the hardware prefetchers follow (jumping between the three
/// regions, the stream ran at a third of the plain read's speed).
fn pack_q6_k(plain: &[u8], nsb: usize, out: &mut [u8]) {
    let rb = nsb * 210;
    for sb in 0..nsb {
        let dst = &mut out[sb * 3360..(sb + 1) * 3360];
        for r in 0..GROUP {
            let blk = &plain[r * rb + sb * 210..r * rb + (sb + 1) * 210];
            dst[2 * r..2 * r + 2].copy_from_slice(&blk[208..210]);
            for s in 0..16 {
                dst[32 + s * 16 + r] = blk[192 + s];
            }
            for q in 0..48 {
                let at = q6_k_line(q) + r * 4;
                dst[at..at + 4].copy_from_slice(&blk[4 * q..4 * q + 4]);
            }
        }
    }
}

/// Offset in a grouped Q6_K super-block of the 64-byte line holding quad `q` of the plain
/// block (quads 0..32 of `ql`, 32..48 of `qh`) for 16 rows: line 3k is `qh` quad k, lines 3k + 1
/// and 3k + 2 the `ql` quads 16h + c and 16h + 8 + c, for k = 8h + c.
pub fn q6_k_line(q: usize) -> usize {
    let (k, slot) = if q >= 32 {
        (q - 32, 0)
    } else {
        let (h, rem) = (q / 16, q % 16);
        (h * 8 + rem % 8, 1 + rem / 8)
    };
    288 + (3 * k + slot) * 64
}

fn unpack_q6_k(group: &[u8], nsb: usize, i: usize) -> Vec<u8> {
    let mut row = Vec::with_capacity(nsb * 210);
    for sb in 0..nsb {
        let blk = &group[sb * 3360..];
        for q in 0..48 {
            let at = q6_k_line(q) + i * 4;
            row.extend_from_slice(&blk[at..at + 4]);
        }
        row.extend((0..16).map(|s| blk[32 + s * 16 + i]));
        row.extend_from_slice(&blk[2 * i..2 * i + 2]);
    }
    row
}

fn unpack_q4_k(group: &[u8], nsb: usize, i: usize) -> Vec<u8> {
    let mut row = Vec::with_capacity(nsb * 144);
    for sb in 0..nsb {
        let blk = &group[sb * 2304..];
        row.extend_from_slice(&blk[2 * i..2 * i + 2]);
        row.extend_from_slice(&blk[32 + 2 * i..34 + 2 * i]);
        row.extend((0..12).map(|k| blk[64 + k * 16 + i]));
        for pc in 0..32 {
            let at = 256 + pc * 64 + i * 4;
            row.extend_from_slice(&blk[at..at + 4]);
        }
    }
    row
}

/// One Q8_0 group: 16 plain rows of `nb` blocks -> `nb` grouped blocks.
fn pack_q8_0(plain: &[u8], nb: usize, out: &mut [u8]) {
    let rb = nb * 34;
    for b in 0..nb {
        let dst = &mut out[b * GROUP_BLOCK..(b + 1) * GROUP_BLOCK];
        for r in 0..GROUP {
            let blk = &plain[r * rb + b * 34..r * rb + (b + 1) * 34];
            dst[2 * r..2 * r + 2].copy_from_slice(&blk[..2]);
            for c in 0..8 {
                let quad = u32::from_le_bytes(blk[2 + c * 4..6 + c * 4].try_into().expect("4"));
                let at = 32 + c * 64 + r * 4;
                dst[at..at + 4].copy_from_slice(&(quad ^ 0x8080_8080).to_le_bytes());
            }
        }
    }
}

/// Plain bytes of row `r` of a grouped matrix.
pub fn unpack_row(format: WFormat, bytes: &[u8], rows: usize, cols: usize, r: usize) -> Vec<u8> {
    let rb = format.row_bytes(cols);
    if r >= grouped_rows(rows) {
        return bytes[r * rb..(r + 1) * rb].to_vec();
    }
    let group = &bytes[(r / GROUP) * GROUP * rb..];
    let i = r % GROUP;
    match format {
        WFormat::Q4K => return unpack_q4_k(group, cols / QK_K, i),
        WFormat::Q6K => return unpack_q6_k(group, cols / QK_K, i),
        _ => {}
    }
    let nb = cols / QK8_0;
    let mut row = Vec::with_capacity(rb);
    for b in 0..nb {
        let blk = &group[b * GROUP_BLOCK..];
        row.extend_from_slice(&blk[2 * i..2 * i + 2]);
        for c in 0..8 {
            row.extend((0..4).map(|j| blk[32 + c * 64 + i * 4 + j] ^ 0x80));
        }
    }
    row
}

/// Reference: the 16 rows of one group dotted with one activation row.
pub fn dot16_ref(format: WFormat, group: &[u8], a: ActRow) -> [f32; GROUP] {
    if format != WFormat::Q8_0 {
        // The layout undone, then the per-row reference.
        let (nsb, rb) = (a.d.len() * 32 / QK_K, format.row_bytes(a.d.len() * 32));
        return std::array::from_fn(|i| {
            let row = unpack_row(format, group, GROUP, nsb * QK_K, i);
            debug_assert_eq!(row.len(), rb);
            dot_q_ref(format, &row, a)
        });
    }
    let nb = a.d.len();
    let mut out = [0f32; GROUP];
    for b in 0..nb {
        let blk = &group[b * GROUP_BLOCK..(b + 1) * GROUP_BLOCK];
        let x = &a.qs[b * 32..b * 32 + 32];
        for (r, o) in out.iter_mut().enumerate() {
            let d = half::f16::from_le_bytes([blk[2 * r], blk[2 * r + 1]]).to_f32();
            let isum: i32 = (0..32)
                .map(|k| {
                    let w = (blk[32 + (k / 4) * 64 + r * 4 + k % 4] ^ 0x80) as i8;
                    w as i32 * x[k] as i32
                })
                .sum();
            *o += d * a.d[b] * isum as f32;
        }
    }
    out
}

/// The 16 rows of one group dotted with up to 4 activation rows: `out[t][r]`.
///
/// `ahead`: also prefetch the group that follows in memory (same size, right after `group`)
/// into L2 while this one is read. For callers that stream groups from DRAM with several
/// tokens: their kernels compute long enough per byte that the hardware prefetcher alone
/// leaves memory idle. On the bench model, a 4-token verify forward took 45 instead of 49.8 ms
/// (Q8_0) and 30.7 instead of 35.7 ms (Q4_K_M), faster in 9 of 9 alternating pairs each.
/// Decode (one token) is slower with it (+3-10% per step), so `matmul_many` leaves it off.
pub fn dot16(
    format: WFormat,
    group: &[u8],
    acts: &[ActRow],
    out: &mut [[f32; GROUP]],
    isa: Isa,
    ahead: bool,
) {
    debug_assert!(acts.len() <= 4 && out.len() >= acts.len());
    debug_assert!(acts
        .iter()
        .all(|a| group.len() >= GROUP * format.row_bytes(a.d.len() * 32)
            && a.bias.len() == a.d.len()));
    #[cfg(target_arch = "x86_64")]
    match (format, isa) {
        (WFormat::Q8_0, Isa::Avx2 | Isa::Avx512Vnni) => {
            // SAFETY: `isa` was detected on this machine; `group` holds a.d.len() grouped
            // blocks (checked above in debug builds, guaranteed by `Matrix`'s shape checks).
            unsafe { crate::x86::dot16(group, acts, out, isa == Isa::Avx512Vnni, ahead) };
            return;
        }
        (WFormat::Q4K, Isa::Avx512Vnni) => {
            // SAFETY: as above.
            unsafe { crate::x86_kquant::dot16_q4_k(group, acts, out, ahead) };
            return;
        }
        (WFormat::Q6K, Isa::Avx512Vnni) => {
            // SAFETY: as above.
            unsafe { crate::x86_kquant::dot16_q6_k(group, acts, out, ahead) };
            return;
        }
        _ => {}
    }
    let _ = (isa, ahead);
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        *o = dot16_ref(format, group, *a);
    }
}
