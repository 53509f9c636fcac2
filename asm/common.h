/*
 * common.h — shared by asm/x86_64.S and asm/aarch64.S.
 *
 * Symbol conventions: every routine is global (so Rust can name it) but
 * .hidden (so it never leaves the final binary or shared object), carries an
 * ELF type and size (so debuggers, perf and unwinders can attribute addresses
 * to it), and its name ends in a version suffix: two copies of stackswitch
 * linked into one program never resolve to each other's routines, and a
 * change of contract gets a new suffix.
 *
 * The layouts these routines read and write are drawn once, in
 * src/stack/mod.rs ("Stack layout"), and mirrored by const-asserted
 * #[repr(C)] structs in src/arch/.
 */
#ifndef STACKSWITCH_COMMON_H
#define STACKSWITCH_COMMON_H

/* Contract version of the symbols below; bump it when any contract changes. */
#define STACKSWITCH_SYM(name) stackswitch_##name##_v2

/* Opens a function: exported to the link, hidden from the dynamic symbol
 * table, typed as a function for tools. */
#define STACKSWITCH_FUNCTION(name)          \
    .globl STACKSWITCH_SYM(name);           \
    .hidden STACKSWITCH_SYM(name);          \
    .type STACKSWITCH_SYM(name), %function; \
    STACKSWITCH_SYM(name):

/* Closes a function: records its size for symbolizers. */
#define STACKSWITCH_END(name) \
    .size STACKSWITCH_SYM(name), . - STACKSWITCH_SYM(name)

/* Every object says its stack need not be executable. */
#define STACKSWITCH_NOTE_GNU_STACK \
    .section .note.GNU-stack, "", %progbits

#endif /* STACKSWITCH_COMMON_H */
