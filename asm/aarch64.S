/*
 * aarch64.S — the context switch, the fiber entry trampoline and
 * call-on-stack for AArch64 (AAPCS64, Linux, ELF).
 *
 * ABI facts this file relies on (AAPCS64):
 *   - callee-saved: x19-x28, x29 (frame pointer), sp, and the low 64 bits
 *     of v8-v15 (d8-d15). x30 (lr) holds the return address. x18 is the
 *     platform register: Linux leaves it to user code, and nothing here
 *     touches it. x16/x17 are the intra-procedure-call scratch registers.
 *   - sp is 16-byte aligned at all times (not only at calls).
 *   - no red zone on Linux: memory below sp may be overwritten at any time.
 *   - FPCR's mode bits (rounding, flush-to-zero, default NaN) are
 *     callee-saved ("preserved across calls"); FPSR's flags are not.
 *
 * Who saves what. The Rust side enters the switch from an asm! block that
 * declares every register asm! lets it name as clobbered (clobber_abi("C"),
 * which covers x0-x17, x30 and all of v0-v31, plus x20-x28), so the
 * compiler spills only what is live; that includes d8-d15. What asm! cannot
 * name -- x19 (LLVM's base pointer) and x29 (the frame pointer) -- is saved
 * here, together with the address to continue at. With STACKSWITCH_FP_CONTROL
 * FPCR is saved in the frame's last word, which is padding otherwise.
 *
 * The frame a suspended side leaves on its own stack ("switch frame"),
 * 32 bytes so that sp stays 16-byte aligned, at the stack pointer stored in
 * the fiber's slot:
 *
 *     +0   x19
 *     +8   x29
 *     +16  resume address
 *     +24  FPCR (fp-control) or padding
 *
 * For the resumer, the resume address is the x30 its `bl` set; for a fiber,
 * the continuation label its suspend stub computed with `adr`, or the
 * trampoline for a fiber that has not started.
 *
 * What travels in registers. x0 carries the value handed over, both ways:
 * a primitive scalar in the register itself, anything else as a pointer to
 * it in the sender's frame (src/fiber.rs decides; this file never looks at
 * x0). x2 carries the control word: into a fiber, nonzero to continue and
 * 0 to ask it to unwind (resume_drop); back to the resumer, the fiber's sp
 * after a suspend, and after finish whatever the fiber's entry passed it:
 * 1 when its closure returned (x0 is the return value, encoded like any
 * value) and 0 when it panicked or unwound (x0 points at how it ended). A
 * stack pointer is never 0 or 1.
 *
 * Where the two stack pointers live. The slot, one word near the top of the
 * fiber's stack, holds the address of the resumer's frame record while the
 * fiber runs: the {x29, resume address} pair at +FRAME_X29 of its switch
 * frame (suspend, finish and the trampoline's CFI read it there). Because
 * the trampoline sets x29 to the slot, and the slot and the word above it
 * form a frame record too, frame-pointer walkers go from a fiber's frames
 * through the trampoline into its resumer's. The fiber's own sp travels
 * in a register: suspend hands it back in x2, the Rust side keeps it in the
 * Fiber, and resume takes it in x2. The whole stack layout is drawn in
 * src/stack/mod.rs; src/arch/aarch64.rs mirrors the constants below and
 * const-asserts them.
 *
 * Branch targets: resume addresses are reached by `br x17`, so they carry
 * `bti c` (hint #34), which admits br through x16/x17 and blr. Saved return
 * addresses are not PAC-signed: a fiber may resume on another thread, and
 * signing binds a pointer to the sp it was signed with.
 */
#include "common.h"

        .text

        .set FRAME_X19, 0
        .set FRAME_X29, 8
        .set FRAME_PC, 16
        .set FRAME_FPCR, 24
        .set FRAME_SIZE, 32

