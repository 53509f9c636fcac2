//! Guard-page fault reports: a `SIGSEGV`/`SIGBUS` handler that recognises a
//! fault in the guard region of one of our stacks, says which stack and
//! which guarded function, and aborts; everything else goes to the handler
//! installed before it.
//!
//! # What counts as ours
//! - a fault in the guard region of a pool slot, always (the pool's stacks
//!   are ours whoever runs on them);
//! - a fault in the guard region of the faulting thread's own stack (for
//!   the main thread, whose guard the kernel keeps as a gap below the
//!   stack, the page just below it) while a guarded call runs on that
//!   stack: under `Enforce` the budget ends at that guard, so it is where a
//!   function over budget lands. A thread's own overflow outside any guard
//!   is left to the previous handler (Rust's runtime reports it).
//!
//! Nothing else is recognised: the lowered stack pointer is not a second
//! guard, the budget ends at the stack's real one.
//!
//! # Threads and the alternate stack
//! A handler for an overflow cannot run on the overflowed stack, so it is
//! installed with `SA_ONSTACK`, and every thread that runs a guarded call
//! first checks (once) that it has an alternate signal stack of at least
//! [`MIN_ALT_STACK`] bytes. Rust's threads and Wasmtime's have one; on a
//! thread without (one made by C code, or one that disabled it) we map our
//! own, freed when the thread exits. Ours is as large as Wasmtime asks of
//! an existing one, so Wasmtime keeps it instead of replacing it.
//!
//! # With Wasmtime
//! Wasmtime installs its own handler when the first engine is made. If
//! ours came later, ours runs first and passes Wasmtime's faults (wasm
//! traps) on. If ours came first, Wasmtime's runs first and aborts with its
//! own terse message on a fault in an async fiber's guard; to get ours,
//! give [`handle_fault`] to the store's `set_signal_handler` hook, which
//! Wasmtime calls before that (the `HostGuard` wrapper of the `wasmtime`
//! feature does this in `attach`).

use std::cell::{Cell, RefCell, UnsafeCell};
use std::io;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::{ActiveGuard, MAX_OUTER, THREAD};
use crate::stack::lookup::{locate_in_signal, thread_stack_cached, StackLocation};
use crate::{page_size, Error, StackBounds};

/// The smallest alternate signal stack a guarded thread keeps as it is.
pub const MIN_ALT_STACK: usize = 8 << 10;

/// The size of an alternate stack we map: Wasmtime's minimum, so that it
/// does not replace ours with its own.
const OWN_ALT_STACK: usize = 256 << 10;

/// The signal dispositions we replaced, written once before our handler is
/// installed and only read after.
struct Previous(UnsafeCell<MaybeUninit<[libc::sigaction; 2]>>);

// SAFETY: written once, inside `INSTALLED`'s initialisation and before our
// handler can run; afterwards only read.
unsafe impl Sync for Previous {}

static PREVIOUS: Previous = Previous(UnsafeCell::new(MaybeUninit::uninit()));

