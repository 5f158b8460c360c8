//! Process-wide allocator tuning for inference on the CPU.
//!
//! candle allocates a fresh buffer for every op's output. glibc's malloc serves blocks over its
//! mmap threshold (128 KiB, adapting up to 32 MiB) with their own `mmap` and unmaps them on
//! free, so every large tensor costs the kernel a page fault and a zeroed page per 4 KiB the
//! first time it is written — for a text encoder or a VAE, a large share of the run (`perf`:
//! `clear_page_erms`, `exc_page_fault`). [`keep_freed_memory`] makes malloc serve large blocks
//! from its heap and keep what is freed for reuse instead.
//!
//! The cost: memory freed after a peak stays with the process (peak RSS itself is unchanged in
//! the benchmarks). `VIDGEN_MALLOC=system` leaves glibc's defaults, for comparisons.

/// Raises glibc's mmap and trim thresholds to their maximum (2 GiB), once per process; does
/// nothing with another C library or under `VIDGEN_MALLOC=system`. Returns whether it applied.
pub fn keep_freed_memory() -> bool {
    if std::env::var("VIDGEN_MALLOC").is_ok_and(|v| v == "system") {
        return false;
    }
    tune()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune() -> bool {
    use std::ffi::c_int;
    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    // glibc's malloc.h
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_THRESHOLD: c_int = -3;
    static APPLIED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: mallopt only sets malloc parameters; both values are in its accepted range
    *APPLIED.get_or_init(|| unsafe {
        mallopt(M_MMAP_THRESHOLD, c_int::MAX) == 1 && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune() -> bool {
    false
}

/// Returns the free memory malloc holds to the system (`malloc_trim`), e.g. after building a
/// model from temporary copies. Does nothing with another C library.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim only returns free heap pages to the kernel
        unsafe { malloc_trim(0) };
    }
}

/// Peak resident memory of this process so far, in bytes (Linux's `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Restarts [`peak_rss_bytes`] from the current resident memory (Linux's `clear_refs` 5), so a
/// benchmark can report one part's peak. Returns whether the kernel accepted it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_thresholds_and_the_peak_restarts() {
        if std::env::var("VIDGEN_MALLOC").is_err() {
            assert!(super::keep_freed_memory());
        }
        // a peak of 64 MiB more, gone after a reset once the memory is returned
        let big = vec![1u8; 64 << 20];
        assert_eq!(
            big.iter().step_by(4096).map(|&b| b as usize).sum::<usize>(),
            16384
        );
        let high = super::peak_rss_bytes().unwrap();
        drop(big);
        super::release_free_memory();
        assert!(super::reset_peak_rss());
        let low = super::peak_rss_bytes().unwrap();
        assert!(low + (32 << 20) < high, "peak {high} -> {low}");
    }
}
