//! With the `mlx` feature on Linux, the MLX library of the mlx-cpu wheel (see
//! scripts/prepare_mlx.py) goes into the rpath of kenning's binaries and tests.

fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