/// The outcome of installing the handler: Ok, or the failing call and errno.
static INSTALLED: OnceLock<Result<(), (&'static str, i32)>> = OnceLock::new();

const SIGNALS: [libc::c_int; 2] = [libc::SIGSEGV, libc::SIGBUS];

thread_local! {
    /// Whether this thread has been checked for an alternate stack (and the
    /// process-wide handler installed).
    static READY: Cell<bool> = const { Cell::new(false) };
    /// The alternate stack we mapped for this thread, if we had to.
    static OWN_ALT: RefCell<Option<AltStack>> = const { RefCell::new(None) };
}

/// Installs the fault handler for `SIGSEGV` and `SIGBUS`, once per process.
///
/// Guarded calls under `Enforce` and `Measure` call this themselves; call
/// it early to choose the order relative to other handlers (see the module
/// docs on Wasmtime). The handler it replaces keeps every fault that is not
/// ours.
///
/// # Errors
/// [`Error::Signal`] naming the failed `sigaction` call and its error.
pub fn install_fault_handler() -> Result<(), Error> {
    let outcome = INSTALLED.get_or_init(|| {
        // SAFETY: all-zero is a valid `sigaction` (empty mask, no flags).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_fault
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        // SAFETY: `action.sa_mask` is a valid sigset_t to initialise.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: we are inside the one-time initialisation; nothing reads
        // PREVIOUS before our handler is installed below.
        let previous = unsafe { &mut *(*PREVIOUS.0.get()).as_mut_ptr() };
        for (i, &sig) in SIGNALS.iter().enumerate() {
            // SAFETY: reading the current disposition into valid memory.
            if unsafe { libc::sigaction(sig, std::ptr::null(), &mut previous[i]) } != 0 {
                return Err(("sigaction (read)", errno()));
            }
        }
        for &sig in &SIGNALS {
            // SAFETY: `action` is a complete disposition whose handler is
            // async-signal-safe (see `on_fault`).
            if unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) } != 0 {
                return Err(("sigaction (install)", errno()));
            }
        }
        Ok(())
    });
    outcome.map_err(|(call, code)| Error::Signal {
        call,
        source: io::Error::from_raw_os_error(code),
    })
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Makes sure the handler is installed and this thread has an alternate
/// stack; a thread-local check after the first call.
#[inline]
pub(crate) fn ensure_ready() -> Result<(), Error> {
    if READY.with(Cell::get) {
        return Ok(());
    }
    prepare_thread()
}

#[cold]
fn prepare_thread() -> Result<(), Error> {
    install_fault_handler()?;
    // The thread's own stack is not read here (for the main thread glibc
    // parses /proc/self/maps, 100 µs and more in a process with many
    // mappings): the handler only needs it while a guarded call runs on
    // that stack, and finding that stack for the call has cached it.
    // SAFETY: all-zero is a valid stack_t to receive the current setting.
    let mut current: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: queries the alternate stack into valid memory.
    if unsafe { libc::sigaltstack(std::ptr::null(), &mut current) } != 0 {
        return Err(Error::Signal {
            call: "sigaltstack (read)",
            source: io::Error::last_os_error(),
        });
    }
    if current.ss_flags & libc::SS_DISABLE == 0 && current.ss_size >= MIN_ALT_STACK {
        READY.with(|r| r.set(true));
        return Ok(());
    }
    let alt = AltStack::new()?;
    OWN_ALT.with(|own| *own.borrow_mut() = Some(alt));
    READY.with(|r| r.set(true));
    Ok(())
}

/// An alternate signal stack we mapped for a thread (with a guard page
/// below it), unregistered and unmapped when the thread exits.
struct AltStack {
    base: *mut libc::c_void,
    len: usize,
    stack: *mut libc::c_void,
}

