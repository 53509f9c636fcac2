//! Every callee-saved register survives a switch, in both directions.
//!
//! `call_with_regs(f, arg, vals)` is an asm block that loads `vals` into all
//! callee-saved registers (x86_64: rbx, rbp, r12-r15; aarch64: x19-x29 and
//! d8-d15), calls `f(arg)` as a C function, and returns what those registers
//! hold after it returns. Both sides of a fiber do their switching inside
//! such a call with *different* values, so a register that a switch failed
//! to save or restore shows up as the other side's value.
//!
//! - Resumer side: `f` calls `fiber.resume()`; the fiber meanwhile runs with
//!   its own values in every register; after `resume` returns, the
//!   resumer's values must be back.
//! - Fiber side: `f` calls `suspender.suspend()`; the resumer meanwhile runs
//!   with its own values; after `suspend` returns, the fiber's values must
//!   be back.

use std::arch::asm;

use stackswitch::{Fiber, FiberResult, Suspender};

#[cfg(target_arch = "x86_64")]
const NREGS: usize = 6;
#[cfg(target_arch = "x86_64")]
const NAMES: [&str; NREGS] = ["rbx", "rbp", "r12", "r13", "r14", "r15"];

#[cfg(target_arch = "aarch64")]
const NREGS: usize = 19;
#[cfg(target_arch = "aarch64")]
const NAMES: [&str; NREGS] = [
    "x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27", "x28", "x29", "d8", "d9", "d10",
    "d11", "d12", "d13", "d14", "d15",
];

type Regs = [u64; NREGS];

/// Distinct values per side and round, never equal across sides.
fn pattern(side: u64, round: u64) -> Regs {
    let mut r = [0; NREGS];
    for (i, v) in r.iter_mut().enumerate() {
        *v = 0x5a00_0000_0000_0000 | (side << 40) | (round << 16) | (i as u64 + 1);
    }
    r
}

/// Loads `vals` into every callee-saved register, calls `f(arg)`, and
/// returns the registers' values after it.
///
/// # Safety
/// `f` must be safe to call with `arg`.
#[cfg(target_arch = "x86_64")]
unsafe fn call_with_regs(f: extern "C" fn(*mut u8), arg: *mut u8, vals: &Regs) -> Regs {
    let mut out: Regs = [0; NREGS];
    // SAFETY: rbx and rbp (which asm! cannot name) are saved and restored by
    // the block itself; r12-r15 and the caller-saved registers are declared
    // clobbered; the stack stays 16-byte aligned at the call (3 pushes + 8).
    unsafe {
        asm!(
            "push rbx",
            "push rbp",
            "push {out}",          // the output array, kept across the call
            "sub rsp, 8",          // align rsp to 16 for the call
            "mov rbx, [rsi]",
            "mov rbp, [rsi + 8]",
            "mov r12, [rsi + 16]",
            "mov r13, [rsi + 24]",
            "mov r14, [rsi + 32]",
            "mov r15, [rsi + 40]",
            "call rax",            // f(arg): rdi = arg
            "add rsp, 8",
            "pop rax",             // rax = the output array
            "mov [rax], rbx",
            "mov [rax + 8], rbp",
            "mov [rax + 16], r12",
            "mov [rax + 24], r13",
            "mov [rax + 32], r14",
            "mov [rax + 40], r15",
            "pop rbp",
            "pop rbx",
            out = in(reg) out.as_mut_ptr(),
            inout("rax") f => _,
            in("rdi") arg,
            in("rsi") vals.as_ptr(),
            lateout("r12") _,
            lateout("r13") _,
            lateout("r14") _,
            lateout("r15") _,
            clobber_abi("C"),
        );
    }
    out
}

