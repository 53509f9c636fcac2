//! Valgrind client requests: telling Valgrind where fiber stacks are.
//!
//! Valgrind's memcheck watches the stack pointer. When it jumps from one
//! fiber's stack to another's, memcheck must know that this is a switch
//! between stacks and not a huge stack frame, or it marks the memory in
//! between as undefined and reports errors that are not there (and may warn
//! "client switching stacks?"). Registering each fiber's stack with
//! `STACK_REGISTER` tells it; `STACK_DEREGISTER` undoes that before the
//! memory is freed or reused.
//!
//! A client request is a "magic" instruction sequence that does nothing on
//! a real CPU (rotations of one register by a total of 128 bits, then an
//! exchange of a register with itself) and that Valgrind's JIT recognises.
//! Its operands are a pointer to six words (request number and five
//! arguments) and a default result, which comes back unchanged when the
//! program is not running under Valgrind. The first answer to "are we under
//! Valgrind?" is cached, so outside Valgrind a fiber's creation and drop
//! each cost one load and a predictable branch here.
//!
//! The sequences and request numbers follow Valgrind's documented client
//! request ABI (`valgrind.h`, `VALGRIND_DO_CLIENT_REQUEST_EXPR`):
//! - x86_64: `rol rdi` by 3, 13, 61, 51, then `xchg rbx, rbx`; `rax` points
//!   at the words, `rdx` holds the default in and the result out.
//! - aarch64: `ror x12` by 3, 13, 51, 61, then `orr x10, x10, x10`; `x4`
//!   points at the words, `x3` holds the default in and the result out.
//!
//! When a fiber ends, its stack is handed back to its owner as defined
//! memory (memcheck's `MAKE_MEM_DEFINED`): while the fiber ran, memcheck
//! marked the stack below each return as dead, but the owner — a pool
//! checking its canaries or zeroing the stack — may read and write it.
//!
//! # Running the tests under Valgrind
//! ```text
//! CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="valgrind --error-exitcode=1 --quiet \
//!     --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite" \
//!     cargo test --tests -- --test-threads=1
//! ```
//! Tests that spawn child processes run the children natively (Valgrind
//! does not follow them without `--trace-children=yes`); tests whose
//! figures mean nothing under Valgrind (resident memory) say so in their
//! output. Without the stack registration above, memcheck reports hundreds
//! of false errors ("Use of uninitialised value") on the first switches.

use core::arch::asm;
use std::sync::atomic::{AtomicU8, Ordering};

/// `VG_USERREQ__RUNNING_ON_VALGRIND`: returns how many Valgrinds the
/// program runs under (0 on a real CPU, where the default comes back).
const RUNNING_ON_VALGRIND: usize = 0x1001;
/// `VG_USERREQ__STACK_REGISTER(start, end)`: returns a stack id.
const STACK_REGISTER: usize = 0x1501;
/// `VG_USERREQ__STACK_DEREGISTER(id)`.
const STACK_DEREGISTER: usize = 0x1502;
/// memcheck's `VG_USERREQ__MAKE_MEM_DEFINED(addr, len)`: tool requests are
/// numbered from `('M' << 24) | ('C' << 16)`; this is the third (after
/// `MAKE_MEM_NOACCESS` and `MAKE_MEM_UNDEFINED`).
const MAKE_MEM_DEFINED: usize = (((b'M' as usize) << 24) | ((b'C' as usize) << 16)) + 2;

/// Issues one client request; returns `default` when not under Valgrind.
#[inline(always)]
fn client_request(default: usize, request: usize, arg1: usize, arg2: usize) -> usize {
    let words: [usize; 6] = [request, arg1, arg2, 0, 0, 0];
    let result: usize;
    // On a CPU the x86_64 sequence only rotates rdi by 128 bits in total
    // (leaving it as it was; declared clobbered anyway) and swaps rbx with
    // itself; the rotations change flags, so no `preserves_flags`.
    #[cfg(target_arch = "x86_64")]
    // SAFETY: harmless on a CPU (above); under Valgrind it reads the six
    // words at rax, alive until the block ends, and writes rdx.
    unsafe {
        asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            in("rax") words.as_ptr(),
            inout("rdx") default => result,
            inout("rdi") 0usize => _,
            options(nostack),
        );
    }
    // On a CPU the aarch64 sequence only rotates x12 by 128 bits in total
    // (declared clobbered anyway) and ORs x10 with itself; no flags change.
    #[cfg(target_arch = "aarch64")]
    // SAFETY: harmless on a CPU (above); under Valgrind it reads the six
    // words at x4, alive until the block ends, and writes x3.
    unsafe {
        asm!(
            "ror x12, x12, #3",
            "ror x12, x12, #13",
            "ror x12, x12, #51",
            "ror x12, x12, #61",
            "orr x10, x10, x10",
            in("x4") words.as_ptr(),
            inout("x3") default => result,
            inout("x12") 0usize => _,
            options(nostack, preserves_flags),
        );
    }
    result
}

