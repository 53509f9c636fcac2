/*
 * x86_64.S — the context switch, the fiber entry trampoline and
 * call-on-stack for x86_64 System V (Linux, ELF).
 *
 * ABI facts this file relies on (System V AMD64 psABI):
 *   - callee-saved: rbx, rbp, r12-r15, rsp; every xmm register is
 *     caller-saved. The MXCSR control bits and the x87 control word are
 *     callee-saved too ("preserved across calls"); the status bits are not.
 *   - rsp is 16-byte aligned at every call instruction, so a callee sees
 *     rsp = 8 (mod 16) on entry.
 *   - the 128 bytes below rsp (the red zone) belong to the running function.
 *     Nothing here keeps live data below rsp across a switch: the Rust stubs
 *     that enter this file are asm! blocks without `nostack`, which tells the
 *     compiler to keep nothing in the red zone around them.
 *
 * Who saves what. The Rust side enters the switch from an asm! block that
 * declares every register asm! lets it name as clobbered (clobber_abi("C")
 * plus r12-r15), so the compiler spills only what is live, and usually
 * outside the hot loop. What asm! cannot name -- rbx (LLVM's base pointer)
 * and rbp (the frame pointer) -- is saved here. With STACKSWITCH_FP_CONTROL
 * the MXCSR and x87 control word are saved here as well.
 *
 * The frame a suspended side leaves on its own stack ("switch frame"),
 * lowest address first, at the stack pointer stored in the fiber's slot:
 *
 *     without fp-control          with fp-control
 *     +0   rbx                    +0   MXCSR (4 bytes), x87 CW (2), pad (2)
 *     +8   rbp                    +8   rbx
 *     +16  resume address         +16  rbp
 *                                 +24  resume address
 *
 * For the resumer, the resume address is the return address its `call`
 * pushed; for a fiber, it is the continuation label its suspend stub pushed,
 * or the trampoline for a fiber that has not started.
 *
 * What travels in registers. rdi carries the value handed over, both ways:
 * a primitive scalar in the register itself, anything else as a pointer to
 * it in the sender's frame (src/fiber.rs decides; this file never looks at
 * rdi). rdx carries the control word: into a fiber, nonzero to continue
 * and 0 to ask it to unwind (resume_drop); back to the resumer, the fiber's
 * stack pointer after a suspend, and after finish whatever the fiber's
 * entry passed it: 1 when its closure returned (rdi is the return value,
 * encoded like any value) and 0 when it panicked or unwound (rdi points at
 * how it ended). A stack pointer is never 0 or 1.
 *
 * Where the two stack pointers live. The slot, one word near the top of the
 * fiber's stack, holds the address of the resumer's frame record while the
 * fiber runs: the {rbp, return address} pair at +FRAME_RBP of its switch
 * frame (suspend, finish and the trampoline's CFI read it there). Because
 * the trampoline sets rbp to the slot, and the slot and the word above it
 * form a frame record too, frame-pointer walkers (perf -g, eBPF profilers)
 * go from a fiber's frames through the trampoline into its resumer's. The fiber's own
 * stack pointer travels in a register: suspend hands it back in rdx, the
 * Rust side keeps it in the Fiber, and resume takes it in rdx. So a round
 * trip has one store-to-load dependency through memory (the slot), not two.
 * The whole stack layout is drawn in src/stack/mod.rs; src/arch/x86_64.rs
 * mirrors the constants below and const-asserts them.
 */
#include "common.h"

        .intel_syntax noprefix
        .text

#ifdef STACKSWITCH_FP_CONTROL
        .set FRAME_FPCTL, 0             /* MXCSR at +0, x87 CW at +4 */
        .set FRAME_RBX, 8
        .set FRAME_RBP, 16
        .set FRAME_PC, 24
        .set FRAME_SIZE, 32
#else
        .set FRAME_RBX, 0
        .set FRAME_RBP, 8
        .set FRAME_PC, 16
        .set FRAME_SIZE, 24
#endif

/*
 * SAVE_FRAME pushes the part of a switch frame below the resume address
 * (which the caller's call, or the stub's push, already put on the stack).
 */
.macro SAVE_FRAME
        push    rbp                     /* frame pointer of the side leaving */
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset rbp, 0
        push    rbx                     /* LLVM base pointer of the side leaving */
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset rbx, 0
#ifdef STACKSWITCH_FP_CONTROL
        sub     rsp, 8                  /* room for MXCSR + x87 CW */
        .cfi_adjust_cfa_offset 8
        stmxcsr [rsp]                   /* [rsp] = SSE rounding/exception masks */
        fnstcw  [rsp + 4]               /* [rsp+4] = x87 precision/rounding */
