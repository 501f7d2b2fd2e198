//! glm5-kernels: CPU ops.
//!
//! `cpu` holds the plain reference kernels: written for obvious correctness, in f32, and used as
//! the specification that every fast kernel is tested against. Owns no layer names, configs or
//! requests.

pub mod cpu;
