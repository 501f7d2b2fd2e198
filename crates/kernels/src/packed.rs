//! Q8_0 weights repacked in groups of 16 rows, so one 512-bit `vpdpbusd` serves 16 rows at once
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
//! `dot16_ref` is the plain reference for the layout; `dot16` dispatches to the SIMD twins.

use crate::qdot::{ActRow, Isa};
use crate::quant::QK8_0;

/// Rows per group.
pub const GROUP: usize = 16;
/// Bytes of one block of a group: 16 scales and 16 x 32 quants.
pub const GROUP_BLOCK: usize = GROUP * 34;

/// Rows stored as groups (the rest follow in plain Q8_0).
pub fn grouped_rows(rows: usize) -> usize {
    rows / GROUP * GROUP
}

/// Repack plain Q8_0 bytes `[rows, cols]` into the grouped layout (same length).
pub fn pack_q8_0(plain: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let nb = cols / QK8_0;
    let rb = nb * 34;
    assert_eq!(
        plain.len(),
        rows * rb,
        "q8_0 bytes are not [{rows}, {cols}]"
    );
    let mut out = vec![0u8; plain.len()];
    let grouped = grouped_rows(rows);
    for g in 0..grouped / GROUP {
        pack_group(
            &plain[g * GROUP * rb..(g + 1) * GROUP * rb],
            nb,
            &mut out[g * GROUP * rb..(g + 1) * GROUP * rb],
        );
    }
    out[grouped * rb..].copy_from_slice(&plain[grouped * rb..]);
    out
}

/// One group: 16 plain rows of `nb` blocks -> `nb` grouped blocks.
pub fn pack_group(plain: &[u8], nb: usize, out: &mut [u8]) {
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

/// Plain Q8_0 bytes of row `r` of a grouped matrix.
pub fn unpack_row(bytes: &[u8], rows: usize, cols: usize, r: usize) -> Vec<u8> {
    let nb = cols / QK8_0;
    let rb = nb * 34;
    if r >= grouped_rows(rows) {
        return bytes[r * rb..(r + 1) * rb].to_vec();
    }
    let group = &bytes[(r / GROUP) * GROUP * rb..];
    let i = r % GROUP;
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
pub fn dot16_ref(group: &[u8], a: ActRow) -> [f32; GROUP] {
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
pub fn dot16(group: &[u8], acts: &[ActRow], out: &mut [[f32; GROUP]], isa: Isa) {
    debug_assert!(acts.len() <= 4 && out.len() >= acts.len());
    debug_assert!(acts
        .iter()
        .all(|a| group.len() >= a.d.len() * GROUP_BLOCK && a.bias.len() == a.d.len()));
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: `isa` was detected on this machine; `group` holds a.d.len() grouped blocks
        // (checked above in debug builds, guaranteed by `Matrix`'s shape checks).
        unsafe { crate::x86::dot16(group, acts, out, isa == Isa::Avx512Vnni) };
        return;
    }
    let _ = isa;
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        *o = dot16_ref(group, *a);
    }
}
