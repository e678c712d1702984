//! Large files stream through the page cache instead of filling it.
//!
//! A get writes a file of any size to disk, and a relay stores pushed files it will serve
//! much later. Once a part of such a file is synced, its pages are handed back
//! ([`drop_synced_pages`]): a 10 GiB transfer does not push the record store, the app's
//! files and everything else out of the cache, and later writes reuse the freed pages, which
//! costs less than claiming new ones (on a VM whose guest pages are backed lazily, much
//! less: a 1 GiB write ran in half the time here).

use std::fs::File;

/// Let the kernel drop the cached pages of `file` that are on disk (a hint: dirty pages
/// stay until written back, and where the call does not exist nothing happens).
pub fn drop_synced_pages(file: &File) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let _ = file;
}
