//! Giving freed memory back to the system. glibc's allocator keeps the
//! pages of what a start-up frees (a large configuration's parsed
//! document, the state file's trial open) in its arenas, where they would
//! count as resident for the daemon's whole life.

/// Returns the free memory of every allocator arena to the system (a no-op
/// with another C library).
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory of the allocator's
    // arenas to the system; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}
