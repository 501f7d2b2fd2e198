//! Helpers shared by the kernel tests: a seeded generator, the ISAs this machine can run, and
//! the tolerance of a dot against its reference.
#![allow(dead_code)]

use glm5_kernels::qdot::Isa;

pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

pub fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    let best = Isa::detect();
    if best == Isa::Avx512Vnni {
        v.push(Isa::Avx2);
    }
    if best != Isa::Scalar {
        v.push(best);
    }
    v
}

pub fn close(a: f32, b: f32, scale: f32, what: &str) {
    assert!(
        (a - b).abs() <= 1e-4 * scale + 1e-5,
        "{what}: {a} vs {b} (scale {scale})"
    );
}
