//! Timing: every case of a group is calibrated, warmed up, then sampled in
//! rounds that visit the cases in turn (each round starting one case
//! later), so noise from the rest of the machine falls on all of them
//! alike. A sample is one batch of operations;
//! its time per operation is what the statistics are taken over. Batches
//! are short (1 ms, well under a scheduler time slice) and many, so that
//! most pairs of samples run undisturbed even on a busy machine.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Runs `n` operations of one case.
pub type Op = Box<dyn FnMut(u64)>;

/// How hard to measure.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Wall time one batch should take.
    pub batch: Duration,
    /// Batches measured per case, after one warm-up batch.
    pub samples: usize,
    /// How long to keep the CPU busy before the first measurement (see
    /// [`warm_up_machine`]).
    pub machine_warm_up: Duration,
}

impl Plan {
    pub fn full() -> Self {
        Plan {
            batch: Duration::from_millis(1),
            samples: 101,
            machine_warm_up: Duration::from_secs(3),
        }
    }

    pub fn quick() -> Self {
        Plan {
            batch: Duration::from_millis(1),
            samples: 15,
            machine_warm_up: Duration::from_millis(300),
        }
    }
}

/// Nanoseconds per operation over the samples of one case.
#[derive(Clone, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// The samples in round order: sample `i` of every case measured in
    /// the same run was taken in the same round, side by side.
    pub samples: Vec<f64>,
    /// Which call of `measure` (or child process) took them.
    pub run: u32,
}

/// The median of `v` (not empty).
pub fn median(v: &[f64]) -> f64 {
    assert!(!v.is_empty(), "no samples");
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Stats {
    pub fn of(samples: Vec<f64>, run: u32) -> Stats {
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Stats {
            median: median(&samples),
            min,
            max,
            samples,
            run,
        }
    }

    /// This case against `base` measured in the same run: the median of the
    /// per-round ratios, which cancels load that drifts between rounds.
    /// Across runs, the ratio of the medians.
    pub fn ratio_to(&self, base: &Stats) -> f64 {
        if self.run == base.run && self.samples.len() == base.samples.len() {
            let r: Vec<f64> = self
                .samples
                .iter()
                .zip(&base.samples)
                .map(|(a, b)| a / b)
                .collect();
            median(&r)
        } else {
            self.median / base.median
        }
    }
}

/// A new run id (see [`Stats::run`]).
pub fn next_run() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static RUN: AtomicU32 = AtomicU32::new(0);
    RUN.fetch_add(1, Ordering::Relaxed)
}

/// One case to measure: its name and the operation.
pub struct Case {
    pub name: String,
    pub op: Op,
}

impl Case {
    pub fn new(name: impl Into<String>, op: Op) -> Case {
        Case {
            name: name.into(),
            op,
        }
    }
}

/// The progress line on stderr: rewritten in place on a terminal, one line
/// per step otherwise (CI logs).
pub struct Progress {
    tty: bool,
    step: usize,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            step: 0,
        }
    }

    pub fn say(&mut self, what: &str) {
        self.step += 1;
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K[{:>2}] {what}", self.step);
        } else {
            let _ = writeln!(err, "[{:>2}] {what}", self.step);
        }
        let _ = err.flush();
    }

    pub fn done(&mut self) {
        if self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

/// Runs `op` in batches for `plan.machine_warm_up` before anything is
/// measured. Measured on this project's CI machine (a 2-core KVM guest):
/// the first second or two of a busy spell run switch loops about 1.5x
/// slower, for every crate alike, and the round trips, measured first,
/// would otherwise be taken in that state rather than the steady one.
pub fn warm_up_machine(op: &mut Op, plan: Plan, progress: &mut Progress) {
    progress.say("warming up the CPU");
    let start = Instant::now();
    while start.elapsed() < plan.machine_warm_up {
        op(10_000);
    }
}

fn time(op: &mut Op, n: u64) -> Duration {
    let start = Instant::now();
    op(n);
    start.elapsed()
}

/// How many operations make one batch of about `plan.batch`.
///
/// One untimed operation first: a case's first operation may do one-time
/// work (the guard's first call installs its signal handler; a fiber's
/// first resume commits stack pages). Timed alone, one slow first call
/// (130 µs, above `batch / 8`) made the guard's pool-stack case calibrate
/// to batches of 6 calls, whose fiber resume and clock reads then showed
/// as 100-300 ns "per call". Each size is also timed twice and the faster
/// kept, so one preemption cannot shrink the batches either.
fn calibrate(op: &mut Op, plan: Plan) -> u64 {
    op(1);
    let mut n = 1u64;
    loop {
        let t = time(op, n).min(time(op, n));
        if t >= plan.batch / 8 || n >= 1 << 40 {
            let per_op = t.as_secs_f64() / n as f64;
            let want = (plan.batch.as_secs_f64() / per_op.max(1e-12)) as u64;
            return want.clamp(1, 1 << 40);
        }
        n *= 4;
    }
}

/// Measures every case of one group side by side; returns the statistics in
/// the order of `cases`.
pub fn measure(group: &str, cases: &mut [Case], plan: Plan, progress: &mut Progress) -> Vec<Stats> {
    let mut sizes = Vec::with_capacity(cases.len());
    for case in cases.iter_mut() {
        progress.say(&format!("{group}: calibrating {}", case.name));
        let n = calibrate(&mut case.op, plan);
        // Warm-up: caches, branch predictors, lazily committed stack pages.
        time(&mut case.op, n);
        sizes.push(n);
    }
    let mut samples = vec![Vec::with_capacity(plan.samples); cases.len()];
    for round in 0..plan.samples {
        progress.say(&format!("{group}: round {}/{}", round + 1, plan.samples));
        // Each round starts one case later, so that no case always runs
        // right after the same other one (whose effect on caches,
        // predictors or the CPU's clock it would otherwise always inherit).
        let k = cases.len();
        for j in 0..k {
            let i = (round + j) % k;
            let t = time(&mut cases[i].op, sizes[i]);
            samples[i].push(t.as_nanos() as f64 / sizes[i] as f64);
        }
    }
    let run = next_run();
    samples.into_iter().map(|s| Stats::of(s, run)).collect()
}
