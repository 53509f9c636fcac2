//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::process::Command;

/// A command that runs this test binary again, for tests that must crash,
/// or change process-wide state, in a child process. An aarch64 test binary
/// under qemu-user (how the aarch64 tests run, see `.cargo/config.toml`)
/// cannot exec another aarch64 binary without binfmt_misc, so there the
/// child goes through the same emulator: the runner says which in
/// `STACKSWITCH_TEST_RUNNER`, and a process emulated by qemu is named
/// `qemu-aarch64` whatever started it.
pub fn self_command() -> Command {
    let exe = std::env::current_exe().expect("path of the test binary");
    let runner = std::env::var("STACKSWITCH_TEST_RUNNER").unwrap_or_default();
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    let runner = if !runner.trim().is_empty() {
        runner
    } else if comm.trim() == "qemu-aarch64" {
        "qemu-aarch64 -L /usr/aarch64-linux-gnu".to_string()
    } else {
        String::new()
    };
    let mut parts = runner.split_whitespace();
    match parts.next() {
        Some(program) => {
            let mut cmd = Command::new(program);
            cmd.args(parts).arg(exe);
            cmd
        }
        None => Command::new(exe),
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

/// Runs the `#[ignore]`d test named `test` alone in a child process, with
/// `env` added to its environment, and returns its output: for tests whose
/// body must run in a fresh process (a seccomp filter, a guard setting read
/// once per process).
pub fn run_ignored_child(test: &str, env: &[(&str, &str)]) -> std::process::Output {
    self_command()
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().copied())
        .output()
        .expect("spawn the test binary")
}

/// Asserts that a child run of one test (from [`run_child`] or
/// [`run_ignored_child`]) succeeded and really ran it: a name that matched
/// no test would exit with success too. Returns the child's stdout.
pub fn assert_child_passed(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// For a test whose body must run alone in a child process: in the parent
/// (`env_var` unset), runs the test named `test` in a child with `env_var`
/// set, asserts that it passed, and returns false; in that child, returns
/// true, and the caller runs the body.
pub fn in_child(test: &str, env_var: &str) -> bool {
    if std::env::var_os(env_var).is_some() {
        return true;
    }
    assert_child_passed(&run_child(test, env_var));
    false
}
