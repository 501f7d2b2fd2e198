//! glm5-kernels: CPU ops.
//!
//! `cpu` holds the plain reference kernels: written for obvious correctness, in f32, and used as
//! the specification that every fast kernel is tested against. `quant` holds the GGML block
//! formats (Q8_0, Q4_K, Q5_K, Q6_K) in plain reference form, `lowbit` the others llama.cpp's
//! files carry (legacy, Q2_K/Q3_K, the i-quants; their register twins in `x86_lowbit`) and
//! `lowbit_quant` the IQ4 quantizers. `qdot` is the row-dot layer (a reference per format, SIMD
//! twins in `x86` chosen at run time), `matrix` the weight matrix and
//! its matmul over the persistent thread pool in `pool`. Owns no layer names, configs or
//! requests.

pub mod attn;
pub mod cpu;
pub mod dsa;
pub mod fused;
pub mod fvec;
pub mod grids;
pub mod lowbit;
pub mod lowbit_quant;
pub mod matrix;
pub mod membw;
pub mod packed;
pub mod peak;
pub mod pool;
pub mod qdot;
pub mod quant;
pub mod rows;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_attn;
#[cfg(target_arch = "x86_64")]
mod x86_kquant;
#[cfg(target_arch = "x86_64")]
mod x86_lowbit;

pub use matrix::{Acts, Bytes, Matrix};
pub use qdot::{Isa, WFormat};
