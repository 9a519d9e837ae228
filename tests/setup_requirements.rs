//! `scripts/requirements`, the check `scripts/setup` installs system packages by, run against fake
//! roots: each requirement is decided by the file the build loads, never by a look-alike.

use std::fs;
use std::path::Path;
use std::process::Command;

fn touch(root: &Path, rel: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, b"").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// The Debian packages the script asks for on `root`, and its whole report.
fn needed(root: &Path) -> (Vec<String>, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/requirements");
    let out = Command::new("bash").arg(&script).arg("--root").arg(root).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    let line = report.lines().find_map(|l| l.strip_prefix("packages:")).unwrap_or_else(|| panic!("no packages line:\n{report}"));
    (line.split_whitespace().map(str::to_owned).collect(), report)
}

/// Everything but libclang and OpenBLAS.
fn base(root: &Path) {
    touch(root, "usr/bin/protoc");
    touch(root, "usr/include/google/protobuf/descriptor.proto");
    touch(root, "usr/bin/c++");
    touch(root, "usr/bin/cmake");
    touch(root, "usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0");
}

#[test]
fn an_empty_root_needs_every_package() {
    let root = tempfile::tempdir().unwrap();
    let (packages, report) = needed(root.path());
    assert_eq!(packages, ["protobuf-compiler", "libprotobuf-dev", "build-essential", "cmake", "libclang-dev", "libopenblas0-pthread"], "{report}");
}

#[test]
fn libclang_cpp_is_not_libclang() {
    let root = tempfile::tempdir().unwrap();
    base(root.path());
    touch(root.path(), "usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
    touch(root.path(), "usr/lib/llvm-14/lib/libclang-cpp.so.14");
    let (packages, report) = needed(root.path());
    assert_eq!(packages, ["libclang-dev"], "{report}");
}

#[test]
fn libclang_is_found_where_bindgen_loads_it() {
    for lib in ["usr/lib/llvm-14/lib/libclang.so", "usr/lib/x86_64-linux-gnu/libclang-14.so", "usr/lib64/libclang.so"] {
        let root = tempfile::tempdir().unwrap();
        base(root.path());
        touch(root.path(), lib);
        let (packages, report) = needed(root.path());
        assert!(packages.is_empty(), "{lib}: {report}");
        assert!(report.contains(lib), "the report names the file found ({lib}):\n{report}");
    }
}

#[test]
fn openblas_in_its_pthread_directory_counts_and_a_dangling_link_does_not() {
    let root = tempfile::tempdir().unwrap();
    base(root.path());
    touch(root.path(), "usr/lib/llvm-14/lib/libclang.so");
    let (packages, report) = needed(root.path());
    assert!(packages.is_empty(), "{report}");

    let root = tempfile::tempdir().unwrap();
    base(root.path());
    touch(root.path(), "usr/lib/llvm-14/lib/libclang.so");
    fs::remove_file(root.path().join("usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0")).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink("/nonexistent/libopenblas.so.0", root.path().join("usr/lib/x86_64-linux-gnu/libopenblas.so.0")).unwrap();
    let (packages, report) = needed(root.path());
    assert_eq!(packages, ["libopenblas0-pthread"], "{report}");
}

#[test]
fn protobuf_includes_are_checked_beside_protoc() {
    let root = tempfile::tempdir().unwrap();
    base(root.path());
    touch(root.path(), "usr/lib/llvm-14/lib/libclang.so");
    fs::remove_file(root.path().join("usr/include/google/protobuf/descriptor.proto")).unwrap();
    let (packages, report) = needed(root.path());
    assert_eq!(packages, ["libprotobuf-dev"], "{report}");
}
