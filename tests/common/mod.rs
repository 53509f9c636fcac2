//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::process::Command;

/// A command that runs this test binary again, for tests that must crash in
/// a child process. Under an emulator (aarch64 tests run by qemu-user, see
/// `.cargo/config.toml`), the child goes through the same emulator.
pub fn self_command() -> Command {
    let exe = std::env::current_exe().expect("path of the test binary");
    match std::env::var("STACKSWITCH_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut parts = runner.split_whitespace();
            let mut cmd = Command::new(parts.next().expect("runner program"));
            cmd.args(parts).arg(exe);
            cmd
        }
        _ => Command::new(exe),
    }
}

/// Runs the test named `test` alone in a child process with `env_var` set,
/// and returns its output.
pub fn run_child(test: &str, env_var: &str) -> std::process::Output {
    self_command()
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(env_var, "1")
        .output()
        .expect("spawn the test binary")
}
