//! On Linux the prepared mlx-sys links MLX's shared library from the pinned `mlx-cpu` wheel
//! (`scripts/prepare_mlx.py`); its directory goes into the rpath of this crate's tests and binaries.

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
