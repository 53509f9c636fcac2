//! `mmap`'d stacks with a guard region, and the guard-page mechanism
//! (`MADV_GUARD_INSTALL` markers or `mprotect`), detected at run time.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

use super::{checked_stack_size, page_size, round_up_to_page, Stack, StackBounds};
use crate::Error;

/// `madvise` advice that installs guard markers in the page tables
/// (Linux 6.13+). Not yet in every `libc` release, so named here.
const MADV_GUARD_INSTALL: libc::c_int = 102;

/// How guard regions are made.
// A word, like the other fields of the stacks that hold it: a one-byte field
// leaves seven bytes of padding that moves of a stack (or an Option of one)
// copy in odd-sized pieces, which stalls store-to-load forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum GuardKind {
    /// `madvise(MADV_GUARD_INSTALL)`: guard markers in the page tables. The
    /// mapping is not split, so a stack costs no extra VMA and the number of
    /// stacks is not capped by `vm.max_map_count`.
    Markers,
    /// `mprotect(PROT_NONE)`: each guard region splits the mapping, so every
    /// stack costs two VMAs and `vm.max_map_count` (65,530 by default) caps a
    /// process near 32k stacks.
    Mprotect,
}

const KIND_UNKNOWN: u8 = 0;
const KIND_MARKERS: u8 = 1;
const KIND_MPROTECT: u8 = 2;

/// What the process uses; settled by a probe the first time a guard is
/// needed (or by
/// `STACKSWITCH_GUARD=mprotect` in the environment, which forces the
/// fallback, e.g. to test it on a kernel that has markers).
static KIND: AtomicU8 = AtomicU8::new(KIND_UNKNOWN);

fn decode(kind: u8) -> Option<GuardKind> {
    match kind {
        KIND_MARKERS => Some(GuardKind::Markers),
        KIND_MPROTECT => Some(GuardKind::Mprotect),
        _ => None,
    }
}

/// The guard mechanism this process uses: markers where the kernel has
/// them, else `mprotect`. Detected once (by installing a marker on a
/// scratch page if no stack has been made yet), then cached.
///
/// ```
/// let kind = stackswitch::guard_kind();
/// println!("guard pages via {kind:?}");
/// ```
pub fn guard_kind() -> GuardKind {
    decode(settled_kind()).unwrap_or(GuardKind::Mprotect)
}

/// The mechanism, settled once per process: the environment's choice, or a
/// probe of whether guard markers really work here.
fn settled_kind() -> u8 {
    let kind = KIND.load(Ordering::Relaxed);
    if kind != KIND_UNKNOWN {
        return kind;
    }
    let kind = if std::env::var_os("STACKSWITCH_GUARD").is_some_and(|v| v == "mprotect") {
        KIND_MPROTECT
    } else if markers_work() {
        KIND_MARKERS
    } else {
        KIND_MPROTECT
    };
    KIND.store(kind, Ordering::Relaxed);
    kind
}

/// Whether `MADV_GUARD_INSTALL` makes a page fault here. Accepting the
/// advice is not enough: an emulator (qemu-user) or a filter may return
/// success without installing anything. So the probe installs a marker on a
/// scratch page and has the kernel read that page (a `write` of it into a
/// pipe): a working guard makes the kernel's read fail with EFAULT, where
/// user code would get SIGSEGV.
fn markers_work() -> bool {
    let page = page_size();
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return false;
    }
    let mut fds = [-1; 2];
    // SAFETY: addr..addr+page is the mapping made above; `fds` is a valid
    // array of two descriptors for pipe to fill; every descriptor and the
    // mapping are released before returning.
    let works = unsafe {
        libc::madvise(addr, page, MADV_GUARD_INSTALL) == 0
            && libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) == 0
            && {
                let n = libc::write(fds[1], addr, 1);
                let err = io::Error::last_os_error().raw_os_error();
                n < 0 && err == Some(libc::EFAULT)
            }
    };
    // SAFETY: the descriptors (if made) and the mapping made above.
    unsafe {
        for fd in fds {
            if fd >= 0 {
                libc::close(fd);
            }
        }
        libc::munmap(addr, page);
    }
    works
}