#endif
.endm

/*
 * RETURN_TO_RESUMER: rsi = the slot. Switches to the resumer's stack at its
 * frame record, restores the registers saved below the record (reading
 * below rsp is safe: the 128-byte red zone is never touched by signal
 * delivery), and returns into its resume stub. The CFI says, at every
 * instruction, where the resumer's frame and registers are.
 */
.macro RETURN_TO_RESUMER
        mov     rsp, [rsi]              /* rsp = the resumer's frame record */
        .cfi_def_cfa rsp, 16
        .cfi_offset rbp, -16
        .cfi_offset rbx, -24
#ifdef STACKSWITCH_FP_CONTROL
        ldmxcsr [rsp + FRAME_FPCTL - FRAME_RBP]     /* the resumer's MXCSR */
        fldcw   [rsp + FRAME_FPCTL - FRAME_RBP + 4] /* the resumer's x87 CW */
#endif
        mov     rbx, [rsp + FRAME_RBX - FRAME_RBP]  /* the resumer's rbx */
        .cfi_restore rbx
        pop     rbp                     /* the resumer's rbp */
        .cfi_adjust_cfa_offset -8
        .cfi_restore rbp
        ret                             /* pairs with resume's call */
.endm

/*
 * ENTER_FROM_RESUMER opens resume and resume_drop: the resumer's side of a
 * switch. On entry: rsp = 8 (mod 16), [rsp] = the return address into the
 * resume stub; rsi = the slot. Leaves the resumer's switch frame on its
 * stack and the address of its frame record in the slot, and says in CFI
 * where the resumer's frame is from then on.
 */
.macro ENTER_FROM_RESUMER
        push    rbp                     /* with the return address: a frame record */
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset rbp, 0
        mov     [rsi], rsp              /* slot = the resumer's frame record */
        push    rbx                     /* LLVM base pointer of the resumer */
#ifdef STACKSWITCH_FP_CONTROL
        sub     rsp, 8                  /* room for MXCSR + x87 CW */
        stmxcsr [rsp]                   /* [rsp] = SSE rounding/exception masks */
        fnstcw  [rsp + 4]               /* [rsp+4] = x87 precision/rounding */
#endif
        /* From here the unwinder finds the resumer's frame through the slot
         * (R = *rsi, the frame record): CFA = R + 16, return address at
         * R + 8, rbp at R, rbx at R - 8.
         *   0x0f DW_CFA_def_cfa_expression, 5 bytes:
         *        0x74 DW_OP_breg4 (rsi) 0; 0x06 DW_OP_deref;
         *        0x23 DW_OP_plus_uconst 16
         *   0x10 DW_CFA_expression 16 (rip), 5 bytes: R; plus_uconst 8
         *   0x10 DW_CFA_expression 6 (rbp), 3 bytes: R
         *   0x10 DW_CFA_expression 3 (rbx), 5 bytes: R; 0x38 DW_OP_lit8;
         *        0x1c DW_OP_minus */
        .cfi_escape 0x0f, 5, 0x74, 0, 0x06, 0x23, 16
        .cfi_escape 0x10, 16, 5, 0x74, 0, 0x06, 0x23, 8
        .cfi_escape 0x10, 6, 3, 0x74, 0, 0x06
        .cfi_escape 0x10, 3, 5, 0x74, 0, 0x06, 0x38, 0x1c
.endm

/*
 * LOAD_FIBER: rdx = the fiber's switch frame. Restores the fiber's
 * registers from it through rdx rather than by pops after a `mov rsp`,
 * which saves an instruction and a stack-engine sync on the critical path,
 * and lands rsp just above the frame. The resume address is left in the
 * frame, at rdx + FRAME_PC, for the caller to jump through.
 */
.macro LOAD_FIBER
#ifdef STACKSWITCH_FP_CONTROL
        ldmxcsr [rdx + FRAME_FPCTL]     /* the fiber's MXCSR */
        fldcw   [rdx + FRAME_FPCTL + 4] /* the fiber's x87 CW */
#endif
        mov     rbx, [rdx + FRAME_RBX]  /* the fiber's rbx */
        mov     rbp, [rdx + FRAME_RBP]  /* the fiber's rbp */
        lea     rsp, [rdx + FRAME_SIZE] /* now on the fiber's stack, frame popped */
.endm