impl AltStack {
    fn new() -> Result<AltStack, Error> {
        let page = page_size();
        let len = OWN_ALT_STACK + page;
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::Mmap {
                bytes: len,
                source: io::Error::last_os_error(),
            });
        }
        let stack = (base as usize + page) as *mut libc::c_void;
        // SAFETY: `stack..stack + OWN_ALT_STACK` lies inside the mapping we
        // just made; the page below it stays inaccessible as its guard.
        let failed =
            unsafe { libc::mprotect(stack, OWN_ALT_STACK, libc::PROT_READ | libc::PROT_WRITE) }
                != 0;
        let alt = AltStack { base, len, stack };
        if failed {
            return Err(Error::GuardPage {
                call: "mprotect",
                source: io::Error::last_os_error(),
            });
        }
        let setting = libc::stack_t {
            ss_sp: stack,
            ss_flags: 0,
            ss_size: OWN_ALT_STACK,
        };
        // SAFETY: `setting` describes writable memory that lives until this
        // AltStack is dropped, which first unregisters it.
        if unsafe { libc::sigaltstack(&setting, std::ptr::null_mut()) } != 0 {
            return Err(Error::Signal {
                call: "sigaltstack (install)",
                source: io::Error::last_os_error(),
            });
        }
        Ok(alt)
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        // SAFETY: all-zero is a valid stack_t to receive the current setting.
        let mut current: libc::stack_t = unsafe { std::mem::zeroed() };
        // SAFETY: queries the alternate stack into valid memory.
        let read = unsafe { libc::sigaltstack(std::ptr::null(), &mut current) } == 0;
        if read && current.ss_sp == self.stack && current.ss_flags & libc::SS_DISABLE == 0 {
            let off = libc::stack_t {
                ss_sp: std::ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            // SAFETY: disables the alternate stack; we are not running on it.
            unsafe { libc::sigaltstack(&off, std::ptr::null_mut()) };
        }
        // SAFETY: the mapping is ours and no longer registered (someone who
        // replaced it with their own no longer refers to it either).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// The handler itself: report and abort if the fault is ours, otherwise
/// pass it to the previous handler.
extern "C" fn on_fault(
    signum: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel hands us a valid siginfo and context.
    if unsafe { handle_fault(signum, info, context) } {
        return;
    }
    // SAFETY: as above; PREVIOUS was written before we were installed.
    unsafe { chain(signum, info, context) }
}

/// Passes a fault on to the disposition we replaced.
///
/// # Safety
/// Only from `on_fault`, with the kernel's arguments.
unsafe fn chain(signum: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let index = if signum == libc::SIGBUS { 1 } else { 0 };
    // SAFETY: PREVIOUS was fully written before our handler was installed.
    let previous = unsafe { &(*(*PREVIOUS.0.get()).as_ptr())[index] };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Put the default back and return: the faulting instruction runs
        // again and the kernel's default action (a core dump) takes it.
        // SAFETY: all-zero is a valid sigaction, SIG_DFL being 0.
        let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
        default.sa_sigaction = libc::SIG_DFL;
        // SAFETY: sigaction is async-signal-safe; `default` is complete.
        unsafe { libc::sigaction(signum, &default, std::ptr::null_mut()) };
    } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: a handler installed with SA_SIGINFO has this signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(signum, info, context);
    } else {
        // SAFETY: a handler installed without SA_SIGINFO takes the signal
        // number only.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(signum);
    }
}

/// Recognises a fault in the guard region of one of our stacks; if it is
/// one, writes a report to stderr and aborts the process (never returns).
/// Returns `false` for every other fault, which the caller should handle as
/// if this function had not been called.
///
/// Async-signal-safe: no allocation, no lock, only `write(2)` and
/// `abort(3)`. Its signature is the one Wasmtime's store hook wants:
///
/// ```no_run
/// # #[cfg(feature = "wasmtime")]
/// # fn attach(store: &mut wasmtime::Store<()>) {
/// use wasmtime::unix::StoreExt;
/// let hook = |sig, info, cx| {
///     // SAFETY: Wasmtime passes the kernel's siginfo and context.
///     unsafe { stackswitch::guard::handle_fault(sig, info, cx) }
/// };
/// // SAFETY: handle_fault is async-signal-safe and accepts any signal.
/// unsafe { store.set_signal_handler(hook) };
/// # }
/// ```
///
/// # Safety
/// Call it only from a signal handler, with the `siginfo_t` the kernel
/// delivered (valid, for `signum`), on the thread that faulted.
pub unsafe fn handle_fault(
    signum: libc::c_int,
    info: *const libc::siginfo_t,
    _context: *const libc::c_void,
) -> bool {
    if (signum != libc::SIGSEGV && signum != libc::SIGBUS) || info.is_null() {
        return false;
    }
    // SAFETY: the caller passes the kernel's siginfo for SIGSEGV/SIGBUS,
    // whose si_addr is the faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (location, bounds) = match locate_in_signal(addr) {
        Some(location) if location.bounds().in_guard(addr) => (location, location.bounds()),
        Some(_) => return false,
        None => match thread_stack_cached() {
            // The main thread: no guard of its own, the kernel's gap below.
            Some(b) if b.guard == b.low && addr < b.low && addr >= b.low - page_size() => {
                (StackLocation::Thread { bounds: b }, b)
            }
            _ => return false,
        },
    };
    let active = active_guard_on(bounds);
    if matches!(location, StackLocation::Thread { .. }) && active.is_none() {
        return false;
    }
    report(signum, addr, &location, active);
    // SAFETY: abort is async-signal-safe and ends the process.
    unsafe { libc::abort() }
}

