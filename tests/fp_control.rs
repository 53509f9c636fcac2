//! With `fp-control`, the floating-point control state the psABI calls
//! callee-saved is the fiber's own: a fiber that sets round-toward-zero does
//! not leak it to its resumer, has it again when resumed, and does not see
//! the resumer's mode either. (Without the feature the state is shared, as
//! in corosensei and wasmtime-fiber; the crate docs say so.)
#![cfg(feature = "fp-control")]

use stackswitch::{Fiber, FiberResult, Suspender};

/// Reads the rounding-control state: x86_64 MXCSR and x87 control word
/// (packed), aarch64 FPCR.
fn fp_control() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let mut mxcsr: u32 = 0;
        let mut cw: u16 = 0;
        // SAFETY: stores the two control registers into the locals.
        unsafe {
            std::arch::asm!(
                "stmxcsr [{m}]",
                "fnstcw [{c}]",
                m = in(reg) &mut mxcsr,
                c = in(reg) &mut cw,
                options(nostack)
            )
        };
        // Ignore MXCSR's sticky exception flags (bits 0-5): not control state.
        (u64::from(mxcsr & !0x3f) << 16) | u64::from(cw)
    }
    #[cfg(target_arch = "aarch64")]
    {
        let fpcr: u64;
        // SAFETY: reads FPCR.
        unsafe { std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack)) };
        fpcr
    }
}

/// Sets round-toward-zero in every control register there is.
fn set_round_toward_zero() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: changes only the rounding-control bits (MXCSR RC = 11,
    // x87 RC = 11); the test restores the defaults before it ends.
    unsafe {
        std::arch::asm!(
            "sub rsp, 8",
            "stmxcsr [rsp]",
            "or dword ptr [rsp], 0x6000",
            "ldmxcsr [rsp]",
            "fnstcw [rsp + 4]",
            "or word ptr [rsp + 4], 0x0c00",
            "fldcw [rsp + 4]",
            "add rsp, 8",
        )
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: changes only FPCR.RMode (bits 22-23 = 0b11, toward zero).
    unsafe {
        std::arch::asm!(
            "mrs {t}, fpcr",
            "orr {t}, {t}, #0xc00000",
            "msr fpcr, {t}",
            t = out(reg) _,
            options(nomem, nostack)
        )
    };
}

/// Puts the default rounding (to nearest) back.
fn set_round_to_nearest() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: clears the rounding-control bits only.
    unsafe {
        std::arch::asm!(
            "sub rsp, 8",
            "stmxcsr [rsp]",
            "and dword ptr [rsp], 0xffff9fff",
            "ldmxcsr [rsp]",
            "fnstcw [rsp + 4]",
            "and word ptr [rsp + 4], 0xf3ff",
            "fldcw [rsp + 4]",
            "add rsp, 8",
        )
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: clears FPCR.RMode only.
    unsafe {
        std::arch::asm!(
            "mrs {t}, fpcr",
            "bic {t}, {t}, #0xc00000",
            "msr fpcr, {t}",
            t = out(reg) _,
            options(nomem, nostack)
        )
    };
}

/// 1/10 computed at run time, so the rounding mode applies (its binary
/// expansion 0.000110011... rounds up to nearest, down toward zero).
fn third() -> f64 {
    std::hint::black_box(1.0f64) / std::hint::black_box(10.0f64)
}

#[test]
fn rounding_mode_stays_with_its_fiber() {
    let default = fp_control();
    let nearest_third = third();

    let mut fiber = Fiber::new(64 << 10, |(), s: &Suspender<(), (u64, f64)>| {
        set_round_toward_zero();
        let tz = fp_control();
        s.suspend((tz, third()));
        // Resumed: the mode must still be ours, whatever the resumer did.
        s.suspend((fp_control(), third()));
        set_round_to_nearest();
        fp_control()
    })
    .unwrap();

    let FiberResult::Yield((fiber_mode, fiber_third)) = fiber.resume(()) else {
        panic!("fiber did not suspend");
    };
    assert_ne!(fiber_mode, default, "the fiber did change its mode");
    assert!(fiber_third < nearest_third, "toward zero rounds 1/10 down");
    assert_eq!(
        fp_control(),
        default,
        "the fiber's mode leaked into the resumer"
    );
    assert_eq!(third(), nearest_third);

    // The resumer changes its own mode; the fiber must not see it, and gets
    // its own back.
    set_round_toward_zero();
    let resumer_tz = fp_control();
    set_round_to_nearest();
    assert_ne!(resumer_tz, default);

    let FiberResult::Yield((again, _)) = fiber.resume(()) else {
        panic!("fiber did not suspend again");
    };
    assert_eq!(
        again, fiber_mode,
        "the fiber lost its mode across a suspend"
    );
    assert_eq!(fp_control(), default);
    assert_eq!(fiber.resume(()), FiberResult::Return(default));
    assert_eq!(fp_control(), default);
}

#[test]
fn new_fiber_starts_with_default_mode_whatever_its_creator_uses() {
    set_round_toward_zero();
    let creator_mode = fp_control();
    let mut fiber = Fiber::new(64 << 10, |(), _: &Suspender<(), ()>| fp_control()).unwrap();
    let inside = fiber.resume(()).returned().unwrap();
    assert_eq!(fp_control(), creator_mode, "the resumer keeps its own mode");
    set_round_to_nearest();
    assert_eq!(
        inside,
        fp_control(),
        "a new fiber runs with the default mode"
    );
}
