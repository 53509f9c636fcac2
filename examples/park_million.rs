//! Parks a million fibers, each suspended on its own guarded stack, then
//! resumes every one to completion; reports resident memory per parked
//! fiber, the number of memory mappings (VMAs), and how long each phase
//! took.
//!
//! ```text
//! cargo run --release --example park_million [-- COUNT [STACK_BYTES [mmap|pool]]]
//! STACKSWITCH_GUARD=mprotect cargo run --release --example park_million
//! ```
//!
//! `mmap` (the default) gives each fiber its own [`MmapStack`]; `pool` takes
//! every stack from one [`StackPool`] of `COUNT` slots (one reservation, a
//! guard installed per slot on first use).
//!
//! With guard markers (Linux 6.13+) a guard costs no mapping, and the
//! kernel merges neighbouring stacks into few VMAs. With the `mprotect`
//! fallback every stack costs two VMAs, so `vm.max_map_count` stops the run
//! near 32k stacks: the example then reports the limit it hit, resumes the
//! fibers it did make, and exits with status 2.

use std::time::{Duration, Instant};

use stackswitch::{
    Error, Fiber, FiberResult, GuardKind, MmapStack, PoolConfig, Stack, StackPool, Suspender,
    MIN_STACK_SIZE,
};

/// What one run measured.
#[derive(Debug)]
pub struct Report {
    /// Where the stacks came from: `"mmap"` or `"pool"`.
    pub source: &'static str,
    /// Fibers asked for.
    pub requested: usize,
    /// Fibers made and parked.
    pub parked: usize,
    /// The error that stopped creation early, if any.
    pub stopped_by: Option<Error>,
    /// The guard mechanism in use.
    pub guard: GuardKind,
    /// Usable bytes per stack.
    pub stack_size: usize,
    /// Resident bytes added per parked fiber (RSS while parked, less RSS
    /// before, over the count).
    pub resident_per_fiber: f64,
    /// Resident set while all fibers were parked, in bytes.
    pub resident_parked: u64,
    /// Memory mappings of the process while all fibers were parked.
    pub vmas_parked: usize,
    /// Memory mappings before and after the run.
    pub vmas_before: usize,
    /// Memory mappings after every fiber was dropped.
    pub vmas_after: usize,
    /// Time to create and park every fiber.
    pub park_time: Duration,
    /// Time to resume every fiber to completion and drop it.
    pub finish_time: Duration,
}

/// Resident set size of this process, in bytes.
fn resident() -> u64 {
    status_kib("VmRSS:") << 10
}

fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("a kB field in /proc/self/status")
}

/// Memory mappings of this process.
fn vmas() -> usize {
    let maps = std::fs::read("/proc/self/maps").expect("/proc/self/maps");
    maps.iter().filter(|&&b| b == b'\n').count()
}

/// Parks `count` fibers, each on its own [`MmapStack`] of `stack_size`
/// bytes, resumes them all to completion, and checks every value that
/// crossed a switch.
pub fn park(count: usize, stack_size: usize) -> Report {
    park_on("mmap", count, stack_size, || MmapStack::new(stack_size))
}

/// As [`park`], with every stack taken from one [`StackPool`] of `count`
/// slots (its reservation is counted in the memory figures).
pub fn park_pooled(count: usize, stack_size: usize) -> Report {
    let vmas_before = vmas();
    let rss_before = resident();
    let config = PoolConfig::default().stack_size(stack_size).capacity(count);
    let pool = match StackPool::new(config) {
        Ok(pool) => pool,
        Err(e) => {
            let mut report = park_on("pool", 0, stack_size, || MmapStack::new(stack_size));
            report.requested = count;
            report.stopped_by = Some(e);
            return report;
        }
    };
    let mut report = park_on("pool", count, stack_size, || pool.acquire());
    drop(pool);
    report.vmas_before = vmas_before;
    report.vmas_after = vmas();
    report.resident_per_fiber =
        report.resident_parked.saturating_sub(rss_before) as f64 / report.parked.max(1) as f64;
    report
}

/// Parks `count` fibers on stacks from `make`, then finishes them.
fn park_on<S: Stack>(
    source: &'static str,
    count: usize,
    stack_size: usize,
    mut make: impl FnMut() -> Result<S, Error>,
) -> Report {
    let vmas_before = vmas();
    // Room for the handles up front, so their growth is not counted.
    let mut fibers: Vec<Fiber<u64, u64, u64, S>> = Vec::with_capacity(count);
    let rss_before = resident();

    let start = Instant::now();
    let mut stopped_by = None;
    for i in 0..count as u64 {
        let fiber = make().and_then(|stack| {
            Fiber::with_stack(stack, |x: u64, s: &Suspender<u64, u64>| {
                let y = s.suspend(x.wrapping_mul(2));
                x ^ y
            })
        });
        match fiber {
            Ok(mut f) => {
                // Park it: it runs until its suspend.
                assert_eq!(f.resume(i), FiberResult::Yield(i.wrapping_mul(2)));
                fibers.push(f);
            }
            Err(e) => {
                stopped_by = Some(e);
                break;
            }
        }
    }
    let park_time = start.elapsed();
    let parked = fibers.len();
    let resident_parked = resident();
    let vmas_parked = vmas();

    let start = Instant::now();
    for (i, mut f) in fibers.drain(..).enumerate() {
        let i = i as u64;
        assert_eq!(f.resume(!i), FiberResult::Return(i ^ !i));
    }
    drop(fibers);
    let finish_time = start.elapsed();

    Report {
        source,
        requested: count,
        parked,
        stopped_by,
        guard: stackswitch::guard_kind(),
        stack_size,
        resident_per_fiber: resident_parked.saturating_sub(rss_before) as f64
            / parked.max(1) as f64,
        resident_parked,
        vmas_parked,
        vmas_before,
        vmas_after: vmas(),
        park_time,
        finish_time,
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "parked {} of {} fibers ({} KiB stacks from {}, guard via {:?})",
            self.parked,
            self.requested,
            self.stack_size >> 10,
            self.source,
            self.guard
        )?;
        if let Some(e) = &self.stopped_by {
            writeln!(f, "stopped early: {e}")?;
        }
        writeln!(
            f,
            "resident while parked: {:.2} GiB, {:.0} bytes per fiber",
            self.resident_parked as f64 / (1u64 << 30) as f64,
            self.resident_per_fiber
        )?;
        writeln!(
            f,
            "memory mappings: {} before, {} while parked, {} after",
            self.vmas_before, self.vmas_parked, self.vmas_after
        )?;
        write!(
            f,
            "create + park: {:.2?} ({:.0} ns per fiber); resume to completion + drop: {:.2?}",
            self.park_time,
            self.park_time.as_nanos() as f64 / self.parked.max(1) as f64,
            self.finish_time
        )
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count = args
        .next()
        .map(|a| a.parse().expect("COUNT must be a number"))
        .unwrap_or(1_000_000);
    let stack_size = args
        .next()
        .map(|a| a.parse().expect("STACK_BYTES must be a number"))
        .unwrap_or(MIN_STACK_SIZE);
    let report = match args.next().as_deref() {
        None | Some("mmap") => park(count, stack_size),
        Some("pool") => park_pooled(count, stack_size),
        Some(other) => panic!("stack source must be mmap or pool, not {other}"),
    };
    println!("{report}");
    if report.stopped_by.is_some() {
        std::process::exit(2);
    }
}
