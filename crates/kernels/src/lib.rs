//! glm5-kernels: CPU ops.
//!
//! `cpu` holds the plain reference kernels: written for obvious correctness, in f32, and used as
//! the specification that every fast kernel is tested against. `quant` holds the GGML block
//! formats (Q8_0, Q4_K, Q5_K, Q6_K) in plain reference form. Owns no layer names, configs or
//! requests.

pub mod cpu;
pub mod quant;
