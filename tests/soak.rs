//! Soak: many threads, each driving many fibers on stacks from shared
//! pools, through every way a fiber can live and end — run to completion,
//! suspended and dropped, panicked, fresh and dropped, moved to another
//! thread mid-run, recycled through `into_stack` — for a bounded number of
//! operations (a few seconds). At the end every stack is back in its pool
//! and the process has exactly the mappings it started with.
//!
//! The operations come from a seeded generator, so a failure repeats.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Once};

use stackswitch::{Fiber, FiberResult, PoolConfig, PooledStack, SendFiber, StackPool, Suspender};

const THREADS: usize = 8;
/// Fibers a thread keeps alive at once, at most.
const LIVE: usize = 32;

fn ops_per_thread() -> usize {
    // Valgrind and qemu-user (which runs the aarch64 tests in CI; this
    // process is then named after it) are both about 50x slower.
    let under_qemu =
        std::fs::read_to_string("/proc/self/comm").is_ok_and(|c| c.trim().starts_with("qemu-"));
    if stackswitch::valgrind::running_on_valgrind() || under_qemu {
        3_000
    } else {
        100_000
    }
}

/// Mappings of this process (lines of `/proc/self/maps`) that overlap any
/// of `ranges`; all of them if `ranges` is `None`.
fn map_count(ranges: Option<&[std::ops::Range<usize>]>) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    maps.lines()
        .filter(|line| {
            let Some(ranges) = ranges else { return true };
            let span = line.split_whitespace().next().unwrap_or("");
            let (lo, hi) = span.split_once('-').expect("start-end");
            let lo = usize::from_str_radix(lo, 16).unwrap();
            let hi = usize::from_str_radix(hi, 16).unwrap();
            ranges.iter().any(|r| lo < r.end && r.start < hi)
        })
        .count()
}

/// xorshift64*: a small seeded generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The payload of the panics the soak asks for.
struct SoakPanic(u64);

/// Counts values dropped on fiber stacks.
struct Tracked(Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

type SoakFiber = Fiber<u64, u64, u64, PooledStack>;

/// A fiber that yields `steps` values (`seed + i`), then returns, or panics
/// if `seed` is a multiple of 7; it keeps a tracked value and a buffer on
/// its stack, and recurses a little to use some of it.
fn soak_fiber(stack: PooledStack, seed: u64, drops: &Arc<AtomicUsize>) -> SoakFiber {
    let tracked = Tracked(drops.clone());
    Fiber::with_stack(stack, move |first: u64, s: &Suspender<u64, u64>| {
        let _t = tracked;
        let mut buf = [seed; 32];
        let steps = first % 5;
        for i in 0..steps {
            let back = s.suspend(seed.wrapping_add(i));
            assert_eq!(back, i, "input lost across a switch");
            assert_eq!(buf[(i % 32) as usize], seed, "stack corrupted");
            buf[0] = seed;
        }
        if seed % 7 == 0 {
            std::panic::panic_any(SoakPanic(seed));
        }
        depth(seed, 8)
    })
    .expect("stack fits a fiber")
}

#[inline(never)]
fn depth(x: u64, n: u32) -> u64 {
    let pad = std::hint::black_box([x; 16]);
    if n == 0 {
        pad[3]
    } else {
        depth(x, n - 1)
    }
}

struct Live {
    fiber: SoakFiber,
    seed: u64,
    /// Resumes made so far.
    step: u64,
    /// Yields it will make (the first input modulo 5).
    steps: u64,
}

fn silence_soak_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<SoakPanic>() {
                default(info);
            }
        }));
    });
}

