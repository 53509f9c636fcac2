//! x86_64 System V: stubs into `asm/x86_64.S` and its initial frame.

use core::arch::asm;
use core::mem::{offset_of, size_of};

use super::EntryFn;

extern "C" {
    // Not callable as Rust functions: they follow the register contract in
    // asm/x86_64.S and are entered only from the asm! stubs below.
    pub(crate) fn stackswitch_resume_v2();
    fn stackswitch_resume_drop_v2();
    fn stackswitch_suspend_v2();
    fn stackswitch_finish_v2();
}

/// Size of the switch frame (the `.S` `FRAME_SIZE`).
#[cfg(not(feature = "fp-control"))]
pub(crate) const FRAME_SIZE: usize = 24;
/// Size of the switch frame (the `.S` `FRAME_SIZE`).
#[cfg(feature = "fp-control")]
pub(crate) const FRAME_SIZE: usize = 32;

/// Words between the slot and the initial frame: the return address the
/// trampoline leaves for the entry function it jumps to (see the `.S`).
pub(crate) const TRAMPOLINE_RETURN_WORDS: usize = 1;

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

/// An `asm!` block that enters the `.S` switch, with every register the
/// other side may change declared clobbered -- except rsi, which holds the
/// slot on both sides of every switch (each side passes its own copy of the
/// same slot, and the `.S` never writes rsi), so the compiler need not
/// reload it. rbx and rbp, which `asm!` cannot name, are saved by the `.S`.
/// This is `clobber_abi("C")` minus rsi, written out; rdx, which carries the
/// fiber's stack pointer, is named by each use.
macro_rules! switch_asm {
    ($($body:tt)*) => {
        asm!(
            $($body)*
            out("rax") _, out("rcx") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            out("mm0") _, out("mm1") _, out("mm2") _, out("mm3") _,
            out("mm4") _, out("mm5") _, out("mm6") _, out("mm7") _,
            out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _,
            out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
        )
    };
}

// xmm16-31 and k1-k7 exist only with AVX-512; the list above would not
// cover them. Refuse to build rather than let a switch corrupt them.
#[cfg(target_feature = "avx512f")]
compile_error!("stackswitch's switch does not yet declare the AVX-512 registers as clobbered");

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
    // The .S saves rbx/rbp; every other register either side may change is
    // declared (switch_asm). SAFETY: the caller's contract; the stack is
    // call-aligned (no `nostack`), and nothing lives in the red zone.
    unsafe {
        switch_asm!(
            "call {resume}",
            resume = sym stackswitch_resume_v2,
            inout("rdi") value => out,
            in("rsi") slot,
            inout("rdx") sp => new_sp,
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
    // SAFETY: as for `resume`; rax, which the .S uses, is declared.
    unsafe {
        switch_asm!(
            "call {resume_drop}",
            resume_drop = sym stackswitch_resume_drop_v2,
            out("rdi") out,
            in("rsi") slot,
            inout("rdx") sp => new_sp,
        );
    }
    (out, new_sp)
}

/// Switches from the running fiber back to its resumer, handing it `value`;
/// returns the value of the next `resume` and the control word that came
/// with it: nonzero to go on, 0 if the fiber is to unwind (`resume_drop`).
///
/// Always inlined: the stub pushes its own continuation and jumps into the
/// `.S`, whose `ret` then pairs with the resumer's `call`. Through a
/// non-inlined call the pairing would break (measured: 8x slower).
///
/// # Safety
/// Must run on the stack of the fiber whose slot is `slot`, while it runs.
#[inline(always)]
pub(crate) unsafe fn suspend(value: usize, slot: *mut usize) -> (usize, usize) {
    let out: usize;
    let go: usize;
    // SAFETY: as for `resume`; in addition, the pushed continuation makes
    // the stack look like a call's to the .S, which pops it by switching
    // back here through resume's `jmp`.
    unsafe {
        switch_asm!(
            "lea rax, [rip + 2f]",  // rax = where this fiber continues
            "push rax",             // its switch frame's resume address
            "jmp {suspend}",
            "2:",
            "endbr64",              // reached by resume's indirect jmp
            suspend = sym stackswitch_suspend_v2,
            inout("rdi") value => out,
            in("rsi") slot,
            out("rdx") go,
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
            "jmp {finish}", // never returns: no return address to predict
            finish = sym stackswitch_finish_v2,
            in("rdi") value,
            in("rsi") slot,
            in("rdx") control,
            options(noreturn),
        );
    }
}
