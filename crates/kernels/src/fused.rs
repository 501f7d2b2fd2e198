//! Decode-step fusions: work that would otherwise run on one thread between two pool dispatches
//! (while the other threads wait), done inside the dispatch by the unit that produced its
//! inputs, while they are still in its L1.

use crate::fvec;
use crate::matrix::{unit_rows, Acts, Matrix};
use crate::pool::{self, Disjoint};
use crate::qdot::{Isa, Q8Acts};

/// Most activation rows `swiglu_many` takes (a decode step, a speculative verify step).
pub const SWIGLU_MAX_ROWS: usize = 8;

/// Whether `swiglu_many` takes this MLP over `a`: gate and up of one shape and format, a
/// width of whole 32-value blocks, at most `SWIGLU_MAX_ROWS` rows, and 8-bit activations where
/// the weights are quantized. Callers fall back to the three steps otherwise.
pub fn fits(gate: &Matrix, up: &Matrix, a: &Acts) -> bool {
    gate.rows == up.rows
        && gate.cols == up.cols
        && gate.format == up.format
        && gate.rows.is_multiple_of(32)
        && a.cols == gate.cols
        && a.n <= SWIGLU_MAX_ROWS
        && (!gate.format.is_quantized() || a.is_quantized())
}

/// The SwiGLU hidden rows of several MLPs over a few activation rows, in one pool dispatch:
/// per `(gate_proj, up_proj, x)`, `h = silu(x G^T) * (x U^T)` as `[n, inter]` f32 and its 8-bit
/// form, ready for `down_proj`. A unit computes a 32-row range of one MLP's gate rows and then
/// the same up rows (two sequential weight streams), applies SwiGLU to its part of `h` and
/// quantizes it: the same bits as `matmul_many` + `fvec::swiglu` + `Acts::new`, without the
/// single-threaded pass over the products between the dispatches.
///
/// Panics unless every MLP `fits`.
pub fn swiglu_many(mlps: &[(&Matrix, &Matrix, &Acts)]) -> Vec<(Vec<f32>, Q8Acts)> {
    let isa = Isa::detect();
    let threads = pool::global().threads();
    for (g, u, a) in mlps {
        assert!(
            fits(g, u, a),
            "SwiGLU of gate {g:?} and up {u:?} over [{}, {}] activations",
            a.n,
            a.cols
        );
    }
    // Units: (mlp, row range). Each reads its rows of both matrices: half the rows per unit of
    // `matmul_many`'s decode units, so as many bytes per unit.
    let total_rows: usize = mlps.iter().map(|(g, ..)| 2 * g.rows).sum();
    let per = (total_rows / (threads * 8) / 2).clamp(32, 1024) / 32 * 32;
    let units: Vec<(usize, usize, usize)> = mlps
        .iter()
        .enumerate()
        .flat_map(|(k, (g, ..))| (0..g.rows).step_by(per).map(move |r0| (k, r0, g.rows)))
        .map(|(k, r0, rows)| (k, r0, (r0 + per).min(rows)))
        .collect();
    // A few KB each (a decode step's rows): zeroed, then every value written by one unit.
    let mut hs: Vec<Vec<f32>> = mlps
        .iter()
        .map(|(g, _, a)| vec![0f32; a.n * g.rows])
        .collect();
    let mut qs: Vec<Q8Acts> = mlps
        .iter()
        .map(|(g, _, a)| Q8Acts::zeroed(a.n, g.rows))
        .collect();
    let dsts: Vec<Disjoint<f32>> = hs.iter_mut().map(|h| Disjoint::new(h)).collect();
    let writers: Vec<_> = qs.iter_mut().map(|q| q.blocks()).collect();
    pool::run_split(units.len(), &|i| {
        let (k, r0, r1) = units[i];
        let (g, u, a) = mlps[k];
        let (inter, w) = (g.rows, r1 - r0);
        // [n, w] each: this unit's rows of x G^T and x U^T.
        let mut gv = vec![0f32; a.n * w];
        let mut uv = vec![0f32; a.n * w];
        for (m, dst) in [(g, &mut gv), (u, &mut uv)] {
            unit_rows(m, a, r0..r1, 0..a.n, isa, &mut |t, r, v| {
                let at = t * w + r - r0;
                dst[at..at + v.len()].copy_from_slice(v);
            });
        }
        for t in 0..a.n {
            let at = t * inter + r0;
            // SAFETY: values r0..r1 of row t of MLP k's h belong to this unit only.
            let h = unsafe { dsts[k].range(at..at + w) };
            fvec::swiglu_into(&gv[t * w..(t + 1) * w], &uv[t * w..(t + 1) * w], h);
            // SAFETY: the same values' blocks (r0 and w are multiples of 32), this unit's only.
            unsafe { writers[k].quantize(at / 32, h) };
        }
    });
    drop((dsts, writers));
    hs.into_iter().zip(qs).collect()
}
