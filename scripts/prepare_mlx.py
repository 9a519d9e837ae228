#!/usr/bin/env python3
"""Prepares mlx-sys 0.7.0 (the crate behind mlx-rs) so it builds offline, here and on macOS.

As published, mlx-sys builds only on macOS and git-fetches MLX during its build. This script takes
the crate from the cargo registry (fetched with cargo itself), copies it to training/vendor/mlx-sys
(git-ignored, used through [patch.crates-io]) and, on Linux only:
  1. builds mlx-c against MLX from the pinned `mlx-cpu` wheel (MLX_C_USE_SYSTEM_MLX, MLX_DIR),
     instead of fetching MLX's source;
  2. links libstdc++ and the wheel's libmlx.so instead of c++/objc/Foundation, and publishes the
     library directory (DEP_MLX_LIBDIR) so the crate using it can set an rpath;
  3. replaces std::format (missing from Debian's g++ 12) in mlx-c's private/io.h;
  4. gives mlx-c's half.h float16_t/bfloat16_t typedefs off ARM;
  5. links Debian's OpenBLAS into every binary using MLX, ahead of the wheel's reference BLAS.
(The fifth Linux gap, mlx-rs calling macOS's mach_approximate_time, is filled in the training crate.)
On macOS the crate is copied unchanged. Nothing of mlx-sys or mlx-c is committed.

Usage: prepare_mlx.py MLX_PREFIX   (the `mlx` package directory of the mlx-cpu wheel; ignored on macOS)
"""

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile

VERSION = "0.7.0"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEST = os.path.join(ROOT, "training", "vendor", "mlx-sys")


def registry_copy() -> str:
    """Fetches mlx-sys with cargo and returns its unpacked source directory."""
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "src"))
        with open(os.path.join(tmp, "Cargo.toml"), "w") as f:
            f.write(f'[package]\nname = "mlx-fetch"\nversion = "0.0.0"\nedition = "2021"\n'
                    f'[dependencies]\nmlx-sys = {{ version = "={VERSION}", default-features = false }}\n[workspace]\n')
        open(os.path.join(tmp, "src", "lib.rs"), "w").close()
        subprocess.run(["cargo", "fetch", "--quiet", "--manifest-path", os.path.join(tmp, "Cargo.toml")], check=True)
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    src = os.path.join(home, "registry", "src")
    for index in sorted(os.listdir(src)):
        candidate = os.path.join(src, index, f"mlx-sys-{VERSION}")
        if os.path.isfile(os.path.join(candidate, "Cargo.toml")):
            return candidate
    raise SystemExit(f"prepare_mlx: mlx-sys {VERSION} not found under {src} after cargo fetch")


def replace(path: str, old: str, new: str, count: int = 1) -> None:
    with open(path) as f:
        text = f.read()
    if text.count(old) < 1:
        raise SystemExit(f"prepare_mlx: {path}: expected text not found (mlx-sys changed?):\n{old}")
    with open(path, "w") as f:
        f.write(text.replace(old, new, count if count > 0 else text.count(old)))


def patch_linux(dest: str, mlx: str) -> None:
    cmake_dir = os.path.join(mlx, "share", "cmake", "MLX")
    lib_dir = os.path.join(mlx, "lib")
    for required in (os.path.join(cmake_dir, "MLXConfig.cmake"), os.path.join(lib_dir, "libmlx.so")):
        if not os.path.exists(required):
            # Resolution of the workspace only needs the crate to exist; building the training crate
            # needs MLX (scripts/setup, group all, installs it).
            print(f"note  {required} is not installed yet: the training crate builds after `scripts/setup`", file=sys.stderr)
    build = os.path.join(dest, "build.rs")
    replace(build, '    config.define("MLX_BUILD_ACCELERATE", "OFF");\n',
            '    config.define("MLX_BUILD_ACCELERATE", "OFF");\n'
            '    // kenning (scripts/prepare_mlx.py): MLX from the pinned mlx-cpu wheel, not fetched.\n'
            f'    config.define("MLX_C_USE_SYSTEM_MLX", "ON");\n    config.define("MLX_DIR", {cmake_dir!r});\n'.replace("'", '"'))
    replace(build,
            '    for library in native_link::libraries(&dst.join("build")) {',
            '    // kenning: on Linux link the static mlx-c and the wheel\'s shared libmlx.\n'
            '    println!("cargo:rustc-link-lib=static=mlxc");\n'
            f'    println!("cargo:rustc-link-search=native={lib_dir}");\n'
            '    println!("cargo:rustc-link-lib=dylib=mlx");\n'
            '    println!("cargo:rustc-link-lib=dylib=stdc++");\n'
            f'    println!("cargo::metadata=libdir={lib_dir}");\n'
            '    if false {\n'
            '    for library in native_link::libraries(&dst.join("build")) {')
    replace(build,
            '    println!("cargo:rustc-link-lib=c++");\n'
            '    println!("cargo:rustc-link-lib=dylib=objc");\n'
            '    println!("cargo:rustc-link-lib=framework=Foundation");\n',
            '    println!("cargo:rustc-link-lib=c++");\n'
            '    println!("cargo:rustc-link-lib=dylib=objc");\n'
            '    println!("cargo:rustc-link-lib=framework=Foundation");\n'
            '    }\n' + openblas_lines())
    # The clang runtime lookup runs xcrun: absent here, it returns None; keep it.

    io_h = os.path.join(dest, "src", "mlx-c", "mlx", "c", "private", "io.h")
    replace(io_h, '#include <streambuf>\n',
            '#include <sstream>\n#include <streambuf>\n#include <string>\n\n'
            '// kenning (scripts/prepare_mlx.py): std::format is missing from g++ 12; "{}" placeholders only.\n'
            'namespace {\n'
            'inline void mlx_c_format_into(std::ostringstream& out, const char* f) { out << f; }\n'
            'template <typename T, typename... Rest>\n'
            'void mlx_c_format_into(std::ostringstream& out, const char* f, const T& value, const Rest&... rest) {\n'
            '  for (; *f; ++f) {\n'
            '    if (f[0] == \'{\' && f[1] == \'}\') {\n'
            '      out << value;\n'
            '      mlx_c_format_into(out, f + 2, rest...);\n'
            '      return;\n'
            '    }\n'
            '    out << *f;\n'
            '  }\n'
            '}\n'
            'template <typename... Args>\n'
            'std::string mlx_c_format(const char* f, const Args&... args) {\n'
            '  std::ostringstream out;\n'
            '  mlx_c_format_into(out, f, args...);\n'
            '  return out.str();\n'
            '}\n'
            '} // namespace\n', 1)
    replace(io_h, "std::format(", "mlx_c_format(", count=0)

    half_h = os.path.join(dest, "src", "mlx-c", "mlx", "c", "half.h")
    replace(half_h, "#ifdef __cplusplus\n}\n#endif\n",
            "/* kenning (scripts/prepare_mlx.py): 16-bit storage types off ARM (scalar float16 C calls are\n"
            "   not used by kenning; arrays of them are passed as data pointers). */\n"
            "#if !defined(HAS_FLOAT16)\n#define HAS_FLOAT16\n#include <stdint.h>\ntypedef uint16_t float16_t;\n#endif\n"
            "#if !defined(HAS_BFLOAT16)\n#define HAS_BFLOAT16\n#include <stdint.h>\ntypedef uint16_t bfloat16_t;\n#endif\n\n"
            "#ifdef __cplusplus\n}\n#endif\n", 1)


