//! The comparison: stackswitch against the fiber crates people use today,
//! measured side by side in one process, printed as one table with medians
//! and ratios, and checked against the targets in DESIGN.md.
//!
//! ```text
//! cargo run --release --example compare                      # full run
//! cargo run --release --features wasmtime --example compare  # + Wasmtime rows
//! cargo run --release --example compare -- --quick           # smoke run (CI)
//! cargo run --release --example compare -- --json            # for tools
//! cargo run --release --example compare -- --markdown        # README table
//! cargo run --release --example compare -- --only round-trip  # one section
//! ```
//!
//! Without `fp-control` (and without `--quick`), the run also builds and
//! starts a child (`cargo run --release --features fp-control --example
//! compare_fp_control -- --child-fp-control`) that measures stackswitch with
//! `fp-control` and `context` side by side; its rows join the table.
//!
//! `--callgrind <case> <n>` only runs `n` operations of one round-trip,
//! create, guard or (with `wasmtime`) Wasmtime case, untimed (for
//! `scripts/callgrind.sh`, perf, strace).

mod create;
mod guard;
mod harness;
mod memory;
mod report;
mod switch;
#[cfg(feature = "wasmtime")]
mod wasm;

/// The `--callgrind` names of the Wasmtime cases (none without `wasmtime`).
fn wasm_keys() -> Vec<&'static str> {
    #[cfg(feature = "wasmtime")]
    return wasm::KEYS.iter().map(|(k, _, _)| *k).collect();
    #[cfg(not(feature = "wasmtime"))]
    Vec::new()
}

/// A Wasmtime case by its `--callgrind` name (with feature `wasmtime`).
fn wasm_op(case: &str) -> Option<harness::Op> {
    #[cfg(feature = "wasmtime")]
    return wasm::op_by_key(case);
    #[cfg(not(feature = "wasmtime"))]
    {
        let _ = case;
        None
    }
}

use std::process::Command;

use harness::{measure, Plan, Progress, Stats};
use report::{Report, Row, Target};

/// Command-line options.
struct Args {
    quick: bool,
    json: bool,
    markdown: bool,
    child_fp_control: bool,
    callgrind: Option<(String, u64)>,
    /// Only these sections (all when empty).
    only: Vec<String>,
}

/// The sections of the comparison, as `--only` names them.
const SECTIONS: &[&str] = &["round-trip", "create", "wasmtime", "guard", "memory"];

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        json: false,
        markdown: false,
        child_fp_control: false,
        callgrind: None,
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--json" => args.json = true,
            "--markdown" => args.markdown = true,
            "--child-fp-control" => args.child_fp_control = true,
            "--callgrind" => {
                let case = it.next().ok_or("--callgrind needs a case name")?;
                let n = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--callgrind needs a round-trip count")?;
                args.callgrind = Some((case, n));
            }
            "--only" => {
                let list = it.next().ok_or("--only needs a list of sections")?;
                for s in list.split(',') {
                    if !SECTIONS.contains(&s) {
                        return Err(format!("unknown section {s:?}; one of {SECTIONS:?}"));
                    }
                    args.only.push(s.to_string());
                }
            }
            "--help" | "-h" => {
                return Err(format!(
                    "usage: compare [--quick] [--json | --markdown] [--only <section>,...]\n       \
                     compare --callgrind <case> <n>\n\
                     sections: {SECTIONS:?}\n\
                     round-trip cases: {:?}",
                    switch::CASES
                ))
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

pub fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    if let Some((case, n)) = &args.callgrind {
        let Some(mut op) = switch::op(case)
            .or_else(|| create::op(case))
            .or_else(|| guard::op(case))
            .or_else(|| wasm_op(case))
        else {
            let keys: Vec<&str> = (create::CASES.iter().chain(guard::CASES))
                .map(|(k, _)| *k)
                .chain(wasm_keys())
                .collect();
            eprintln!("unknown case {case:?}; one of {:?} {keys:?}", switch::CASES);
            std::process::exit(2);
        };
        op(*n);
        return;
    }
    let plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    let mut progress = Progress::new();
    harness::warm_up_machine(
        &mut switch::op("stackswitch").expect("known case"),
        plan,
        &mut progress,
    );
    if args.child_fp_control {
        child_fp_control(plan, &mut progress);
        return;
    }

    let wanted = |section: &str| args.only.is_empty() || args.only.iter().any(|s| s == section);
    let mut report = Report::new(args.quick);
    if wanted("round-trip") {
        round_trip(&mut report, plan, &mut progress, args.quick);
    }
    if wanted("create") {
        create_run_drop(&mut report, plan, &mut progress);
    }
    if wanted("wasmtime") {
        wasmtime_rows(&mut report, plan, &mut progress);
    }
    if wanted("guard") {
        guard_rows(&mut report, plan, &mut progress);
    }
    if wanted("memory") {
        progress.say("memory: parking fibers");
        report.parked = memory::run(if args.quick { 1_000 } else { 10_000 });
    }
    progress.done();
    targets(&mut report);
    if args.json {
        print!("{}", report.json());
    } else if args.markdown {
        print!("{}", report.markdown());
    } else {
        print!("{}", report.table());
    }
}