/// One thread's share of `ops` operations: returns the fibers it made.
fn drive(pools: &[StackPool], seed: u64, drops: &Arc<AtomicUsize>, ops: usize) -> usize {
    let mut rng = Rng(seed | 1);
    let mut live: Vec<Live> = Vec::new();
    let mut made = 0usize;
    for _ in 0..ops {
        match rng.below(50) {
            // Make a fiber on a stack from a random pool (if it has one).
            0..=14 if live.len() < LIVE => {
                let pool = &pools[rng.below(pools.len())];
                let Ok(stack) = pool.acquire() else { continue };
                let seed = rng.next();
                live.push(Live {
                    fiber: soak_fiber(stack, seed, drops),
                    seed,
                    step: 0,
                    steps: 0,
                });
                made += 1;
            }
            // Resume one, checking what comes out.
            0..=34 if !live.is_empty() => {
                let i = rng.below(live.len());
                let l = &mut live[i];
                let input = if l.step == 0 {
                    let first = rng.next();
                    l.steps = first % 5;
                    first
                } else {
                    l.step - 1
                };
                let r = catch_unwind(AssertUnwindSafe(|| l.fiber.resume(input)));
                l.step += 1;
                match r {
                    Ok(FiberResult::Yield(y)) => {
                        assert!(l.step <= l.steps);
                        assert_eq!(y, l.seed.wrapping_add(l.step - 1));
                    }
                    Ok(FiberResult::Return(v)) => {
                        assert_eq!(l.step, l.steps + 1);
                        assert_ne!(l.seed % 7, 0);
                        assert_eq!(v, l.seed);
                        live.swap_remove(i);
                    }
                    Err(p) => {
                        assert_eq!(l.step, l.steps + 1);
                        assert_eq!(p.downcast::<SoakPanic>().ok().map(|p| p.0), Some(l.seed));
                        live.swap_remove(i);
                    }
                }
            }
            // Drop one, whatever its state.
            35..=39 if !live.is_empty() => {
                let i = rng.below(live.len());
                live.swap_remove(i);
            }
            // Finish one on another thread.
            40 if !live.is_empty() => {
                let l = live.swap_remove(rng.below(live.len()));
                finish_elsewhere(l);
            }
            // Recycle a fresh or suspended one's stack into a new fiber.
            _ if !live.is_empty() => {
                let i = rng.below(live.len());
                let l = live.swap_remove(i);
                let stack = l.fiber.into_stack().expect("panic = unwind");
                let seed = rng.next();
                live.push(Live {
                    fiber: soak_fiber(stack, seed, drops),
                    seed,
                    step: 0,
                    steps: 0,
                });
                made += 1;
            }
            _ => {}
        }
    }
    drop(live);
    made
}

/// Moves a fiber to a new thread and runs it to its end there.
fn finish_elsewhere(l: Live) {
    let Live {
        fiber,
        seed,
        mut step,
        steps,
    } = l;
    // SAFETY: the fiber's stack holds u64s, an Arc and a buffer, and no
    // fiber code keeps a thread-local's address.
    let mut fiber: SendFiber<_, _, _, _> = unsafe { fiber.into_send() };
    std::thread::spawn(move || loop {
        let input = if step == 0 { steps } else { step - 1 };
        let r = catch_unwind(AssertUnwindSafe(|| fiber.resume(input)));
        step += 1;
        match r {
            Ok(FiberResult::Yield(y)) => assert_eq!(y, seed.wrapping_add(step - 1)),
            Ok(FiberResult::Return(v)) => break assert_eq!(v, seed),
            Err(p) => break assert!(p.is::<SoakPanic>()),
        }
    })
    .join()
    .expect("fiber finished on another thread");
}

/// Runs the soak: `ops` operations on each of `THREADS` threads over two
/// fresh pools; checks every tracked value was dropped and every stack came
/// back, and that the pools' mappings are gone once they are dropped;
/// returns the fibers made.
fn soak(ops: usize) -> usize {
    let maps_before = map_count(None);
    let drops = Arc::new(AtomicUsize::new(0));
    // Two pools, one too small for every thread's fibers at once (so
    // exhaustion happens and is survived), one roomy.
    let pools = vec![
        StackPool::new(
            PoolConfig::default()
                .stack_size(32 << 10)
                .capacity(THREADS * LIVE / 4),
        )
        .unwrap(),
        StackPool::new(
            PoolConfig::default()
                .stack_size(64 << 10)
                .capacity(THREADS * LIVE),
        )
        .unwrap(),
    ];
    let barrier = Arc::new(Barrier::new(THREADS));
    let made: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (pools, drops, barrier) = (&pools, &drops, barrier.clone());
                s.spawn(move || {
                    barrier.wait();
                    drive(pools, 0x9e37_79b9_7f4a_7c15 ^ t as u64, drops, ops)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    // Every fiber's tracked value was dropped, whichever way it ended.
    assert_eq!(drops.load(Ordering::Relaxed), made);
    for pool in &pools {
        assert_eq!(pool.in_use(), 0, "{pool:?}");
    }
    let regions: Vec<_> = pools.iter().map(StackPool::region).collect();
    let while_alive = map_count(Some(&regions));
    assert!(while_alive >= 1, "the pools are not mapped?");
    drop(pools);
    // Nothing is left where the pools were...
    assert_eq!(map_count(Some(&regions)), 0, "pool mappings left behind");
    // ...and the process has the mappings it started with, give or take
    // what threads leave for reuse (malloc arenas, cached thread stacks),
    // which is printed rather than asserted: the threads' C library owns it.
    println!(
        "mappings: {maps_before} before, {} after; {while_alive} in the pools while alive",
        map_count(None)
    );
    made
}

#[test]
fn many_threads_many_fibers_all_stacks_come_back() {
    silence_soak_panics();
    let made = soak(ops_per_thread());
    println!("{made} fibers made by {THREADS} threads");
}