/*
 * fn resume(value: rdi, slot: rsi = *mut *mut u8, fiber_sp: rdx)
 *     -> (value: rdi, fiber_sp: rdx)
 *
 * Resumer -> fiber. Called (`call`) from the resume stub in src/arch/x86_64.rs.
 * On entry: rsp = 8 (mod 16), [rsp] = return address into the stub;
 * rdx = the fiber's saved stack pointer (its switch frame); rdi = the value
 * handed to the fiber.
 * Leaves a switch frame on the resumer's stack, stores its address in *slot,
 * and continues the fiber at its resume address with rdi and rsi unchanged
 * and rdx nonzero (still the frame address): "go on".
 * It returns, later, when the fiber suspends or finishes: their `ret` pops
 * the return address this `call` pushed, so calls and returns stay paired
 * for the return-address predictor. rdx then says which: the fiber's new
 * stack pointer after a suspend, 1 or 0 after finish; rdi is the fiber's
 * value.
 * rsi is never written here, nor in suspend or finish: both sides rely on
 * it still holding the slot.
 */
        .p2align 4
STACKSWITCH_FUNCTION(resume)
        .cfi_startproc
        ENTER_FROM_RESUMER
        LOAD_FIBER
        jmp     [rdx + FRAME_PC]        /* continue the fiber; rdi = value, rdx != 0 */
        .cfi_endproc
STACKSWITCH_END(resume)

/*
 * fn resume_drop(slot: rsi, fiber_sp: rdx) -> (value: rdi, fiber_sp: rdx)
 *
 * As resume, but the fiber continues with rdx = 0: "unwind". A suspended
 * fiber's pending suspend then unwinds its stack; a fresh fiber's entry
 * drops its closure. Called only when a fiber is dropped unfinished.
 */
        .p2align 4
STACKSWITCH_FUNCTION(resume_drop)
        .cfi_startproc
        ENTER_FROM_RESUMER
        mov     rax, [rdx + FRAME_PC]   /* rax = the fiber's resume address */
        LOAD_FIBER
        xor     edx, edx                /* rdx = 0: unwind */
        jmp     rax                     /* continue the fiber */
        .cfi_endproc
STACKSWITCH_END(resume_drop)

/*
 * fn suspend(value: rdi, slot: rsi) -> (value: rdi, go: rdx)
 *
 * Fiber -> resumer. Jumped to (`jmp`, not `call`) from the suspend stub that
 * is inlined into fiber code, after the stub pushed its continuation label.
 * On entry: [rsp] = that continuation, so the stack looks like a call's and
 * the default CFI (CFA = rsp + 8, return address at CFA - 8) is right;
 * *slot = the resumer's frame record.
 * Leaves the fiber's switch frame, hands its address to the resumer in rdx
 * (never 0: "suspended"), restores the resumer and returns into its resume
 * stub, with rdi = value. The fiber continues at its continuation when it
 * is next resumed, with rdi = the new value and rdx = 0 if it is to unwind.
 */
        .p2align 4
STACKSWITCH_FUNCTION(suspend)
        .cfi_startproc
        SAVE_FRAME
        mov     rdx, rsp                /* rdx = the fiber's switch frame, for the resumer */
        RETURN_TO_RESUMER               /* now on the resumer's stack */
        .cfi_endproc
STACKSWITCH_END(suspend)

/*
 * fn finish(value: rdi, slot: rsi, control: rdx) -> !
 *
 * The fiber's last switch: jumped to (not called: it never returns, and a
 * call would unbalance the return-address predictor) from the fiber's Rust
 * entry once everything on the fiber's stack has been dropped, except what
 * rdi hands over. Nothing of the fiber is saved; the resumer gets rdi and
 * rdx as they are: rdx = 1 ("returned", rdi = the encoded return value)
 * or 0 ("ended", rdi = a pointer to the panic or unwind).
 */
        .p2align 4
STACKSWITCH_FUNCTION(finish)
        .cfi_startproc
        RETURN_TO_RESUMER               /* into the resumer's resume stub */
        .cfi_endproc
STACKSWITCH_END(finish)