/// Reserves `len` bytes of read-write stack memory that the kernel commits
/// only as it is touched (`MAP_NORESERVE`), for a stack or a pool region.
///
/// # Errors
/// [`Error::MapCountLimit`] when the process is at `vm.max_map_count`,
/// [`Error::Mmap`] with the size otherwise.
pub(crate) fn reserve(len: usize) -> Result<NonNull<u8>, Error> {
    // SAFETY: a fresh private anonymous mapping at an address the kernel
    // picks; no existing memory is affected.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        let source = io::Error::last_os_error();
        return Err(map_count_error("mmap", source)
            .unwrap_or_else(|source| Error::Mmap { bytes: len, source }));
    }
    Ok(NonNull::new(addr.cast::<u8>()).expect("mmap returned null on success"))
}

/// Makes `addr..addr + len` a guard region, with markers if the kernel has
/// them (and the environment does not force `mprotect`), else `mprotect`.
///
/// # Safety
/// `addr..addr + len` must be page aligned and part of a private anonymous
/// mapping owned by the caller, holding nothing anyone will read.
pub(crate) unsafe fn install_guard(addr: *mut u8, len: usize) -> Result<GuardKind, Error> {
    if settled_kind() == KIND_MARKERS {
        // SAFETY: the caller owns the range; a marker only makes it fault.
        if unsafe { libc::madvise(addr.cast(), len, MADV_GUARD_INSTALL) } == 0 {
            return Ok(GuardKind::Markers);
        }
        // The probe showed markers work: this is a real failure (ENOMEM
        // under memory pressure...), reported as is.
        return Err(Error::GuardPage {
            call: "madvise(MADV_GUARD_INSTALL)",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: the caller owns the range.
    if unsafe { libc::mprotect(addr.cast(), len, libc::PROT_NONE) } != 0 {
        let source = io::Error::last_os_error();
        return Err(
            map_count_error("mprotect(PROT_NONE)", source).unwrap_or_else(|source| {
                Error::GuardPage {
                    call: "mprotect(PROT_NONE)",
                    source,
                }
            }),
        );
    }
    Ok(GuardKind::Mprotect)
}

/// How close to `vm.max_map_count` an `mmap` failing with `ENOMEM` must be
/// for the limit to be named as the cause.
const NEAR_LIMIT: usize = 1024;

/// Turns an `ENOMEM` from `call` into [`Error::MapCountLimit`] when the
/// process is at `vm.max_map_count`; otherwise hands `source` back. Reads
/// `/proc` only here, on the error path.
pub(crate) fn map_count_error(call: &'static str, source: io::Error) -> Result<Error, io::Error> {
    if source.raw_os_error() != Some(libc::ENOMEM) {
        return Err(source);
    }
    // Read without allocating much: at the limit, malloc's own mmap of a
    // large buffer would fail too.
    let mut limit = None;
    let _ = read_chunks("/proc/sys/vm/max_map_count", |chunk| {
        let text = std::str::from_utf8(chunk).unwrap_or("");
        limit = text.trim().parse::<usize>().ok();
    });
    let mut newlines = 0;
    let maps = read_chunks("/proc/self/maps", |chunk| {
        newlines += chunk.iter().filter(|&&b| b == b'\n').count();
    })
    .ok()
    .map(|()| newlines);
    // mprotect of part of our own mapping has no other ENOMEM than the map
    // count (bar the kernel failing a tiny allocation), so trust it even
    // when /proc/self/maps shows fewer (qemu-user shows the guest's only).
    let mprotect = call.starts_with("mprotect");
    match (maps, limit) {
        // An mmap near the limit: blame the limit. "Near" is generous
        // because the count read may miss some: qemu-user hides its own
        // mappings from the guest (about 130 here). The error names both
        // numbers, so a reader can tell.
        (Some(maps), Some(limit)) if mprotect || maps + NEAR_LIMIT >= limit => {
            Ok(Error::MapCountLimit {
                call,
                maps,
                limit,
                source,
            })
        }
        _ => Err(source),
    }
}

/// Feeds the contents of `path` to `f`, chunk by chunk, through a buffer
/// on the stack.
fn read_chunks(path: &str, mut f: impl FnMut(&[u8])) -> io::Result<()> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = [0u8; 4096];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => f(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A stack of its own `mmap`: reserved with `MAP_NORESERVE` (the kernel
/// commits pages as the fiber touches them), a guard region at the low end,
/// unmapped on drop.
///
/// ```
/// use stackswitch::{MmapStack, Stack};
/// let stack = MmapStack::new(100_000)?; // rounded up to whole pages
/// assert_eq!(stack.bounds().size() % 4096, 0);
/// assert!(stack.bounds().size() >= 100_000);
/// assert!(MmapStack::new(0).is_err());
/// # Ok::<(), stackswitch::Error>(())
/// ```
#[derive(Debug)]
pub struct MmapStack {
    /// Start of the mapping (the guard region).
    base: NonNull<u8>,
    /// Bytes mapped: guard + stack.
    len: usize,
    /// Bytes of guard region at `base`.
    guard: usize,
    kind: GuardKind,
}

// SAFETY: MmapStack is a handle to a mapping it alone owns; nothing in it is
// tied to a thread.
unsafe impl Send for MmapStack {}
// SAFETY: shared references only read the immutable fields.
unsafe impl Sync for MmapStack {}

impl MmapStack {
    /// Reserves a stack of at least `size` usable bytes (rounded up to whole
    /// pages) with a one-page guard region below it.
    ///
    /// # Errors
    /// [`Error::StackTooSmall`] below [`MIN_STACK_SIZE`](crate::MIN_STACK_SIZE),
    /// [`Error::StackTooLarge`] above [`MAX_STACK_SIZE`](crate::MAX_STACK_SIZE)
    /// or when rounding overflows, [`Error::Mmap`] or [`Error::GuardPage`]
    /// when the kernel refuses.
    pub fn new(size: usize) -> Result<Self, Error> {
        Self::with_guard(size, page_size())
    }

    /// Like [`new`](Self::new), with a guard region of at least `guard`
    /// bytes (rounded up to whole pages, at least one page).
    ///
    /// # Errors
    /// As [`new`](Self::new), and [`Error::BadGuardSize`] for a guard of 0 or
    /// above [`MAX_STACK_SIZE`](crate::MAX_STACK_SIZE).
    pub fn with_guard(size: usize, guard: usize) -> Result<Self, Error> {
        let size = checked_stack_size(size)?;
        let page = page_size();
        let guard = match round_up_to_page(guard, page) {
            Some(g) if guard > 0 && g <= crate::MAX_STACK_SIZE => g,
            _ => {
                return Err(Error::BadGuardSize {
                    requested: guard,
                    maximum: crate::MAX_STACK_SIZE,
                })
            }
        };
        // Both are at most MAX_STACK_SIZE, so the sum cannot overflow.
        let len = size + guard;
        let base = reserve(len)?;
        let addr = base.as_ptr().cast::<libc::c_void>();
        // SAFETY: base..base+guard is the page-aligned start of the mapping
        // made above, holding nothing yet.
        match unsafe { install_guard(base.as_ptr(), guard) } {
            Ok(kind) => Ok(MmapStack {
                base,
                len,
                guard,
                kind,
            }),
            Err(e) => {
                // SAFETY: the mapping made above; nothing refers to it.
                unsafe { libc::munmap(addr, len) };
                Err(e)
            }
        }
    }

    /// How this stack's guard region was made.
    pub fn guard_kind(&self) -> GuardKind {
        self.kind
    }
}

// SAFETY: the mapping is ours until drop; low..high is read-write, the guard
// below it faults; high is page aligned (so 16-byte aligned); the size was
// checked against MIN_STACK_SIZE; the bounds never change.
unsafe impl Stack for MmapStack {
    #[inline]
    fn bounds(&self) -> StackBounds {
        let guard = self.base.as_ptr() as usize;
        StackBounds {
            guard,
            low: guard + self.guard,
            high: guard + self.len,
        }
    }
}

impl Drop for MmapStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `with_guard`, unmapped exactly once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
