//! How large one write to a control file may be: one `write(2)` must reach the mount as one
//! FUSE request, so that it is one command.

use fuser::{InitFlags, KernelConfig};

/// The largest write request the mount asks the kernel for (`max_write`, set in `init`).
pub const MAX_WRITE: u32 = 1 << 20;

/// The command-size limit when the negotiated one is not known: 1 MiB - 4 KiB.
pub const DEFAULT_COMMAND_LIMIT: usize = MAX_WRITE as usize - 4096;

/// How many pages a FUSE request may span when the kernel does not negotiate it
/// (no `FUSE_MAX_PAGES`): the kernel's `FUSE_DEFAULT_MAX_PAGES_PER_REQ`.
const DEFAULT_MAX_PAGES: u32 = 32;

/// The kernel's cap on pages per request when `/proc/sys/fs/fuse/max_pages_limit` cannot be
/// read (its default, and the fixed cap of kernels before the sysctl).
const DEFAULT_MAX_PAGES_LIMIT: u32 = 256;

/// The smallest write request to a control file that is refused (EFBIG): a request this large
/// may be a piece of a larger write(2) the kernel split (each piece is at most the negotiated
/// `max_write` and `max_pages` pages, the first one up to a page shorter when the buffer is
/// not page-aligned), and one write(2) must be one command.
pub fn command_limit(max_write: u32, max_pages: u32, page: usize) -> usize {
    let piece = (max_write as usize).min(max_pages as usize * page);
    piece.saturating_sub(page).max(1)
}

/// The system's page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|&p| p > 0)
        .unwrap_or(4096)
}

/// How many pages the kernel lets one request span on this session.
pub(crate) fn negotiated_max_pages(config: &KernelConfig) -> u32 {
    if !config.capabilities().contains(InitFlags::FUSE_MAX_PAGES) {
        return DEFAULT_MAX_PAGES;
    }
    std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&p| p > 0)
        .unwrap_or(DEFAULT_MAX_PAGES_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_limit_is_a_page_under_the_largest_request() {
        assert_eq!(command_limit(MAX_WRITE, 256, 4096), DEFAULT_COMMAND_LIMIT);
        assert_eq!(command_limit(MAX_WRITE, 256, 4096), 1_044_480);
        // Without FUSE_MAX_PAGES requests span 32 pages: 128 KiB.
        assert_eq!(command_limit(MAX_WRITE, 32, 4096), 131_072 - 4096);
        assert_eq!(command_limit(64 * 1024, 256, 4096), 61_440);
    }
}
