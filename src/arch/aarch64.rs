//! AArch64 AAPCS64: stubs into `asm/aarch64.S` and its initial frame.

use core::arch::asm;
use core::mem::{offset_of, size_of};

use super::EntryFn;

extern "C" {
    // Not callable as Rust functions: they follow the register contract in
    // asm/aarch64.S and are entered only from the asm! stubs below.
    fn stackswitch_resume_v1();
    fn stackswitch_suspend_v1();
    fn stackswitch_finish_v1();
}

/// Size of the switch frame (the `.S` `FRAME_SIZE`), the same with or
/// without `fp-control`: FPCR takes the word that is padding otherwise.
pub(crate) const FRAME_SIZE: usize = 32;

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

/// Switches from the resumer into the fiber whose slot is `slot`, handing it
/// `value`; returns what the fiber handed back and the status.
///
/// # Safety
/// `slot` must be the slot of a started-or-fresh fiber that is not running,
/// whose stack is alive; `value` must be what that fiber expects.
#[inline(always)]
pub(crate) unsafe fn resume(value: usize, slot: *mut usize) -> (usize, usize) {
    let out: usize;
    let status: usize;
    // SAFETY: `bl` enters the .S resume, which saves x19/x29/x30 itself;
    // every other register it or the fiber may change is declared here
    // (clobber_abi covers x0-x17, x30 and v0-v31, x20-x28 are listed), so the
    // compiler keeps nothing live in them, d8-d15 included.
    unsafe {
        asm!(
            "bl {resume}",
            resume = sym stackswitch_resume_v1,
            inout("x0") value => out,
            in("x1") slot,
            lateout("x2") status,
            lateout("x20") _,
            lateout("x21") _,
            lateout("x22") _,
            lateout("x23") _,
            lateout("x24") _,
            lateout("x25") _,
            lateout("x26") _,
            lateout("x27") _,
            lateout("x28") _,
            clobber_abi("C"),
        );
    }
    (out, status)
}

/// Switches from the running fiber back to its resumer, handing it `value`
/// with status "yield"; returns the value of the next `resume`.
///
/// Always inlined: the stub branches (`b`, not `bl`) into the `.S` with its
/// continuation in x9, so the `.S`'s `ret` pairs with the resumer's `bl`.
///
/// # Safety
/// Must run on the stack of the fiber whose slot is `slot`, while it runs.
#[inline(always)]
pub(crate) unsafe fn suspend(value: usize, slot: *mut usize) -> usize {
    let out: usize;
    // SAFETY: as for `resume`; x9 and x2 are caller-saved and so declared
    // clobbered by clobber_abi("C").
    unsafe {
        asm!(
            "adr x9, 2f",        // x9 = where this fiber continues
            "mov x2, xzr",       // status: yield
            "b {suspend}",
            "2:",
            "hint #34",          // bti c: reached by resume's br x17
            suspend = sym stackswitch_suspend_v1,
            inout("x0") value => out,
            in("x1") slot,
            lateout("x20") _,
            lateout("x21") _,
            lateout("x22") _,
            lateout("x23") _,
            lateout("x24") _,
            lateout("x25") _,
            lateout("x26") _,
            lateout("x27") _,
            lateout("x28") _,
            clobber_abi("C"),
        );
    }
    out
}

/// Leaves a fiber for good, handing `value` to its resumer with status
/// "finish".
///
/// # Safety
/// Must run on the stack of the fiber whose slot is `slot`, with nothing left
/// on that stack that needs dropping.
#[inline(always)]
pub(crate) unsafe fn finish(value: usize, slot: *mut usize) -> ! {
    // SAFETY: the .S finish switches to the resumer's frame and returns into
    // its resume stub; this fiber's stack is never used again.
    unsafe {
        asm!(
            "bl {finish}",
            finish = sym stackswitch_finish_v1,
            in("x0") value,
            in("x1") slot,
            in("x2") super::STATUS_FINISH,
            options(noreturn),
        );
    }
}
