//! Memory per parked fiber: park N fibers with the smallest stack, each
//! suspended after touching only its first frames, and read the process's
//! resident set and mapping count before and after.

use stackswitch::{Fiber, FiberResult, PoolConfig, StackPool, Suspender, MIN_STACK_SIZE};

/// What parking `count` fibers cost.
#[derive(Clone, Debug)]
pub struct Parked {
    pub name: String,
    pub count: usize,
    pub stack_size: usize,
    pub rss_per_fiber: f64,
    pub maps_per_fiber: f64,
    /// How many such fibers fit, and what limits it.
    pub fit: u64,
    pub limit: &'static str,
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * stackswitch::page_size() as u64
}

fn map_count() -> u64 {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count() as u64)
        .unwrap_or(0)
}

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn mem_available() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn measure<T>(name: &str, count: usize, stack_size: usize, mut park: impl FnMut() -> T) -> Parked {
    let mut parked = Vec::with_capacity(count);
    let (rss0, maps0) = (rss_bytes(), map_count());
    for _ in 0..count {
        parked.push(park());
    }
    let (rss1, maps1) = (rss_bytes(), map_count());
    let rss_per_fiber = rss1.saturating_sub(rss0) as f64 / count as f64;
    let maps_per_fiber = maps1.saturating_sub(maps0) as f64 / count as f64;
    drop(parked);

    // The fit: the tightest of memory available, the mapping limit, and the
    // address space (47 bits of user space on x86_64 and aarch64 Linux).
    let by_memory = (mem_available() as f64 / rss_per_fiber.max(1.0)) as u64;
    let max_maps = read_number("/proc/sys/vm/max_map_count").unwrap_or(65_530);
    let by_maps = if maps_per_fiber > 0.001 {
        (max_maps.saturating_sub(maps1) as f64 / maps_per_fiber) as u64
    } else {
        u64::MAX
    };
    let by_space = (1u64 << 47) / (stack_size as u64 + stackswitch::page_size() as u64);
    let (fit, limit) = [
        (by_memory, "available memory"),
        (by_maps, "vm.max_map_count"),
        (by_space, "address space"),
    ]
    .into_iter()
    .min_by_key(|(n, _)| *n)
    .expect("three limits");
    Parked {
        name: name.to_string(),
        count,
        stack_size,
        rss_per_fiber,
        maps_per_fiber,
        fit,
        limit,
    }
}

/// Parks `count` fibers of each kind in turn (stackswitch on its own mmap'd
/// stacks and on a pool, corosensei), with the smallest stack stackswitch
/// accepts. The pool's region is mapped before the count starts.
pub fn run(count: usize) -> Vec<Parked> {
    let size = MIN_STACK_SIZE;
    let ours = measure("stackswitch", count, size, || {
        let mut f = Fiber::new(size, |x: u64, s: &Suspender<u64, u64>| {
            let _ = s.suspend(x);
        })
        .expect("fiber");
        assert!(matches!(f.resume(1), FiberResult::Yield(1)));
        f
    });
    let pool =
        StackPool::new(PoolConfig::default().stack_size(size).capacity(count)).expect("stack pool");
    let pooled = measure("stackswitch, StackPool", count, size, || {
        let stack = pool.acquire().expect("pool stack");
        let mut f = Fiber::with_stack(stack, |x: u64, s: &Suspender<u64, u64>| {
            let _ = s.suspend(x);
        })
        .expect("fiber");
        assert!(matches!(f.resume(1), FiberResult::Yield(1)));
        f
    });
    drop(pool);
    let coro = measure("corosensei 0.3", count, size, || {
        use corosensei::stack::DefaultStack;
        use corosensei::{Coroutine, Yielder};
        let stack = DefaultStack::new(size).expect("stack");
        let mut co = Coroutine::with_stack(stack, |y: &Yielder<u64, u64>, x: u64| {
            let _ = y.suspend(x);
        });
        assert!(co.resume(1).as_yield().is_some());
        co
    });
    vec![ours, pooled, coro]
}