/// Measures `names` (round-trip cases) side by side.
fn round_trip_stats(names: &[&str], plan: Plan, progress: &mut Progress) -> Vec<Stats> {
    let mut cases = switch::cases(names);
    measure("round trip", &mut cases, plan, progress)
}

const RT: &str = "round trip (resume + suspend)";

fn round_trip(report: &mut Report, plan: Plan, progress: &mut Progress, quick: bool) {
    // The OS-thread ping-pong blocks, and a vCPU that has just idled runs
    // the next batch slower (seen here: up to 1.5x, for any crate), so in
    // shared rounds it taxed whichever case came after it. It is measured
    // in rounds of its own.
    let (threads, fibers): (Vec<&str>, Vec<&str>) =
        switch::CASES.iter().partition(|c| **c == "os-thread");
    let mut stats = round_trip_stats(&fibers, plan, progress);
    stats.extend(round_trip_stats(&threads, plan, progress));
    for (name, s) in fibers.iter().chain(&threads).zip(stats) {
        report.push(Row::measured(RT, switch::label(name), s));
    }
    report.note(
        RT,
        "OS threads were measured in rounds of their own: their blocking waits \
         idle the CPU, which slowed the case measured after them",
    );
    if cfg!(feature = "fp-control") {
        report.note(
            RT,
            "this build has fp-control: the stackswitch row preserves MXCSR + x87 CW",
        );
        return;
    }
    if quick {
        report.push(Row::pending(
            RT,
            "stackswitch (fp-control), in a child",
            "skipped in --quick (it builds the crate again); run without --quick",
        ));
        return;
    }
    progress.say("round trip: building and running the fp-control child");
    match run_fp_child() {
        Ok(rows) => {
            for (name, s) in rows {
                report.push(Row::measured(RT, format!("{name} [child]"), s));
            }
            report.note(
                RT,
                "[child]: a child process built with --features fp-control measured \
                 these two side by side; compare them with each other",
            );
        }
        Err(why) => report.push(Row::pending(
            RT,
            "stackswitch (fp-control), in a child",
            &format!("not measured: {why}"),
        )),
    }
}

/// In the child: stackswitch (built with fp-control) and context, side by
/// side, one tab-separated line per case on stdout.
fn child_fp_control(plan: Plan, progress: &mut Progress) {
    if !cfg!(feature = "fp-control") {
        eprintln!("--child-fp-control needs a build with --features fp-control");
        std::process::exit(2);
    }
    let names = ["stackswitch", "context"];
    let stats = round_trip_stats(&names, plan, progress);
    progress.done();
    for (name, s) in names.iter().zip(stats) {
        let samples: Vec<String> = s.samples.iter().map(|x| x.to_string()).collect();
        println!("row\t{}\t{}", switch::label(name), samples.join(","));
    }
}

/// Builds and runs the fp-control child with the cargo that ran us.
fn run_fp_child() -> Result<Vec<(String, Stats)>, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "run",
            "--quiet",
            "--release",
            "--features",
            "fp-control",
            "--example",
            "compare_fp_control",
            "--",
            "--child-fp-control",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cargo.to_string_lossy()))?;
    if !out.status.success() {
        return Err(format!("the child failed ({})", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let run = harness::next_run();
    let rows: Vec<(String, Stats)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() != 3 || f[0] != "row" {
                return None;
            }
            let samples: Option<Vec<f64>> = f[2].split(',').map(|x| x.parse().ok()).collect();
            let samples = samples.filter(|s| !s.is_empty())?;
            Some((f[1].to_string(), Stats::of(samples, run)))
        })
        .collect();
    if rows.len() != 2 {
        return Err(format!("the child printed {} rows, not 2", rows.len()));
    }
    Ok(rows)
}

const CREATE: &str = "create + first resume + finish + drop (64 KiB stack)";

