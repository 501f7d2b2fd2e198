//! f32 vector primitives for the attention loops (dot, axpy): AVX-512 where detected, else the
//! plain loops of `cpu` (their reference twins; tests/qdot.rs compares them).

use crate::qdot::Isa;

/// `a . b`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(
        a.len(),
        b.len(),
        "dot of lengths {} and {}",
        a.len(),
        b.len()
    );
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512Vnni {
        // SAFETY: AVX-512F was detected; lengths are equal.
        return unsafe { crate::x86::dot_f32(a, b) };
    }
    crate::cpu::dot(a, b)
}

/// `y += alpha * x`.
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    assert_eq!(
        y.len(),
        x.len(),
        "axpy of lengths {} and {}",
        y.len(),
        x.len()
    );
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512Vnni {
        // SAFETY: AVX-512F was detected; lengths are equal.
        return unsafe { crate::x86::axpy_f32(y, alpha, x) };
    }
    axpy_ref(y, alpha, x)
}

/// The SwiGLU activation `silu(g) * u`, elementwise: `[n, inter]` gate and up rows -> `[n, inter]`.
pub fn swiglu(g: &[f32], u: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; g.len()];
    swiglu_into(g, u, &mut out);
    out
}

/// `swiglu` into `out` (the same length).
pub fn swiglu_into(g: &[f32], u: &[f32], out: &mut [f32]) {
    assert!(
        g.len() == u.len() && out.len() == g.len(),
        "swiglu of lengths {} and {} into {}",
        g.len(),
        u.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512Vnni {
        // Spans of 4,096 values on the pool for a prefill.
        crate::pool::rows_mut(out, 1, 4096, &|i, o| {
            let (g, u) = (&g[i..i + o.len()], &u[i..i + o.len()]);
            // SAFETY: AVX-512F was detected; all three lengths are equal.
            unsafe { crate::x86_attn::swiglu(g, u, o) };
        });
        return;
    }
    for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
        *o = crate::cpu::silu(*g) * u;
    }
}

/// `x[i] = exp(x[i] - m)` in place (a softmax's numerators); returns their sum. AVX-512
/// where detected (within a few ulp of libm's `exp`), else `exp_sub_ref`.
pub fn exp_sub(x: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512Vnni {
        // SAFETY: AVX-512F was detected.
        return unsafe { crate::x86_attn::exp_sub(x, m) };
    }
    exp_sub_ref(x, m)
}

/// Reference twin of `exp_sub` (libm's `exp`, summed in order).
pub fn exp_sub_ref(x: &mut [f32], m: f32) -> f32 {
    let mut s = 0f32;
    for v in x.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    s
}

/// Reference twin of `swiglu` (libm's `exp`).
pub fn swiglu_ref(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.iter()
        .zip(u)
        .map(|(g, u)| crate::cpu::silu(*g) * u)
        .collect()
}

/// Reference twin of `axpy`.
pub fn axpy_ref(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (a, b) in y.iter_mut().zip(x) {
        *a += alpha * b;
    }
}

/// Widen bf16 bits to f32: `out[i] = f32(src[i])` (exact).
pub fn bf16_to_f32(src: &[u16], out: &mut [f32]) {
    assert!(
        out.len() >= src.len(),
        "bf16 widen: {} values into {}",
        src.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512Vnni {
        // SAFETY: AVX-512F/BW were detected; out is long enough.
        return unsafe { crate::x86_attn::bf16_to_f32(src, out) };
    }
    for (o, &h) in out.iter_mut().zip(src) {
        *o = f32::from_bits((h as u32) << 16);
    }
}
