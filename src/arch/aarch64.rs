//! AArch64 AAPCS64: stubs into `asm/aarch64.S` and its initial frame.

use core::arch::asm;
use core::mem::{offset_of, size_of};

use super::EntryFn;

extern "C" {
    // Not callable as Rust functions: they follow the register contract in
    // asm/aarch64.S and are entered only from the asm! stubs below.
    pub(crate) fn stackswitch_resume_v2();
    fn stackswitch_resume_drop_v2();
    fn stackswitch_suspend_v2();
    fn stackswitch_finish_v2();
}

/// Size of the switch frame (the `.S` `FRAME_SIZE`), the same with or
/// without `fp-control`: FPCR takes the word that is padding otherwise.
pub(crate) const FRAME_SIZE: usize = 32;

/// Words between the slot and the initial frame: none, the return address
/// the trampoline sets for the entry function is in x30.
pub(crate) const TRAMPOLINE_RETURN_WORDS: usize = 0;

/// The switch frame of a fiber that has not started (see the `.S` banner).
#[repr(C)]
pub(crate) struct InitialFrame {
    /// Restored into x19: the trampoline calls it.
    x19_entry: usize,
    /// Restored into x29: the trampoline passes it as `data`.
    x29_data: usize,
    /// The resume address: the trampoline.
    pc: usize,
    /// FPCR under `fp-control` (0: round to nearest, no flush-to-zero, IEEE
    /// NaNs — what Linux starts a process with); padding otherwise.
    fpcr: usize,
}

const _: () = {
    assert!(offset_of!(InitialFrame, x19_entry) == 0); // FRAME_X19
    assert!(offset_of!(InitialFrame, x29_data) == 8); // FRAME_X29
    assert!(offset_of!(InitialFrame, pc) == 16); // FRAME_PC
    assert!(offset_of!(InitialFrame, fpcr) == 24); // FRAME_FPCR
    assert!(size_of::<InitialFrame>() == FRAME_SIZE);
};

impl InitialFrame {
    pub(crate) fn new(entry: EntryFn, data: *mut u8) -> Self {
        InitialFrame {
            x19_entry: entry as usize,
            x29_data: data as usize,
            pc: super::trampoline_address(),
            fpcr: 0,
        }
    }
}

/// An `asm!` block that enters the `.S` switch, with every register the
/// other side may change declared clobbered -- except x1, which holds the
/// slot on both sides of every switch (each side passes its own copy of the
/// same slot, and the `.S` never writes x1), so the compiler need not reload
/// it. x19 and x29, which `asm!` cannot name, are saved by the `.S`; so is
/// x30 on the resumer's side. x2 carries the fiber's sp and is named by each
/// use. This is `clobber_abi("C")` minus x1 and x2, plus
/// x20-x28, written out; all of v0-v31 are listed because only the low
/// halves of v8-v15 are callee-saved.
macro_rules! switch_asm {
    ($($body:tt)*) => {
        asm!(
            $($body)*
            out("x3") _, out("x4") _, out("x5") _, out("x6") _,
            out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            out("x20") _, out("x21") _, out("x22") _, out("x23") _, out("x24") _,
            out("x25") _, out("x26") _, out("x27") _, out("x28") _, out("x30") _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
        )
    };
}

// SVE's predicate registers and the upper parts of its z registers are not
// in the list above. Refuse to build rather than let a switch corrupt them.
#[cfg(target_feature = "sve")]
compile_error!("stackswitch's switch does not yet declare the SVE registers as clobbered");

/// Switches from the resumer into the fiber whose slot is `slot` and whose
/// switch frame is at `sp`, handing it `value`; returns what the fiber handed
/// back and its new switch frame after a suspend, or [`RETURNED`](super::RETURNED)
/// or [`ENDED`](super::ENDED) if it finished.
///
/// # Safety
/// `slot` must be the slot of a started-or-fresh fiber that is not running,
/// whose stack is alive, and `sp` its switch frame (from `init_fiber` or the
/// last `resume`); `value` must be what that fiber expects.
#[inline(always)]
pub(crate) unsafe fn resume(value: usize, slot: *mut usize, sp: usize) -> (usize, usize) {
    let out: usize;
    let new_sp: usize;
    // The .S saves x19/x29/x30; every other register either side may change
    // is declared (switch_asm), d8-d15 included. SAFETY: the caller's
    // contract; sp is always 16-byte aligned.
    unsafe {
        switch_asm!(
            "bl {resume}",
            resume = sym stackswitch_resume_v2,
            inout("x0") value => out,
            in("x1") slot,
            inout("x2") sp => new_sp,
        );
    }
    (out, new_sp)
}

/// As [`resume`], but the fiber is asked to unwind (a suspended fiber) or to
/// drop its closure (a fresh one) instead of being handed a value.
///
/// # Safety
/// As for [`resume`].
#[inline(never)]
pub(crate) unsafe fn resume_drop(slot: *mut usize, sp: usize) -> (usize, usize) {
    let out: usize;
    let new_sp: usize;
    // SAFETY: as for `resume`.
    unsafe {
        switch_asm!(
            "bl {resume_drop}",
            resume_drop = sym stackswitch_resume_drop_v2,
            out("x0") out,
            in("x1") slot,
            inout("x2") sp => new_sp,
        );
    }
    (out, new_sp)
}

/// Switches from the running fiber back to its resumer, handing it `value`;
/// returns the value of the next `resume` and the control word that came
/// with it: nonzero to go on, 0 if the fiber is to unwind (`resume_drop`).
///
/// Always inlined: the stub branches (`b`, not `bl`) into the `.S` with its
/// continuation in x9, so the `.S`'s `ret` pairs with the resumer's `bl`.
///
/// # Safety
/// Must run on the stack of the fiber whose slot is `slot`, while it runs.
#[inline(always)]
pub(crate) unsafe fn suspend(value: usize, slot: *mut usize) -> (usize, usize) {
    let out: usize;
    let go: usize;
    // SAFETY: as for `resume`; x9 is declared clobbered by switch_asm.
    unsafe {
        switch_asm!(
            "adr x9, 2f",        // x9 = where this fiber continues
            "b {suspend}",
            "2:",
            "hint #34",          // bti c: reached by resume's br x17
            suspend = sym stackswitch_suspend_v2,
            inout("x0") value => out,
            in("x1") slot,
            out("x2") go,
        );
    }
    (out, go)
}

/// Leaves a fiber for good, handing `value` and `control` to its resumer,
/// whose `resume` returns them as the value and the stack pointer:
/// [`RETURNED`](super::RETURNED) with the return value, or
/// [`ENDED`](super::ENDED) with a pointer to how the fiber ended.
///
/// # Safety
/// Must run on the stack of the fiber whose slot is `slot`, with nothing left
/// on that stack that needs dropping but what `value` hands over, which the
/// resumer moves out; `control` must say what `value` is.
#[inline(always)]
pub(crate) unsafe fn finish(value: usize, slot: *mut usize, control: usize) -> ! {
    // SAFETY: the .S finish switches to the resumer's frame and returns into
    // its resume stub; this fiber's stack is never used again.
    unsafe {
        asm!(
            "b {finish}", // never returns: no return address to predict
            finish = sym stackswitch_finish_v2,
            in("x0") value,
            in("x1") slot,
            in("x2") control,
            options(noreturn),
        );
    }
}