fn create_run_drop(report: &mut Report, plan: Plan, progress: &mut Progress) {
    let mut cases = create::cases();
    let stats = measure("create", &mut cases, plan, progress);
    for (case, s) in cases.iter().zip(stats) {
        report.push(Row::measured(CREATE, case.name.clone(), s));
    }
}

const WASM: &str = "Wasmtime call_async, new Store per call (2 MiB async stacks)";

#[cfg(feature = "wasmtime")]
fn wasmtime_rows(report: &mut Report, plan: Plan, progress: &mut Progress) {
    let mut cases = wasm::cases();
    let stats = measure("wasmtime", &mut cases, plan, progress);
    for (case, s) in cases.iter().zip(stats) {
        report.push(Row::measured(WASM, case.name.clone(), s));
    }
}

#[cfg(not(feature = "wasmtime"))]
fn wasmtime_rows(report: &mut Report, _: Plan, _: &mut Progress) {
    report.push(Row::pending(
        WASM,
        "all cases",
        "not built: run with --features wasmtime",
    ));
}

#[cfg(feature = "wasmtime")]
fn wasmtime_targets(report: &mut Report) {
    use wasm::{name, Stacks};
    for (target, ours, theirs, limit) in [
        (
            "Wasmtime: our pool / default stacks <= 0.15",
            name(Stacks::Ours, false),
            name(Stacks::Default, false),
            0.15,
        ),
        (
            "Wasmtime: our pool / pooling allocator <= 0.95",
            name(Stacks::Ours, false),
            name(Stacks::Pooling, false),
            0.95,
        ),
        (
            "Wasmtime: our pool / default stacks, both zeroing <= 0.20",
            name(Stacks::Ours, true),
            name(Stacks::Default, true),
            0.20,
        ),
    ] {
        let ratio = report.ratio_of(WASM, &ours, &theirs);
        report.targets.push(Target::at_most(target, ratio, limit));
    }
}

#[cfg(not(feature = "wasmtime"))]
fn wasmtime_targets(report: &mut Report) {
    for t in [
        "Wasmtime: our pool / default stacks <= 0.15",
        "Wasmtime: our pool / pooling allocator <= 0.95",
        "Wasmtime: our pool / default stacks, both zeroing <= 0.20",
    ] {
        report
            .targets
            .push(Target::pending(t, "needs --features wasmtime"));
    }
}

const GUARD: &str = "host-function guard, per call (16 KiB budget)";

fn guard_rows(report: &mut Report, plan: Plan, progress: &mut Progress) {
    let mut cases = guard::cases();
    let stats = measure("guard", &mut cases, plan, progress);
    for (case, s) in cases.iter().zip(stats) {
        report.push(Row::measured(GUARD, case.name.clone(), s));
    }
    report.note(
        GUARD,
        "the guarded closure adds 1 to a u64; Measure paints the 16 KiB budget on every call",
    );
}

/// The targets from DESIGN.md, each met, missed or not measured.
fn targets(report: &mut Report) {
    let ours = switch::label("stackswitch");
    let rt = report.ratio_of(RT, &ours, &switch::label("corosensei"));
    let fp_ctx = if cfg!(feature = "fp-control") {
        report.ratio_of(RT, &ours, &switch::label("context"))
    } else {
        report.ratio_of(
            RT,
            "stackswitch (fp-control) [child]",
            &format!("{} [child]", switch::label("context")),
        )
    };
    if cfg!(feature = "fp-control") {
        report.targets.push(Target::pending(
            "round trip / corosensei <= 0.95 (fp-control off)",
            "this build has fp-control; run without it",
        ));
    } else {
        report.targets.push(Target::at_most(
            "round trip / corosensei <= 0.95 (fp-control off)",
            rt,
            0.95,
        ));
    }
    report.targets.push(Target::at_most(
        "round trip with fp-control / context <= 1.00",
        fp_ctx,
        1.0,
    ));
    report.targets.push(Target::at_most(
        "create + run + drop on a pooled stack <= 10 ns (StackPool::local)",
        report.stats(CREATE, create::CASES[0].1).map(|s| s.median),
        10.0,
    ));
    wasmtime_targets(report);
    let off = report.stats(GUARD, guard::OFF).map(|s| s.median);
    let enforce = report.stats(GUARD, guard::ENFORCE).map(|s| s.median);
    report.targets.push(Target::at_most(
        "guard: Enforce - Off <= 5 ns per call (ns, in a fiber on a pool stack)",
        off.zip(enforce).map(|(off, on)| on - off),
        5.0,
    ));
}