/// Loads `vals` into every callee-saved register, calls `f(arg)`, and
/// returns the registers' values after it.
///
/// # Safety
/// `f` must be safe to call with `arg`.
#[cfg(target_arch = "aarch64")]
unsafe fn call_with_regs(f: extern "C" fn(*mut u8), arg: *mut u8, vals: &Regs) -> Regs {
    let mut out: Regs = [0; NREGS];
    // clobber_abi("C") covers x0-x17, x30 and v0-v31 (so d8-d15). SAFETY:
    // x19/x29 (unnameable) are saved and restored by the block, x20-x28 are
    // declared clobbered, and sp stays 16-byte aligned.
    unsafe {
        asm!(
            "stp x19, x29, [sp, #-16]!",
            "str {out}, [sp, #-16]!",   // the output array, kept across the call
            "ldp x19, x20, [x1]",
            "ldp x21, x22, [x1, #16]",
            "ldp x23, x24, [x1, #32]",
            "ldp x25, x26, [x1, #48]",
            "ldp x27, x28, [x1, #64]",
            "ldr x29, [x1, #80]",
            "ldp d8, d9, [x1, #88]",
            "ldp d10, d11, [x1, #104]",
            "ldp d12, d13, [x1, #120]",
            "ldp d14, d15, [x1, #136]",
            "blr x16",                  // f(arg): x0 = arg
            "ldr x9, [sp], #16",        // x9 = the output array
            "stp x19, x20, [x9]",
            "stp x21, x22, [x9, #16]",
            "stp x23, x24, [x9, #32]",
            "stp x25, x26, [x9, #48]",
            "stp x27, x28, [x9, #64]",
            "str x29, [x9, #80]",
            "stp d8, d9, [x9, #88]",
            "stp d10, d11, [x9, #104]",
            "stp d12, d13, [x9, #120]",
            "stp d14, d15, [x9, #136]",
            "ldp x19, x29, [sp], #16",
            out = in(reg) out.as_mut_ptr(),
            in("x16") f,
            in("x0") arg,
            in("x1") vals.as_ptr(),
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

type TestFiber = Fiber<(), Regs, ()>;

extern "C" fn resume_it(arg: *mut u8) {
    // SAFETY: `arg` is the `&mut (TestFiber, Option<Regs>)` passed below.
    let (fiber, seen) = unsafe { &mut *(arg as *mut (TestFiber, Option<Regs>)) };
    *seen = fiber.resume(()).yielded();
}

extern "C" fn suspend_it(arg: *mut u8) {
    // SAFETY: `arg` is the `&(…, Regs)` passed by the fiber below.
    let (s, report) = unsafe { &*(arg as *const (&Suspender<(), Regs>, Regs)) };
    s.suspend(*report);
}

fn assert_regs(side: &str, round: u64, got: &Regs, want: &Regs) {
    for i in 0..NREGS {
        assert_eq!(
            got[i], want[i],
            "{side}, round {round}: {} was {:#x}, expected {:#x}",
            NAMES[i], got[i], want[i]
        );
    }
}

#[test]
fn callee_saved_registers_survive_resume_and_suspend() {
    const ROUNDS: u64 = 64;
    let fiber: TestFiber = Fiber::new(64 << 10, |(), s: &Suspender<(), Regs>| {
        // Each round: suspend with the fiber's values in every register and
        // report what came back (checked by the resumer).
        let mut report = [0; NREGS];
        for round in 0..ROUNDS {
            let mine = pattern(2, round);
            let mut ctx = (s, report);
            // SAFETY: suspend_it takes exactly this tuple.
            report = unsafe { call_with_regs(suspend_it, &mut ctx as *mut _ as *mut u8, &mine) };
        }
        s.suspend(report);
    })
    .unwrap();

    let mut state = (fiber, None);
    for round in 0..=ROUNDS {
        let mine = pattern(1, round);
        // SAFETY: resume_it takes exactly this tuple.
        let after = unsafe { call_with_regs(resume_it, &mut state as *mut _ as *mut u8, &mine) };
        assert_regs("resumer after resume", round, &after, &mine);
        let fiber_saw = state.1.expect("the fiber yields every round");
        if round > 0 {
            // What the fiber found after its previous suspend returned.
            assert_regs(
                "fiber after suspend",
                round - 1,
                &fiber_saw,
                &pattern(2, round - 1),
            );
        }
    }
    assert_eq!(state.0.resume(()), FiberResult::Return(()));
}

/// The same across the fiber's first entry and its final return: the
/// resumer's registers survive a resume that starts the fiber and one that
/// finishes it.
#[test]
fn callee_saved_registers_survive_start_and_finish() {
    extern "C" fn run_once(arg: *mut u8) {
        // SAFETY: `arg` is the `&mut Fiber` passed below.
        let fiber = unsafe { &mut *(arg as *mut Fiber<(), (), u32>) };
        assert_eq!(fiber.resume(()), FiberResult::Return(9)); // 3 * (0 + ... + 63) = 6048
    }
    let mut fiber: Fiber<(), (), u32> = Fiber::new(64 << 10, |(), _: &Suspender<(), ()>| {
        // Use plenty of registers inside the fiber.
        let v: Vec<u64> = (0..64).map(|i| std::hint::black_box(i * 3)).collect();
        (v.iter().sum::<u64>() % 10) as u32 + 1
    })
    .unwrap();
    let mine = pattern(3, 0);
    // SAFETY: run_once takes exactly this fiber.
    let after = unsafe { call_with_regs(run_once, &mut fiber as *mut _ as *mut u8, &mine) };
    assert_regs("resumer across start+finish", 0, &after, &mine);
}
