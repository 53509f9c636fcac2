//! x86_64 System V: stubs into `asm/x86_64.S` and its initial frame.

use core::arch::asm;
use core::mem::{offset_of, size_of};

use super::EntryFn;

extern "C" {
    // Not callable as Rust functions: they follow the register contract in
    // asm/x86_64.S and are entered only from the asm! stubs below.
    fn stackswitch_resume_v1();
    fn stackswitch_suspend_v1();
    fn stackswitch_finish_v1();
}

/// Size of the switch frame (the `.S` `FRAME_SIZE`).
#[cfg(not(feature = "fp-control"))]
pub(crate) const FRAME_SIZE: usize = 24;
/// Size of the switch frame (the `.S` `FRAME_SIZE`).
#[cfg(feature = "fp-control")]
pub(crate) const FRAME_SIZE: usize = 32;

/// MXCSR at power-on and as Rust code expects it: all exceptions masked,
/// round to nearest, no flush-to-zero.
#[cfg(feature = "fp-control")]
const DEFAULT_MXCSR: u32 = 0x1f80;
/// x87 control word as Linux starts a process: all exceptions masked,
/// 64-bit precision, round to nearest.
#[cfg(feature = "fp-control")]
const DEFAULT_X87_CW: u16 = 0x037f;

/// The switch frame of a fiber that has not started (see the `.S` banner).
#[repr(C)]
pub(crate) struct InitialFrame {
    #[cfg(feature = "fp-control")]
    mxcsr: u32,
    #[cfg(feature = "fp-control")]
    x87_cw: u16,
    #[cfg(feature = "fp-control")]
    _pad: u16,
    /// Restored into rbx: the trampoline calls it.
    rbx_entry: usize,
    /// Restored into rbp: the trampoline passes it as `data`.
    rbp_data: usize,
    /// The resume address: the trampoline.
    pc: usize,
}

#[cfg(not(feature = "fp-control"))]
const _: () = {
    assert!(offset_of!(InitialFrame, rbx_entry) == 0); // FRAME_RBX
    assert!(offset_of!(InitialFrame, rbp_data) == 8); // FRAME_RBP
    assert!(offset_of!(InitialFrame, pc) == 16); // FRAME_PC
};
#[cfg(feature = "fp-control")]
const _: () = {
    assert!(offset_of!(InitialFrame, mxcsr) == 0); // FRAME_FPCTL
    assert!(offset_of!(InitialFrame, x87_cw) == 4); // FRAME_FPCTL + 4
    assert!(offset_of!(InitialFrame, rbx_entry) == 8); // FRAME_RBX
    assert!(offset_of!(InitialFrame, rbp_data) == 16); // FRAME_RBP
    assert!(offset_of!(InitialFrame, pc) == 24); // FRAME_PC
};
const _: () = assert!(size_of::<InitialFrame>() == FRAME_SIZE);

impl InitialFrame {
    pub(crate) fn new(entry: EntryFn, data: *mut u8) -> Self {
        InitialFrame {
            #[cfg(feature = "fp-control")]
            mxcsr: DEFAULT_MXCSR,
            #[cfg(feature = "fp-control")]
            x87_cw: DEFAULT_X87_CW,
            #[cfg(feature = "fp-control")]
            _pad: 0,
            rbx_entry: entry as usize,
            rbp_data: data as usize,
            pc: super::trampoline_address(),
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
    // SAFETY: `call` enters the .S resume, which saves rbx/rbp itself; every
    // other register it or the fiber may change is declared here (clobber_abi
    // covers the caller-saved ones, r12-r15 are listed), so the compiler
    // keeps nothing live in them. The stack is aligned for a call (no
    // `nostack`), and nothing lives in the red zone across the asm block.
    unsafe {
        asm!(
            "call {resume}",
            resume = sym stackswitch_resume_v1,
            inout("rdi") value => out,
            in("rsi") slot,
            lateout("rdx") status,
            lateout("r12") _,
            lateout("r13") _,
            lateout("r14") _,
            lateout("r15") _,
            clobber_abi("C"),
        );
    }
    (out, status)
}

/// Switches from the running fiber back to its resumer, handing it `value`
/// with status "yield"; returns the value of the next `resume`.
///
/// Always inlined: the stub pushes its own continuation and jumps into the
/// `.S`, whose `ret` then pairs with the resumer's `call`. Through a
/// non-inlined call the pairing would break (measured: 8x slower).
///
/// # Safety
/// Must run on the stack of the fiber whose slot is `slot`, while it runs.
#[inline(always)]
pub(crate) unsafe fn suspend(value: usize, slot: *mut usize) -> usize {
    let out: usize;
    // SAFETY: as for `resume`; in addition, the pushed continuation makes
    // the stack look like a call's to the .S, which pops it by switching
    // back here through resume's `jmp`.
    unsafe {
        asm!(
            "lea rax, [rip + 2f]",  // rax = where this fiber continues
            "push rax",             // its switch frame's resume address
            "xor edx, edx",         // status: yield
            "jmp {suspend}",
            "2:",
            "endbr64",              // reached by resume's indirect jmp
            suspend = sym stackswitch_suspend_v1,
            inout("rdi") value => out,
            in("rsi") slot,
            lateout("r12") _,
            lateout("r13") _,
            lateout("r14") _,
            lateout("r15") _,
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
            "call {finish}",
            finish = sym stackswitch_finish_v1,
            in("rdi") value,
            in("rsi") slot,
            in("rdx") super::STATUS_FINISH,
            options(noreturn),
        );
    }
}