/* SAVE_FRAME pc: push a switch frame whose resume address is in `pc`. */
.macro SAVE_FRAME pc
        sub     sp, sp, #FRAME_SIZE             /* room for the switch frame */
        stp     x19, x29, [sp, #FRAME_X19]      /* base and frame pointer of the side leaving */
        str     \pc, [sp, #FRAME_PC]            /* where the side leaving continues */
#ifdef STACKSWITCH_FP_CONTROL
        mrs     x9, fpcr                        /* x9 = FP mode bits of the side leaving */
        str     x9, [sp, #FRAME_FPCR]
#endif
.endm

/* LOAD_FRAME pc: restore x19/x29 (and FPCR) from the switch frame at sp and
 * load its resume address into `pc`, leaving sp above the frame. */
.macro LOAD_FRAME pc
#ifdef STACKSWITCH_FP_CONTROL
        ldr     x9, [sp, #FRAME_FPCR]           /* x9 = FP mode bits of the arriving side */
        msr     fpcr, x9
#endif
        ldp     x19, x29, [sp, #FRAME_X19]      /* the arriving side's x19, x29 */
        ldr     \pc, [sp, #FRAME_PC]            /* the arriving side's resume address */
        add     sp, sp, #FRAME_SIZE             /* pop the switch frame */
.endm

/*
 * ENTER_FROM_RESUMER opens resume and resume_drop: the resumer's side of a
 * switch. On entry: x30 = the return address into the resume stub; x1 = the
 * slot. Leaves the resumer's switch frame (resume address = x30) on its
 * stack and the address of its frame record in the slot, and says in CFI
 * where the resumer's frame is from then on.
 */
.macro ENTER_FROM_RESUMER
        hint    #34                             /* bti c */
        SAVE_FRAME x30
        .cfi_def_cfa_offset FRAME_SIZE
        .cfi_offset x19, FRAME_X19 - FRAME_SIZE
        .cfi_offset x29, FRAME_X29 - FRAME_SIZE
        .cfi_offset x30, FRAME_PC - FRAME_SIZE
        add     x10, sp, #FRAME_X29
        str     x10, [x1]                       /* slot = the resumer's frame record */
        /* From here the unwinder finds the resumer's frame through the slot
         * (R = *x1, the frame record): CFA = R + 24, x30 at R + 8, x29 at R,
         * x19 at R - 8.
         *   0x0f DW_CFA_def_cfa_expression, 5 bytes:
         *        0x71 DW_OP_breg1 (x1) 0; 0x06 DW_OP_deref;
         *        0x23 DW_OP_plus_uconst 24
         *   0x10 DW_CFA_expression 30, 5 bytes: R; 0x23 plus_uconst 8
         *   0x10 DW_CFA_expression 29, 3 bytes: R
         *   0x10 DW_CFA_expression 19, 5 bytes: R; 0x38 DW_OP_lit8;
         *        0x1c DW_OP_minus */
        .cfi_escape 0x0f, 5, 0x71, 0, 0x06, 0x23, 24
        .cfi_escape 0x10, 30, 5, 0x71, 0, 0x06, 0x23, 8
        .cfi_escape 0x10, 29, 3, 0x71, 0, 0x06
        .cfi_escape 0x10, 19, 5, 0x71, 0, 0x06, 0x38, 0x1c
.endm

/*
 * LOAD_FIBER: x2 = the fiber's switch frame. Restores the fiber's registers
 * from it, loads its resume address into x17 and lands sp just above the
 * frame, without a separate `mov sp` first.
 */
.macro LOAD_FIBER
#ifdef STACKSWITCH_FP_CONTROL
        ldr     x9, [x2, #FRAME_FPCR]           /* x9 = the fiber's FP mode bits */
        msr     fpcr, x9
#endif
        ldp     x19, x29, [x2, #FRAME_X19]      /* the fiber's x19, x29 */
        ldr     x17, [x2, #FRAME_PC]            /* x17 = the fiber's resume address */
        add     sp, x2, #FRAME_SIZE             /* now on the fiber's stack, frame popped */
.endm

/*
 * fn resume(value: x0, slot: x1 = *mut *mut u8, fiber_sp: x2)
 *     -> (value: x0, fiber_sp: x2)
 *
 * Resumer -> fiber. Called (`bl`) from the resume stub in src/arch/aarch64.rs.
 * On entry: x30 = return address into the stub; x2 = the fiber's switch
 * frame; x0 = the value handed to the fiber.
 * Leaves a switch frame (resume address = x30) on the resumer's stack, stores
 * its address in *slot and branches to the fiber's resume address with x0 and
 * x1 unchanged and x2 nonzero (still the frame address): "go on". It
 * returns, later, when the fiber suspends or finishes: their `ret` through
 * the x30 saved here pairs with this `bl`. x2 then says which: the fiber's
 * new sp after a suspend, 1 or 0 after finish; x0 is the fiber's value. x1 is
 * never written here, nor in suspend or finish: both sides rely on it still
 * holding the slot.
 */
        .p2align 4
STACKSWITCH_FUNCTION(resume)
        .cfi_startproc
        ENTER_FROM_RESUMER
        LOAD_FIBER
        br      x17                             /* continue the fiber; x0 = value, x2 != 0 */
        .cfi_endproc
STACKSWITCH_END(resume)

/*
 * fn resume_drop(slot: x1, fiber_sp: x2) -> (value: x0, fiber_sp: x2)
 *
 * As resume, but the fiber continues with x2 = 0: "unwind". A suspended
 * fiber's pending suspend then unwinds its stack; a fresh fiber's entry
 * drops its closure. Called only when a fiber is dropped unfinished.
 */
        .p2align 4
STACKSWITCH_FUNCTION(resume_drop)
        .cfi_startproc
        ENTER_FROM_RESUMER
        LOAD_FIBER
        mov     x2, xzr                         /* x2 = 0: unwind */
        br      x17                             /* continue the fiber */
        .cfi_endproc
STACKSWITCH_END(resume_drop)

/*
 * RETURN_TO_RESUMER: sp = the resumer's switch frame. Restores it and
 * returns into its resume stub (the `ret` pairs with resume's `bl`).
 */
.macro RETURN_TO_RESUMER
        .cfi_def_cfa sp, FRAME_SIZE
        .cfi_offset x19, FRAME_X19 - FRAME_SIZE
        .cfi_offset x29, FRAME_X29 - FRAME_SIZE
        .cfi_offset x30, FRAME_PC - FRAME_SIZE
        LOAD_FRAME x30                          /* x30 = return address into the stub */
        .cfi_def_cfa_offset 0
        .cfi_restore x19
        .cfi_restore x29
        .cfi_restore x30
        ret
.endm

/*
 * fn suspend(value: x0, slot: x1, continuation: x9)
 *     -> (value: x0, go: x2)
 *
 * Fiber -> resumer. Branched to (`b`, not `bl`, so the return-address stack
 * is not pushed) from the suspend stub inlined into fiber code, with x9 =
 * the stub's continuation label. On entry: *slot = the resumer's switch
 * frame. Leaves the fiber's switch frame (resume address = x9), hands its
 * address to the resumer in x2 (never 0: "suspended"), restores the resumer
 * and returns into its resume stub with x0 = value. The fiber continues at
 * its continuation when it is next resumed, with x0 = the new value and
 * x2 = 0 if it is to unwind.
 */
        .p2align 4
STACKSWITCH_FUNCTION(suspend)
        .cfi_startproc
        .cfi_register x30, x9                   /* our "return address" is in x9 */
        SAVE_FRAME x9
        .cfi_def_cfa_offset FRAME_SIZE
        .cfi_offset x19, FRAME_X19 - FRAME_SIZE
        .cfi_offset x29, FRAME_X29 - FRAME_SIZE
        .cfi_offset x30, FRAME_PC - FRAME_SIZE
        mov     x2, sp                          /* x2 = the fiber's switch frame, for the resumer */
        ldr     x10, [x1]                       /* x10 = the resumer's frame record */
        sub     sp, x10, #FRAME_X29             /* now on the resumer's stack, at its frame */
        RETURN_TO_RESUMER
        .cfi_endproc
STACKSWITCH_END(suspend)

/*
 * fn finish(value: x0, slot: x1, control: x2) -> !
 *
 * The fiber's last switch: branched to (`b`, not `bl`: it never returns,
 * and a `bl` would unbalance the return-address predictor) from the
 * fiber's Rust entry once everything on the fiber's stack has been
 * dropped, except what x0 hands over. Nothing of the fiber is saved; the
 * resumer gets x0 and x2 as they are: x2 = 1 ("returned", x0 = the
 * encoded return value) or 0 ("ended", x0 = a pointer to the panic or
 * unwind).
 */
        .p2align 4
STACKSWITCH_FUNCTION(finish)
        .cfi_startproc
        ldr     x10, [x1]                       /* x10 = the resumer's frame record */
        sub     sp, x10, #FRAME_X29             /* now on the resumer's stack, at its frame */
        RETURN_TO_RESUMER
        .cfi_endproc
STACKSWITCH_END(finish)

/*
 * The first frame of every fiber. Reached by resume's `br x17` the first
 * time a fiber runs, from the initial switch frame Rust wrote
 * (src/arch/aarch64.rs, InitialFrame, just below the slot): x19 = the Rust entry function,
 * x29 = its data pointer, sp = the slot (16-byte aligned), x0 = first value,
 * x2 = 0 if the fiber is being dropped before it ran (resume_drop).
 *
 * Enters entry(value: x0, data: x1, slot: x2, go: x3) -> ! with `br`, x30 set to
 * trampoline_ret: entry never returns (it leaves through `finish`, also
 * reached by a branch), so a `blr` would leave an entry on the return
 * address predictor's stack that no `ret` consumes.
 *
 * CFI: this frame's caller is whoever resumed the fiber. The slot is at
 * this frame's sp for the whole function, and holds R, the resumer's frame
 * record (CFA = R + 24, x30 at R + 8, x29 at R, x19 at R - 8):
 *   0x0f DW_CFA_def_cfa_expression, 5 bytes:
 *        0x8f DW_OP_breg31 (sp) 0; 0x06 DW_OP_deref;
 *        0x23 DW_OP_plus_uconst 24              -> CFA = R + 24
 *   0x10 DW_CFA_expression 30, 5 bytes: R; 0x23 plus_uconst 8
 *   0x10 DW_CFA_expression 29, 3 bytes: R
 *   0x10 DW_CFA_expression 19, 5 bytes: R; 0x38 DW_OP_lit8; 0x1c DW_OP_minus
 *
 * Frame pointers: x29 = the slot, whose word is R (the next frame record)
 * and whose next word Rust set to trampoline_ret: a frame-pointer walk from
 * the fiber's frames shows this trampoline, then the resumer's frames.
 */
        .p2align 4
STACKSWITCH_FUNCTION(trampoline)
        .cfi_startproc
        /* A signal frame to unwinders: its caller (the resumer) may be on a
         * stack at a lower address than this one, which gdb otherwise
         * rejects as "frame inner to this frame (corrupt stack?)". Unwinders
         * then look the resumer's frame up at its return address itself
         * rather than one byte before; that address is inside the same
         * function, after the call into the switch. */
        .cfi_signal_frame
        .cfi_escape 0x0f, 5, 0x8f, 0, 0x06, 0x23, 24
        .cfi_escape 0x10, 30, 5, 0x8f, 0, 0x06, 0x23, 8
        .cfi_escape 0x10, 29, 3, 0x8f, 0, 0x06
        .cfi_escape 0x10, 19, 5, 0x8f, 0, 0x06, 0x38, 0x1c
        hint    #34                             /* bti c: reached by br x17 */
        mov     x3, x2                          /* x3 = go (fourth argument): 0 = drop */
        mov     x1, x29                         /* x1 = data (second argument) */
        mov     x2, sp                          /* x2 = slot (third argument) */
        mov     x29, sp                         /* x29 = the slot: a frame record (see above) */
        adr     x30, STACKSWITCH_SYM(trampoline_ret) /* the return address entry sees */
        mov     x16, x19                        /* enter Rust through x16 */
        br      x16                             /* entry(value, data, slot, go) -> ! */
        .globl  STACKSWITCH_SYM(trampoline_ret)
        .hidden STACKSWITCH_SYM(trampoline_ret)
STACKSWITCH_SYM(trampoline_ret):
        brk     #0x5353                         /* entry never returns */
        .cfi_endproc
STACKSWITCH_END(trampoline)

/*
 * fn call_on_stack(arg: x0, f: x1 = extern "C" fn(arg) -> usize, new_sp: x2)
 *     -> usize (x0)
 *
 * Calls f(arg) with sp = new_sp, then returns on the original stack with
 * f's return value still in x0 (nothing here writes x0).
 * new_sp must be 16-byte aligned and point one past usable memory. f must
 * not unwind: the Rust caller catches panics inside f and resumes them on
 * the original stack. x29 holds our frame record (and so the original sp)
 * across the call: CFI (CFA = x29 + 16) and frame-pointer walkers both lead
 * back to our caller.
 */
        .p2align 4
STACKSWITCH_FUNCTION(call_on_stack)
        .cfi_startproc
        hint    #34                             /* bti c */
        stp     x29, x30, [sp, #-16]!           /* frame record: caller's fp, return address */
        .cfi_def_cfa_offset 16
        .cfi_offset x29, -16
        .cfi_offset x30, -8
        mov     x29, sp                         /* x29 = our frame record (and old sp) */
        .cfi_def_cfa x29, 16
        mov     sp, x2                          /* switch to the new stack */
        mov     x16, x1
        blr     x16                             /* f(arg); x0 still holds arg */
        mov     sp, x29                         /* back on the original stack; x0 = f's value */
        .cfi_def_cfa sp, 16
        ldp     x29, x30, [sp], #16             /* caller's fp and our return address */
        .cfi_def_cfa_offset 0
        .cfi_restore x29
        .cfi_restore x30
        ret
        .cfi_endproc
STACKSWITCH_END(call_on_stack)

STACKSWITCH_NOTE_GNU_STACK
