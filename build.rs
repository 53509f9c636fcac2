//! Assembles the context switch for the target architecture.
//!
//! The architecture comes from `CARGO_CFG_TARGET_ARCH` (the target being
//! built for), never from `cfg!(target_arch)`, which describes the machine
//! running this build script.

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(stackswitch_asm)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=asm/common.h");

    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let file = match (arch.as_str(), os.as_str()) {
        ("x86_64", "linux") => "asm/x86_64.S",
        ("aarch64", "linux") => "asm/aarch64.S",
        // src/lib.rs stops the build with a compile_error! naming the
        // supported targets; assembling nothing here keeps that message the
        // first one a user sees.
        _ => return,
    };
    println!("cargo::rerun-if-changed={file}");
    println!("cargo::rustc-cfg=stackswitch_asm");

    let mut build = cc::Build::new();
    build.file(file).include("asm");
    if env::var_os("CARGO_FEATURE_FP_CONTROL").is_some() {
        build.define("STACKSWITCH_FP_CONTROL", None);
    }
    build.compile("stackswitch_asm");
}
