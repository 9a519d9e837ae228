//! What mlx-rs expects from macOS and Linux lacks.

/// mlx-rs seeds its random key from macOS's `mach_approximate_time`; on Linux the monotonic
/// clock in nanoseconds stands in for it.
#[unsafe(no_mangle)]
#[allow(unsafe_code)]
pub extern "C" fn mach_approximate_time() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    // Never 0, and monotonic.
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
}