/// Whether this process runs under Valgrind (any tool).
///
/// Tests use it to skip, visibly, what Valgrind cannot do (huge address
/// space reservations, child processes that are meant to crash).
///
/// ```
/// if stackswitch::valgrind::running_on_valgrind() {
///     println!("under Valgrind: fiber stacks are registered with it");
/// }
/// ```
#[inline]
pub fn running_on_valgrind() -> bool {
    match UNDER_VALGRIND.load(Ordering::Relaxed) {
        NATIVE => false,
        VALGRIND | VALGRIND_QUIET => true,
        _ => detect() != NATIVE,
    }
}

/// Whether to issue the stack requests below: under Valgrind, unless
/// `STACKSWITCH_VALGRIND_REQUESTS=0` was set when the first fiber was made.
/// That setting is for counting instructions with callgrind
/// (`scripts/callgrind.sh`), which does not need the stacks registered and
/// would otherwise count the requests, which cost nothing on a CPU. Under
/// memcheck it would bring back the false errors described above.
#[inline]
fn requests_on() -> bool {
    match UNDER_VALGRIND.load(Ordering::Relaxed) {
        NATIVE | VALGRIND_QUIET => false,
        VALGRIND => true,
        _ => detect() == VALGRIND,
    }
}

/// Not yet asked / on a CPU / under Valgrind / under Valgrind, requests off.
const UNKNOWN: u8 = 0;
const NATIVE: u8 = 1;
const VALGRIND: u8 = 2;
const VALGRIND_QUIET: u8 = 3;

/// The answer of the first `RUNNING_ON_VALGRIND` request. Caching it turns
/// the three requests of a fiber's life (about 30 instructions on a CPU,
/// next to a switch's 34) into a load and a predictable branch each.
static UNDER_VALGRIND: AtomicU8 = AtomicU8::new(UNKNOWN);

#[cold]
fn detect() -> u8 {
    let state = if client_request(0, RUNNING_ON_VALGRIND, 0, 0) == 0 {
        NATIVE
    } else if std::env::var_os("STACKSWITCH_VALGRIND_REQUESTS").is_some_and(|v| v == "0") {
        VALGRIND_QUIET
    } else {
        VALGRIND
    };
    UNDER_VALGRIND.store(state, Ordering::Relaxed);
    state
}

/// Tells Valgrind that `low..high` is a stack; returns a token for
/// [`stack_deregister`]: 0 when nothing was registered (not under Valgrind),
/// else Valgrind's stack id plus one, so that the owner's drop path tests
/// one word it already holds.
#[inline]
pub(crate) fn stack_register(low: usize, high: usize) -> usize {
    if !requests_on() {
        return 0;
    }
    // Valgrind takes the lowest and the highest addressable byte.
    client_request(0, STACK_REGISTER, low, high - 1) + 1
}

/// Undoes [`stack_register`] for the stack `low..high` with this token
/// (nothing for 0), and hands the memory back to its owner as plain memory.
///
/// While a fiber ran, memcheck marked every byte its stack pointer moved
/// back above as inaccessible (dead stack). The stack's owner may still use
/// that memory once the fiber is gone — a pool reads its canaries there and
/// zeroes it, a user's stack may be reused for anything — so it is marked
/// accessible and defined again: it holds real bytes, whatever they are.
#[cold]
pub(crate) fn stack_deregister(token: usize, low: usize, high: usize) {
    if token == 0 {
        return;
    }
    client_request(0, STACK_DEREGISTER, token - 1, 0);
    client_request(0, MAKE_MEM_DEFINED, low, high - low);
}

/// Tells memcheck that `addr..addr + len`, stack memory below the stack
/// pointer, may be written and read: the host-function guard paints the
/// budget below its caller's stack pointer and scans it after the call
/// (memcheck otherwise treats memory below the stack pointer as gone).
#[inline]
pub(crate) fn mark_defined(addr: usize, len: usize) {
    if requests_on() {
        client_request(0, MAKE_MEM_DEFINED, addr, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_harmless_on_any_cpu() {
        // Under Valgrind this registers and drops a stack id; elsewhere both
        // return the default. Either way nothing else changes.
        let mut buf = [0u8; 4096];
        let low = buf.as_mut_ptr() as usize;
        let id = stack_register(low, low + buf.len());
        if !requests_on() {
            assert_eq!(id, 0);
        }
        stack_deregister(id, low, low + buf.len());
        assert!(buf.iter().all(|&b| b == 0));
    }
}
