//! Timing: every case of a group is calibrated, warmed up, then sampled in
//! rounds that visit the cases in turn, so noise from the rest of the
//! machine falls on all of them alike. A sample is one batch of operations;
//! its time per operation is what the statistics are taken over.

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
}

impl Plan {
    pub fn full() -> Self {
        Plan {
            batch: Duration::from_millis(20),
            samples: 15,
        }
    }

    pub fn quick() -> Self {
        Plan {
            batch: Duration::from_millis(2),
            samples: 5,
        }
    }
}

/// Nanoseconds per operation over the samples of one case.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(mut samples: Vec<f64>) -> Stats {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2.0
        };
        Stats {
            median,
            min: samples[0],
            max: samples[n - 1],
        }
    }
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

fn time(op: &mut Op, n: u64) -> Duration {
    let start = Instant::now();
    op(n);
    start.elapsed()
}

/// How many operations make one batch of about `plan.batch`.
fn calibrate(op: &mut Op, plan: Plan) -> u64 {
    let mut n = 1u64;
    loop {
        let t = time(op, n);
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
        for (i, case) in cases.iter_mut().enumerate() {
            let t = time(&mut case.op, sizes[i]);
            samples[i].push(t.as_nanos() as f64 / sizes[i] as f64);
        }
    }
    samples.into_iter().map(Stats::of).collect()
}