/*
 * The first frame of every fiber. Reached by resume's `jmp` the first time a
 * fiber runs, from the initial switch frame Rust wrote (src/arch/x86_64.rs,
 * InitialFrame, just below the slot and the word under it): rbx = the Rust
 * entry function, rbp = its data pointer, rdi = the first value, rdx = 0
 * if the fiber is being dropped before it ran (resume_drop), and
 * rsp = slot - 8, where Rust stored trampoline_ret: the return address the
 * entry function finds, as if this frame had called it.
 *
 * Enters entry(value: rdi, data: rsi, slot: rdx, go: rcx) -> ! with `jmp`, not
 * `call`: entry never returns (it leaves through `finish`, also reached by a
 * jump), so a `call` would leave an entry on the return-address predictor's
 * stack that no `ret` consumes, and the resumer's next returns would be
 * mispredicted.
 *
 * CFI, through rbp = the slot (set by the second instruction, and kept by
 * every callee, as rbp is callee-saved): this frame's caller is whoever
 * resumed the fiber; the slot holds R, the resumer's frame record
 * (CFA = R + 16, return address at R + 8, rbp at R, rbx at R - 8):
 *   0x0f DW_CFA_def_cfa_expression, 5 bytes:
 *        0x76 DW_OP_breg6 (rbp) 0; 0x06 DW_OP_deref;
 *        0x23 DW_OP_plus_uconst 16             -> CFA = R + 16
 *   0x10 DW_CFA_expression 16 (rip), 5 bytes: R; 0x23 plus_uconst 8
 *   0x10 DW_CFA_expression 6 (rbp), 3 bytes:  R
 *   0x10 DW_CFA_expression 3 (rbx), 5 bytes:  R; 0x38 DW_OP_lit8;
 *        0x1c DW_OP_minus
 * So gdb and std::backtrace continue from a fiber into its resumer. The
 * frame is marked a signal frame: gdb would otherwise refuse a caller on a
 * stack at a lower address ("frame inner to this frame"). Unwinders then
 * look the resumer's frame up at its return address itself rather than one
 * byte before; that address is inside the same function, after the call
 * into the switch.
 *
 * Frame pointers: rbp = the slot, whose word is R (the next frame record)
 * and whose next word Rust set to trampoline_ret (the return address of
 * this frame, as a walker sees it). A frame-pointer walk from the fiber's
 * frames thus shows this trampoline, then the resumer's frames.
 */
        .p2align 4
STACKSWITCH_FUNCTION(trampoline)
        .cfi_startproc
        .cfi_signal_frame
        .cfi_escape 0x0f, 5, 0x76, 0, 0x06, 0x23, 16
        .cfi_escape 0x10, 16, 5, 0x76, 0, 0x06, 0x23, 8
        .cfi_escape 0x10, 6, 3, 0x76, 0, 0x06
        .cfi_escape 0x10, 3, 5, 0x76, 0, 0x06, 0x38, 0x1c
        endbr64                         /* reached by an indirect jmp */
        mov     rcx, rdx                /* rcx = go (fourth argument): 0 = drop */
        mov     rsi, rbp                /* rsi = data (second argument) */
        lea     rbp, [rsp + 8]          /* rbp = the slot: a frame record (see above) */
        mov     rdx, rbp                /* rdx = slot (third argument) */
        jmp     rbx                     /* entry(value, data, slot, go) -> !, [rsp] = trampoline_ret */
        .globl  STACKSWITCH_SYM(trampoline_ret)
        .hidden STACKSWITCH_SYM(trampoline_ret)
STACKSWITCH_SYM(trampoline_ret):
        ud2                             /* entry never returns */
        .cfi_endproc
STACKSWITCH_END(trampoline)

/*
 * fn call_on_stack(arg: rdi, f: rsi = extern "C" fn(arg) -> usize, new_sp: rdx)
 *     -> usize (rax)
 *
 * Calls f(arg) with rsp = new_sp, then returns on the original stack with
 * f's return value still in rax (nothing here writes rax).
 * new_sp must be 16-byte aligned and point one past usable memory (the
 * callee's return address goes at new_sp - 8). f must not unwind: the Rust
 * caller catches panics inside f and resumes them here, on the original
 * stack. rbp holds the original stack pointer across the call, so both the
 * CFI (CFA = rbp + 16) and frame-pointer walkers lead back to our caller.
 */
        .p2align 4
STACKSWITCH_FUNCTION(call_on_stack)
        .cfi_startproc
        push    rbp                     /* save the caller's frame pointer */
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset rbp, 0
        mov     rbp, rsp                /* rbp = our frame record (and old rsp) */
        .cfi_def_cfa_register rbp
        mov     rsp, rdx                /* switch to the new stack */
        call    rsi                     /* f(arg); rdi still holds arg */
        mov     rsp, rbp                /* back on the original stack; rax = f's value */
        .cfi_def_cfa_register rsp
        pop     rbp                     /* the caller's frame pointer */
        .cfi_adjust_cfa_offset -8
        .cfi_restore rbp
        ret
        .cfi_endproc
STACKSWITCH_END(call_on_stack)

STACKSWITCH_NOTE_GNU_STACK
