//! This machine's compute ceilings (int8 `vpdpbusd`, f32 FMA) over the pool:
//! `cargo run --release -p glm5-kernels --example peak [threads]`.

fn main() {
    let threads = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let threads = glm5_kernels::pool::set_threads(threads);
    let show = |v: Option<f64>| v.map_or("n/a (no AVX-512)".to_string(), |v| format!("{v:.0}"));
    println!("threads {threads}");
    println!("int8 {} GOP/s", show(glm5_kernels::peak::int8_peak_gops(5)));
    println!(
        "f32  {} GFLOP/s",
        show(glm5_kernels::peak::f32_peak_gflops(5))
    );
}
