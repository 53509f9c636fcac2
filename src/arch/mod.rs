//! The Rust face of `asm/<arch>.S`: `extern "C"` declarations, the `asm!`
//! stubs that enter the switch, and the `#[repr(C)]` initial switch frame
//! that mirrors the `.S` layout (with const-asserted offsets).
//!
//! Every architecture module provides the same items:
//! - `resume(value, slot, sp) -> (value, sp)`, always inlined;
//! - `resume_drop(slot, sp) -> (value, sp)`;
//! - `suspend(value, slot) -> (value, go)`, always inlined;
//! - `finish(value, slot) -> !`;
//! - `InitialFrame::new(entry, data)` and `FRAME_SIZE`;
//! - `call_on_stack(arg, f, sp)`.
//!
//! Two words travel in registers each way. The value word is the value
//! handed over, encoded by `fiber::word` (the value itself when it is a
//! primitive scalar, else a pointer to it); this module never looks at it.
//! The control word says what happened: from a fiber, its new stack
//! pointer after a suspend, [`RETURNED`] when its closure returned (the
//! value word is the return value) or [`ENDED`] when it panicked or unwound
//! (the value word points at how); into a fiber, nonzero to go on or 0 when
//! it is being dropped (`resume_drop`: a fresh fiber drops its closure, a
//! suspended one unwinds).

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "aarch64")]
pub(crate) use aarch64::*;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_64::*;

/// The Rust function a fiber's trampoline calls first:
/// `entry(value, data, slot, go)`, which never returns (it leaves by
/// `finish`); `go` is 0 when the fiber is dropped before it ran.
pub(crate) type EntryFn =
    unsafe extern "C" fn(value: usize, data: *mut u8, slot: *mut usize, go: usize) -> !;

/// The control word from a fiber that finished by its closure returning:
/// the value word is the return value, encoded as a suspended value is.
/// No stack pointer is this small, so it cannot be mistaken for a suspend.
pub(crate) const RETURNED: usize = 1;

/// The control word from a fiber that finished otherwise (it panicked, or
/// unwound because it was dropped): the value word points at how.
pub(crate) const ENDED: usize = 0;

/// A function run by [`call_on_stack`], which hands back what it returns;
/// it must not unwind.
pub(crate) type OnStackFn = unsafe extern "C" fn(arg: *mut u8) -> usize;

extern "C" {
    /// The first frame of every fiber (see the `.S`); never called from Rust,
    /// only named as the resume address of an initial frame.
    fn stackswitch_trampoline_v2();

    /// The return address of the trampoline's call into Rust: the word next
    /// to the slot, so that the slot reads as a frame record.
    pub(crate) static stackswitch_trampoline_ret_v2: u8;

    /// Calls `f(arg)` with the stack pointer set to `sp`, then returns what
    /// `f` returned, on the original stack.
    fn stackswitch_call_on_stack_v2(arg: *mut u8, f: OnStackFn, sp: *mut u8) -> usize;
}

/// Address of the trampoline, the resume address of a fiber that has not run.
#[inline]
pub(crate) fn trampoline_address() -> usize {
    stackswitch_trampoline_v2 as unsafe extern "C" fn() as usize
}

/// Runs `f(arg)` with the stack pointer set to `sp`; returns what `f`
/// returned.
///
/// # Safety
/// `sp` must be 16-byte aligned and be the high end of writable memory large
/// enough for everything `f` does (or end in a guard page that stops it);
/// `f` must not unwind; nothing may be live in `[lowest sp f reaches, sp)`.
#[inline]
pub(crate) unsafe fn call_on_stack(arg: *mut u8, f: OnStackFn, sp: *mut u8) -> usize {
    debug_assert_eq!(
        sp as usize % 16,
        0,
        "call_on_stack needs a 16-byte aligned sp"
    );
    // The x86_64 call goes through an asm! `call` of the symbol: a call of
    // the extern fn compiles to an indirect `call` through the GOT, which
    // the linker leaves as it is here.
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller upholds the contract above, which is the .S
    // routine's; it is an extern "C" function, so clobber_abi("C") covers
    // what it may change, and the stack is call-aligned (no `nostack`).
    unsafe {
        let ret: usize;
        core::arch::asm!(
            "call {on_stack}",
            on_stack = sym stackswitch_call_on_stack_v2,
            in("rdi") arg,
            in("rsi") f,
            in("rdx") sp,
            lateout("rax") ret,
            clobber_abi("C"),
        );
        ret
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: as above.
    unsafe {
        stackswitch_call_on_stack_v2(arg, f, sp)
    }
}

/// Where a fresh fiber's stack pointer points, for a given slot: its
/// initial switch frame, below the slot and, on x86_64, below the return
/// address the trampoline leaves for the entry function
/// ([`TRAMPOLINE_RETURN_WORDS`]). A fiber that has run has frames below this,
/// so its saved stack pointer never equals it again.
#[inline]
pub(crate) fn initial_sp(slot: *mut usize) -> usize {
    slot as usize - TRAMPOLINE_RETURN_WORDS * 8 - FRAME_SIZE
}

/// Bytes a fiber needs above its initial stack pointer: the slot and the
/// word above it, the trampoline's return word (x86_64), the initial frame.
pub(crate) const FIBER_OVERHEAD: usize = 16 + TRAMPOLINE_RETURN_WORDS * 8 + FRAME_SIZE;

/// Writes what a fiber's first `resume` needs below `slot`: the initial
/// switch frame and, on x86_64, the return address the trampoline leaves for
/// the entry function; and the trampoline's return address in the word
/// above the slot, so that the slot and that word form a frame record (see
/// the `.S`). Returns the fiber's initial stack pointer: its first `resume`
/// enters the trampoline, which calls `entry(value, data, slot, go)`.
///
/// # Safety
/// `slot` must be 16-byte aligned, with the word above it and at least
/// `FIBER_OVERHEAD - 16` bytes below it writable and on the fiber's stack.
pub(crate) unsafe fn init_fiber(slot: *mut usize, entry: EntryFn, data: *mut u8) -> usize {
    debug_assert_eq!(
        slot as usize % 16,
        0,
        "the fiber slot must be 16-byte aligned"
    );
    let ret = &raw const stackswitch_trampoline_ret_v2 as usize;
    let sp = initial_sp(slot);
    // SAFETY: the caller guarantees the bytes from `sp` up to and including
    // the word above the slot are writable; InitialFrame is FRAME_SIZE bytes
    // with alignment 8 (const-asserted) and `sp` is 8-aligned.
    unsafe {
        (sp as *mut InitialFrame).write(InitialFrame::new(entry, data));
        if TRAMPOLINE_RETURN_WORDS == 1 {
            slot.sub(1).write(ret);
        }
        slot.add(1).write(ret);
    }
    sp
}