/// The innermost guarded call on this thread running on the stack `bounds`.
fn active_guard_on(bounds: StackBounds) -> Option<ActiveGuard> {
    THREAD
        .try_with(|thread| {
            let depth = thread.depth.get();
            if depth == 0 {
                return None;
            }
            // Innermost first; a guarded call's lowered stack pointer lies
            // inside its stack.
            let outer = (depth.saturating_sub(MAX_OUTER + 1)..depth - 1)
                .rev()
                .filter_map(|level| thread.outer_guard(level));
            std::iter::once(thread.innermost.get())
                .chain(outer)
                .find(|g| bounds.contains(g.sp))
        })
        .ok()
        .flatten()
}

/// Writes the fault report to stderr without allocating.
fn report(signum: libc::c_int, addr: usize, location: &StackLocation, active: Option<ActiveGuard>) {
    let mut m = Message::new();
    m.str("\nstackswitch: ");
    match active {
        Some(g) => {
            m.str("guarded host function `")
                .str(g.name)
                .str("` overflowed its stack budget of ")
                .dec(g.budget)
                .str(" bytes\n");
        }
        None => {
            m.str("stack overflow with no guarded host function active on this stack\n");
        }
    }
    m.str("  ")
        .str(if signum == libc::SIGBUS {
            "SIGBUS"
        } else {
            "SIGSEGV"
        })
        .str(" at ")
        .hex(addr)
        .str(" in the guard region of ");
    let b = location.bounds();
    match *location {
        StackLocation::PoolSlot {
            region_id, slot, ..
        } => {
            m.str("pool region ").dec(region_id).str(" slot ").dec(slot);
        }
        StackLocation::Thread { .. } => {
            m.str("this thread's stack");
        }
    }
    m.str("\n  stack ")
        .hex(b.low)
        .str("..")
        .hex(b.high)
        .str(" (")
        .dec(b.size())
        .str(" bytes), guard ")
        .hex(if b.guard == b.low {
            b.low - page_size()
        } else {
            b.guard
        })
        .str("..")
        .hex(b.low)
        .str("\n");
    if let Some(g) = active {
        m.str("  the budget starts at stack pointer ")
            .hex(g.sp)
            .str("; give `")
            .str(g.name)
            .str("` a larger budget or make it use less stack\n");
    }
    m.write_stderr();
}

/// A message built in a fixed buffer (truncated if too long).
struct Message {
    buf: [u8; 1024],
    len: usize,
}

impl Message {
    fn new() -> Message {
        Message {
            buf: [0; 1024],
            len: 0,
        }
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Message {
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        self
    }

    fn str(&mut self, s: &str) -> &mut Message {
        self.bytes(s.as_bytes())
    }

    fn dec(&mut self, mut v: usize) -> &mut Message {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.bytes(&digits[i..])
    }

    fn hex(&mut self, v: usize) -> &mut Message {
        let mut digits = [0u8; 18];
        digits[0] = b'0';
        digits[1] = b'x';
        for (i, d) in digits[2..].iter_mut().enumerate() {
            let nibble = (v >> (60 - 4 * i)) & 0xf;
            *d = b"0123456789abcdef"[nibble];
        }
        self.bytes(&digits)
    }

    fn write_stderr(&self) {
        let mut done = 0;
        while done < self.len {
            let rest = &self.buf[done..self.len];
            // SAFETY: writes initialised bytes of our buffer; write(2) is
            // async-signal-safe.
            let n = unsafe { libc::write(libc::STDERR_FILENO, rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                break;
            }
            done += n as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_numbers() {
        let mut m = Message::new();
        m.dec(0).str(" ").dec(65536).str(" ").hex(0x7f00_dead_beef);
        assert_eq!(&m.buf[..m.len], b"0 65536 0x00007f00deadbeef");
        let mut long = Message::new();
        for _ in 0..200 {
            long.str("0123456789");
        }
        assert_eq!(long.len, 1024);
    }
}
