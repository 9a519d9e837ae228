//! On Linux the prepared mlx-sys links MLX's shared library from the pinned `mlx-cpu` wheel
//! (`scripts/prepare_mlx.py`); its directory goes into the rpath of this crate's tests and binaries.

fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