# The same places, in the same order, as scripts/requirements: libopenblas0-pthread's own directory
# beside the alternatives link (which can be missing or dangling while dpkg configuration is delayed).
OPENBLAS = [f"/usr/lib/{arch}-linux-gnu/{sub}libopenblas.so.0"
            for arch in ("x86_64", "aarch64") for sub in ("", "openblas-pthread/")] + ["/usr/lib64/libopenblas.so.0"]


def openblas_lines() -> str:
    """The wheel's libmlx calls the *reference* BLAS it bundles (≈3 GFLOP/s f32 matmul here). Every
    binary linking mlx-sys also gets OpenBLAS as a direct dependency (--no-as-needed: no Rust code
    calls it): the dynamic linker then resolves libmlx's BLAS calls to OpenBLAS, which comes before
    libmlx's own dependencies in the lookup order (17x faster training measured)."""
    found = next((p for p in OPENBLAS if os.path.isfile(p)), None)
    if found is None:
        print("warn  OpenBLAS (libopenblas0) not found: MLX falls back to the wheel's reference BLAS, ~17x slower", file=sys.stderr)
        return '    println!("cargo:warning=libopenblas.so.0 not found: MLX uses its slow reference BLAS (install libopenblas0)");\n'
    # Link arguments do not propagate to dependents: published as metadata (DEP_MLX_OPENBLAS) for the
    # build scripts of the crates that link binaries (training/build.rs, server/build.rs).
    return ('    // kenning: OpenBLAS ahead of the reference BLAS the mlx-cpu wheel bundles.\n'
            f'    println!("cargo::metadata=openblas={found}");\n')


def patch_bindings(dest: str) -> None:
    """float16_t as the newtype mlx-rs expects (`.0` is the bits; bindgen would see plain uint16_t on
    x86). bfloat16_t stays a u16 alias, as mlx-rs expects."""
    replace(os.path.join(dest, "src", "bindgen_config.rs"), '.blocklist_function("realloc"),',
            '.blocklist_function("realloc")\n'
            '            // kenning: defined in lib.rs as bit-holding newtypes (x86 has no __fp16).\n'
            '            .blocklist_type("float16_t"),')
    with open(os.path.join(dest, "src", "lib.rs"), "a") as f:
        f.write("\n/// kenning (scripts/prepare_mlx.py): IEEE half, as bits.\n"
                "#[repr(transparent)]\n#[derive(Debug, Default, Copy, Clone, PartialEq, Eq)]\n"
                "pub struct float16_t(pub u16);\n")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    mlx = os.path.abspath(sys.argv[1])
    source = registry_copy()
    with open(os.path.abspath(__file__), "rb") as f:
        script = hashlib.sha256(f.read()).hexdigest()[:16]
    openblas = next((p for p in OPENBLAS if os.path.isfile(p)), None)
    stamp = (f"mlx-sys {VERSION} from {source}; mlx {mlx if platform.system() == 'Linux' else 'bundled (macOS)'}; "
             f"openblas {openblas}; prepare_mlx.py {script}\n")
    # Prepared the same way already: left as it is (new files would make cargo rebuild mlx-sys and
    # everything above it).
    try:
        with open(os.path.join(DEST, ".kenning-prepared")) as f:
            if f.read() == stamp:
                print(f"ok    mlx-sys {VERSION:<16} {DEST} (prepared already)", file=sys.stderr)
                return 0
    except OSError:
        pass
    partial = DEST + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    for root, dirs, files in os.walk(partial):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
    if platform.system() == "Linux":
        patch_linux(partial, mlx)
        patch_bindings(partial)
    with open(os.path.join(partial, ".kenning-prepared"), "w") as f:
        f.write(stamp)
    shutil.rmtree(DEST, ignore_errors=True)
    os.rename(partial, DEST)
    print(f"ok    mlx-sys {VERSION:<16} {DEST}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
