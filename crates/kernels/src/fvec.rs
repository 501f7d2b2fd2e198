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

/// Reference twin of `axpy`.
pub fn axpy_ref(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (a, b) in y.iter_mut().zip(x) {
        *a += alpha * b;
    }
}
