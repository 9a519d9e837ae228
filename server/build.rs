//! With the `mlx` feature on Linux, the MLX library of the mlx-cpu wheel (see
//! scripts/prepare_mlx.py) goes into the rpath of kenning's binaries and tests.

fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    // OpenBLAS as a direct dependency of every binary, so that libmlx's BLAS calls resolve to it
    // rather than to the wheel's reference BLAS (prepare_mlx.py explains; 17x on training here).
    if let Ok(openblas) = std::env::var("DEP_MLX_OPENBLAS") {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,{openblas},--as-needed");
    }
}
