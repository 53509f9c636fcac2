//! The stack pool: slot arithmetic and lookups, reuse, zeroing, the
//! resident-memory policy, many threads, exhaustion, guard VMAs, and no
//! system call on a warm fiber.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

mod common;

use stackswitch::{
    locate, remaining_stack, Error, Fiber, FiberResult, GuardKind, PoolConfig, Stack, StackBounds,
    StackLocation, StackPool, Suspender,
};

fn page() -> usize {
    stackswitch::page_size()
}

/// VMAs of this process that overlap `range`, from `/proc/self/maps`.
fn vmas_in(range: std::ops::Range<usize>) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|line| {
            let span = line.split_whitespace().next().unwrap();
            let (lo, hi) = span.split_once('-').unwrap();
            let lo = usize::from_str_radix(lo, 16).unwrap();
            let hi = usize::from_str_radix(hi, 16).unwrap();
            lo < range.end && hi > range.start
        })
        .count()
}

/// Which pages of `addr..addr + len` are resident, from `mincore`.
fn resident_pages(addr: usize, len: usize) -> Vec<bool> {
    let mut vec = vec![0u8; len / page()];
    // SAFETY: addr..addr+len is page aligned and mapped (a pool slot); vec
    // has one byte per page.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().map(|v| v & 1 == 1).collect()
}

/// Writes `byte` over every usable byte of `stack`.
fn fill(stack: &impl Stack, byte: u8) {
    let b = stack.bounds();
    // SAFETY: low..high is the stack's memory; we hold the stack and no
    // fiber runs on it.
    unsafe { std::ptr::write_bytes(b.low as *mut u8, byte, b.size()) };
}

/// Whether every usable byte of `stack` is zero.
fn all_zero(stack: &impl Stack) -> bool {
    let b = stack.bounds();
    // SAFETY: as in `fill`; reading only.
    let bytes = unsafe { std::slice::from_raw_parts(b.low as *const u8, b.size()) };
    bytes.iter().all(|&x| x == 0)
}

#[test]
fn lookup_edges_of_pool_stacks() {
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(3)).unwrap();
    let region = pool.region();
    let first = pool.acquire().unwrap();
    let b = first.bounds();
    assert_eq!(b.size(), 64 << 10);
    assert_eq!(b.guard_size(), page());
    assert_eq!(b.low % page(), 0);
    assert_eq!(b.high % page(), 0);

    // First and last usable byte: this stack.
    assert_eq!(StackBounds::containing(b.low), Some(b));
    assert_eq!(StackBounds::containing(b.high - 1), Some(b));
    match locate(b.high - 1) {
        Some(StackLocation::PoolSlot {
            region_id,
            slot,
            bounds,
        }) => {
            assert_eq!(region_id, pool.id());
            assert_eq!(slot, first.slot());
            assert_eq!(bounds, b);
        }
        other => panic!("expected a pool slot, got {other:?}"),
    }
    // One below: the guard of the same slot.
    let below = StackBounds::containing(b.low - 1).unwrap();
    assert_eq!(below, b);
    assert!(below.in_guard(b.low - 1) && !below.contains(b.low - 1));
    // One above: the next slot's guard (slot + 1), or outside the region.
    match StackBounds::containing(b.high) {
        Some(next) => {
            assert_eq!(next.guard, b.high);
            assert!(next.in_guard(b.high));
            assert_eq!(Some(next), pool.slot_bounds(first.slot() + 1));
        }
        None => assert_eq!(b.high, region.end),
    }
    // The last slot's last byte, and the first byte after the region.
    let last = pool.slot_bounds(2).unwrap();
    assert_eq!(last.high, region.end);
    assert_eq!(StackBounds::containing(region.end - 1), Some(last));
    assert!(!matches!(
        locate(region.end),
        Some(StackLocation::PoolSlot { region_id, .. }) if region_id == pool.id()
    ));
    assert!(!matches!(
        locate(region.start - 1),
        Some(StackLocation::PoolSlot { region_id, .. }) if region_id == pool.id()
    ));
    // Outside every pool and every thread stack: heap memory.
    let heap = Box::new(0u64);
    assert_eq!(locate(&*heap as *const u64 as usize), None);

    // After the stack is returned, its slot is still the pool's: lookups
    // answer the same bounds.
    let slot = first.slot();
    drop(first);
    assert_eq!(pool.in_use(), 0);
    assert_eq!(
        locate(b.low),
        Some(StackLocation::PoolSlot {
            region_id: pool.id(),
            slot,
            bounds: b
        })
    );

    // Once the pool is gone, nothing answers for its region.
    drop(pool);
    assert!(!matches!(
        locate(b.low),
        Some(StackLocation::PoolSlot { .. })
    ));
}

/// The span of one last-level page table: `page / 8` entries of a page.
fn table_span() -> usize {
    page() * (page() / 8)
}

#[test]
fn big_stacks_are_laid_out_on_page_table_boundaries() {
    const K: usize = 1 << 10;
    let span = table_span();
    let size = span; // 2 MiB with 4 KiB pages
    let pool = StackPool::new(
        PoolConfig::default()
            .stack_size(size)
            .resident(64 * K)
            .capacity(3),
    )
    .unwrap();
    // The part below the 64 KiB kept resident is one whole page table; the
    // slot is whole page tables, the rest of it guard.
    assert_eq!(pool.stack_size(), size + 64 * K);
    assert_eq!(pool.slot_size() % span, 0);
    assert_eq!(pool.guard_size(), pool.slot_size() - pool.stack_size());
    assert!(pool.guard_size() >= page());
    let stacks: Vec<_> = (0..3).map(|_| pool.acquire().unwrap()).collect();
    for stack in &stacks {
        let b = stack.bounds();
        assert_eq!(b.low % span, 0, "{b:?}");
        assert_eq!((b.high - 64 * K) % span, 0, "{b:?}");
        assert_eq!(b.size(), pool.stack_size());
        // Lookups agree, at both ends and in the guard.
        assert_eq!(StackBounds::containing(b.low), Some(b));
        assert_eq!(StackBounds::containing(b.high - 1), Some(b));
        assert!(StackBounds::containing(b.low - 1)
            .unwrap()
            .in_guard(b.low - 1));
        assert_eq!(StackBounds::containing(b.guard), Some(b));
        // The whole stack is usable (its guard faults: see
        // touching_a_slot_guard_faults_with_markers_and_with_mprotect).
        fill(stack, 0xa5);
    }
    let region = pool.region();
    assert_eq!(region.len(), 3 * pool.slot_size());
    assert_eq!((region.start + pool.guard_size()) % span, 0);
    drop(stacks);

    // The same stack size laid out plainly where the aligned layout does
    // not apply: everything kept resident, nothing kept, or a stack too
    // small for the rounding to stay within an eighth of it.
    for config in [
        PoolConfig::default().stack_size(size).resident(size),
        PoolConfig::default().stack_size(size).resident(0),
        PoolConfig::default().stack_size(size / 2).resident(64 * K),
        PoolConfig::default().stack_size(size).resident(size / 2),
    ] {
        let pool = StackPool::new(config.clone().capacity(2)).unwrap();
        assert_eq!(pool.stack_size(), config.get_stack_size(), "{config:?}");
        assert_eq!(pool.guard_size(), page(), "{config:?}");
    }
}

#[test]
fn fiber_on_a_pooled_stack_knows_where_it_is() {
    let pool = StackPool::new(PoolConfig::default().stack_size(128 << 10).capacity(4)).unwrap();
    let stack = pool.acquire().unwrap();
    let expected = stack.bounds();
    let (id, slot) = (pool.id(), stack.slot());
    let mut fiber = Fiber::with_stack(stack, move |_: (), _: &Suspender<(), ()>| {
        let here = StackBounds::current().unwrap();
        let left = remaining_stack().unwrap();
        let loc = locate(&here as *const _ as usize).unwrap();
        (here, left, loc)
    })
    .unwrap();
    let (here, left, loc) = fiber.resume(()).returned().unwrap();
    assert_eq!(here, expected);
    assert!(left > 100 << 10 && left < 128 << 10, "{left} bytes left");
    assert_eq!(
        loc,
        StackLocation::PoolSlot {
            region_id: id,
            slot,
            bounds: expected
        }
    );
    assert_eq!(pool.in_use(), 1);
    drop(fiber);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn a_returned_stack_comes_back() {
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(8)).unwrap();
    let a = pool.acquire().unwrap();
    let b = pool.acquire().unwrap();
    assert_ne!(a.slot(), b.slot());
    let (slot_a, bounds_a) = (a.slot(), a.bounds());
    drop(a);
    // The most recently returned slot is handed out first.
    let again = pool.acquire().unwrap();
    assert_eq!((again.slot(), again.bounds()), (slot_a, bounds_a));
    // A fiber returns its stack when it is dropped, and into_stack hands
    // it back to the caller instead.
    drop(again);
    let fiber = Fiber::with_stack(pool.acquire().unwrap(), |x: u8, _: &Suspender<u8, ()>| x);
    let mut fiber = fiber.unwrap();
    assert_eq!(fiber.resume(7), FiberResult::Return(7));
    let stack = fiber.into_stack().unwrap();
    assert_eq!(stack.slot(), slot_a);
    assert_eq!(pool.in_use(), 2);
    drop((stack, b));
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn zeroed_acquire_reads_as_zeros() {
    let pool = StackPool::new(
        PoolConfig::default()
            .stack_size(256 << 10)
            .resident(64 << 10)
            .capacity(1),
    )
    .unwrap();
    let stack = pool.acquire().unwrap();
    let slot = stack.slot();
    fill(&stack, 0xab);
    drop(stack);
    // A plain acquire gets the dirty stack back as it was left...
    let stack = pool.acquire().unwrap();
    assert_eq!(stack.slot(), slot);
    let b = stack.bounds();
    // SAFETY: a byte in the middle of the stack we hold.
    assert_eq!(unsafe { *((b.high - (8 << 10)) as *const u8) }, 0xab);
    fill(&stack, 0xcd);
    drop(stack);
    // ...a zeroed one gets every byte zero, resident part and beyond.
    let stack = pool.acquire_zeroed().unwrap();
    assert_eq!(stack.slot(), slot);
    assert!(all_zero(&stack));
    // Dirty it again as a zeroed user: it is zeroed on return, and the
    // next zeroed acquire finds it clean.
    fill(&stack, 0xef);
    drop(stack);
    let stack = pool.acquire_zeroed().unwrap();
    assert_eq!(stack.slot(), slot);
    assert!(all_zero(&stack));
}

#[test]
fn zeroed_stacks_released_together_read_as_zeros() {
    // Zeroed stacks coming back wait for their deep pages to be released
    // many at a time; every one handed out zeroed again reads as zeros,
    // near the top and deep down.
    const N: usize = 12;
    let size = 256 << 10;
    let pool = StackPool::new(PoolConfig::default().stack_size(size).capacity(N)).unwrap();
    for round in 0..3 {
        let stacks: Vec<_> = (0..N).map(|_| pool.acquire_zeroed().unwrap()).collect();
        for (i, stack) in stacks.iter().enumerate() {
            assert!(all_zero(stack), "round {round}, slot {}", stack.slot());
            dirty_at(stack, &[1 + i, 5000 + i * 64, 100 << 10, size - i]);
        }
        assert_eq!(pool.in_use(), N);
        drop(stacks);
        assert_eq!(pool.in_use(), 0);
    }
    // A plain acquire may take a stack whose deep pages are still to be
    // released; a zeroed acquire after it still gets zeros.
    let plain = pool.acquire().unwrap();
    dirty_at(&plain, &[1, 100 << 10]);
    drop(plain);
    let all: Vec<_> = (0..N).map(|_| pool.acquire_zeroed().unwrap()).collect();
    assert!(all.iter().all(all_zero));
}

#[test]
fn zero_on_return_clears_every_returned_stack() {
    let pool = StackPool::new(
        PoolConfig::default()
            .stack_size(128 << 10)
            .zero_on_return(true)
            .capacity(1),
    )
    .unwrap();
    let stack = pool.acquire().unwrap();
    let slot = stack.slot();
    fill(&stack, 0x5a);
    drop(stack);
    let stack = pool.acquire().unwrap();
    assert_eq!(stack.slot(), slot);
    assert!(all_zero(&stack));
    // A fiber's leftovers too.
    let mut fiber = Fiber::with_stack(stack, |_: (), _: &Suspender<(), ()>| {
        let buf = std::hint::black_box([0x77u8; 8192]);
        buf[100]
    })
    .unwrap();
    assert_eq!(fiber.resume(()), FiberResult::Return(0x77));
    drop(fiber);
    let stack = pool.acquire().unwrap();
    assert_eq!(stack.slot(), slot);
    assert!(all_zero(&stack));
}

/// Writes 0xa5 at each of `offsets` (bytes below the top) of `stack`.
fn dirty_at(stack: &impl Stack, offsets: &[usize]) {
    let b = stack.bounds();
    for &off in offsets {
        // SAFETY: high - off is in low..high of the stack we hold (off is
        // 1..=size); no fiber runs on it.
        unsafe { ((b.high - off) as *mut u8).write_volatile(0xa5) };
    }
}

/// The bytes at `offsets` below the top of `stack`.
fn read_at(stack: &impl Stack, offsets: &[usize]) -> Vec<u8> {
    let b = stack.bounds();
    offsets
        .iter()
        // SAFETY: as in `dirty_at`, reading.
        .map(|&off| unsafe { ((b.high - off) as *const u8).read_volatile() })
        .collect()
}

#[test]
fn zeroing_misses_no_dirty_byte_at_any_depth() {
    zeroing_is_exact(256 << 10);
}

/// The same on a big stack, which the pool lays out aligned to page tables.
#[test]
fn zeroing_misses_no_dirty_byte_at_any_depth_of_a_big_stack() {
    zeroing_is_exact(2 << 20);
}

/// Zeroed acquires read every byte that earlier uses dirtied, at any depth,
/// back as zero, on a one-slot pool of `size`-byte stacks keeping 64 KiB.
fn zeroing_is_exact(size: usize) {
    const K: usize = 1 << 10;
    let pool = StackPool::new(
        PoolConfig::default()
            .stack_size(size)
            .resident(64 * K)
            .capacity(1),
    )
    .unwrap();
    // The stack may be larger than asked (the aligned layout of big
    // stacks): dirty the whole of it.
    let size = pool.stack_size();
    let p = page();
    // Each use dirties single bytes (offsets below the top) and leaves the
    // pages between them untouched; the next zeroed acquire must read
    // every one of them back as 0. Reading only those bytes keeps the
    // untouched pages untouched (not even mapped to the zero page).
    let mut uses: Vec<Vec<usize>> = vec![
        vec![100],
        // Far below the resident part, pages never touched in between.
        vec![100, 200 * K],
        // The lowest byte of the stack, and the first page below the top.
        vec![size, p + 1],
        // In the resident part but below a one- or two-page window.
        vec![40 * K],
        // Just below and just above the resident limit.
        vec![64 * K + 1, 64 * K],
        // Only deep: nothing near the top at all.
        vec![128 * K + 7],
    ];
    // One byte in every page, one page per use, the in-page offset moving.
    for k in 0..size / p {
        uses.push(vec![k * p + 1 + (k * 97) % (p - 1)]);
    }
    // A use that fills 48 KiB from the top (the window grows to the
    // resident limit), then single bytes inside, at the bottom of, and
    // below the grown window.
    let mut deep_use: Vec<usize> = (1..=48 * K).collect();
    uses.push(std::mem::take(&mut deep_use));
    uses.extend([
        vec![30 * K],
        vec![48 * K],
        vec![64 * K],
        vec![64 * K + p],
        vec![1],
    ]);

    let first = pool.acquire_zeroed().unwrap();
    let slot = first.slot();
    assert!(all_zero(&first));
    drop(first);
    let mut previous: Vec<usize> = Vec::new();
    for (i, now) in uses.iter().enumerate() {
        let stack = pool.acquire_zeroed().unwrap();
        assert_eq!(stack.slot(), slot);
        let left = read_at(&stack, &previous);
        assert!(
            left.iter().all(|&x| x == 0),
            "use {i}: a byte dirtied by use {} survived the zeroing: offsets {previous:?} read {left:?}",
            i.saturating_sub(1)
        );
        dirty_at(&stack, now);
        previous = now.clone();
        drop(stack);
    }
    let stack = pool.acquire_zeroed().unwrap();
    assert!(all_zero(&stack));

    // A plain user's leftovers, sparse: the zeroed acquire after it must
    // find them too.
    drop(stack);
    let stack = pool.acquire().unwrap();
    let plain = [1, 20 * K, 63 * K, 64 * K + 1, 100 * K, size];
    dirty_at(&stack, &plain);
    drop(stack);
    let stack = pool.acquire_zeroed().unwrap();
    assert_eq!(read_at(&stack, &plain), vec![0; plain.len()]);
    assert!(all_zero(&stack));
}

#[test]
fn zeroed_stacks_keep_resident_what_their_uses_need() {
    const K: usize = 1 << 10;
    let size = 256 * K;
    let pool = StackPool::new(
        PoolConfig::default()
            .stack_size(size)
            .resident(64 * K)
            .capacity(1),
    )
    .unwrap();
    let p = page();
    let stack = pool.acquire_zeroed().unwrap();
    let b = stack.bounds();
    drop(stack);
    // Shallow uses: the pages below the top two are released, whatever
    // the resident limit.
    for _ in 0..4 {
        let stack = pool.acquire_zeroed().unwrap();
        dirty_at(&stack, &[8, 900]);
        drop(stack);
    }
    assert!(resident_pages(b.low, b.size() - 2 * p).iter().all(|&r| !r));
    // Uses 40 KiB deep: the window grows, the pages they use stay resident
    // (no page faults next time), nothing below the resident limit does.
    for _ in 0..8 {
        let stack = pool.acquire_zeroed().unwrap();
        // SAFETY: the top 40 KiB of the stack we hold.
        unsafe { std::ptr::write_bytes((b.high - 40 * K) as *mut u8, 3, 40 * K) };
        drop(stack);
    }
    assert!(resident_pages(b.high - 40 * K, 40 * K).iter().all(|&r| r));
    assert!(resident_pages(b.low, size - 64 * K).iter().all(|&r| !r));
    let stack = pool.acquire_zeroed().unwrap();
    assert!(all_zero(&stack));
}

#[test]
fn resident_limit_is_kept_on_return() {
    let size = 256 << 10;
    let keep = 64 << 10;
    let pool = StackPool::new(
        PoolConfig::default()
            .stack_size(size)
            .resident(keep)
            .capacity(2),
    )
    .unwrap();
    let stack = pool.acquire().unwrap();
    let b = stack.bounds();
    let limit = b.high - keep;
    // Use the whole stack: every page becomes resident.
    fill(&stack, 1);
    assert!(resident_pages(b.low, b.size()).iter().all(|&r| r));
    drop(stack);
    // Deeper than the limit: pages below it are released, those above kept.
    assert!(resident_pages(b.low, limit - b.low).iter().all(|&r| !r));
    assert!(resident_pages(limit, keep).iter().all(|&r| r));

    // A shallow use keeps everything as it was: nothing below the limit
    // comes back, the resident part stays resident.
    let stack = pool.acquire().unwrap();
    assert_eq!(stack.bounds(), b);
    // SAFETY: the top 16 KiB of the stack we hold.
    unsafe { std::ptr::write_bytes((b.high - (16 << 10)) as *mut u8, 2, 16 << 10) };
    drop(stack);
    assert!(resident_pages(b.low, limit - b.low).iter().all(|&r| !r));
    assert!(resident_pages(limit, keep).iter().all(|&r| r));

    // A fiber recursing deeper than the limit trips the canaries too.
    #[inline(never)]
    fn deep(until: usize) -> usize {
        let buf = std::hint::black_box([7u8; 256]);
        if (&buf as *const _ as usize) < until {
            0
        } else {
            deep(until) + buf[3] as usize
        }
    }
    let until = limit - (32 << 10);
    let mut fiber = Fiber::with_stack(
        pool.acquire().unwrap(),
        move |_: (), _: &Suspender<_, ()>| deep(until),
    )
    .unwrap();
    assert!(fiber.resume(()).returned().is_some());
    assert!(resident_pages(b.low, limit - b.low).iter().any(|&r| r));
    drop(fiber);
    assert!(resident_pages(b.low, limit - b.low).iter().all(|&r| !r));
    assert!(resident_pages(limit, keep).iter().all(|&r| r));
}

#[test]
fn resident_zero_releases_everything_and_full_keeps_everything() {
    let none = StackPool::new(PoolConfig::default().stack_size(64 << 10).resident(0)).unwrap();
    let stack = none.acquire().unwrap();
    let b = stack.bounds();
    fill(&stack, 3);
    drop(stack);
    assert!(resident_pages(b.low, b.size()).iter().all(|&r| !r));

    let all = StackPool::new(
        PoolConfig::default()
            .stack_size(64 << 10)
            .resident(usize::MAX),
    )
    .unwrap();
    let stack = all.acquire().unwrap();
    let b = stack.bounds();
    fill(&stack, 3);
    drop(stack);
    assert!(resident_pages(b.low, b.size()).iter().all(|&r| r));
}

#[test]
fn many_threads_acquire_and_release_at_once() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 5_000;
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(12)).unwrap();
    // One flag per slot: set while some thread holds it.
    let held: Arc<Vec<AtomicBool>> = Arc::new((0..12).map(|_| AtomicBool::new(false)).collect());
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (pool, held, start) = (pool.clone(), held.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut exhausted = 0;
                for i in 0..ROUNDS {
                    // Hold one or two stacks at a time; 8 threads * 2 > 12
                    // slots, so exhaustion happens and must be an Err.
                    let n = 1 + (i + t) % 2;
                    let mut mine = Vec::new();
                    for _ in 0..n {
                        match pool.acquire() {
                            Ok(s) => {
                                let was = held[s.slot()].swap(true, Ordering::AcqRel);
                                assert!(!was, "slot {} handed out twice", s.slot());
                                mine.push(s);
                            }
                            Err(Error::PoolExhausted { capacity: 12 }) => exhausted += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    for s in mine {
                        held[s.slot()].store(false, Ordering::Release);
                        drop(s);
                    }
                }
                exhausted
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(pool.in_use(), 0);
    // Every slot is free again: all 12 can be taken at once.
    let all: Vec<_> = (0..12).map(|_| pool.acquire().unwrap()).collect();
    let mut slots: Vec<_> = all.iter().map(|s| s.slot()).collect();
    slots.sort();
    assert_eq!(slots, (0..12).collect::<Vec<_>>());
}

#[test]
fn exhaustion_is_an_error_and_the_pool_recovers() {
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(4)).unwrap();
    let mut held: Vec<_> = (0..4).map(|_| pool.acquire().unwrap()).collect();
    assert_eq!(pool.in_use(), 4);
    let err = pool.acquire().unwrap_err();
    assert!(matches!(err, Error::PoolExhausted { capacity: 4 }));
    assert_eq!(
        err.to_string(),
        "stack pool exhausted: all 4 stacks are in use"
    );
    assert!(pool.acquire_zeroed().is_err());
    let freed = held.pop().unwrap().slot();
    let again = pool.acquire().unwrap();
    assert_eq!(again.slot(), freed);
    assert_eq!(pool.in_use(), 4);
    drop((held, again));
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn a_stack_outlives_its_pool() {
    // Whether a region is unmapped can only be read from /proc/self/maps
    // with nothing else mapping memory at the same time: the checks run in
    // a child process with one test thread.
    if !common::in_child(
        "a_stack_outlives_its_pool",
        "STACKSWITCH_POOL_OUTLIVES_CHILD",
    ) {
        return;
    }
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(2)).unwrap();
    let region = pool.region();
    let stack = pool.acquire().unwrap();
    let b = stack.bounds();
    drop(pool);
    // The region is still mapped and registered while the stack lives.
    assert!(vmas_in(region.clone()) > 0);
    let mut fiber =
        Fiber::with_stack(stack, |_: (), _: &Suspender<(), ()>| StackBounds::current()).unwrap();
    assert_eq!(fiber.resume(()), FiberResult::Return(Some(b)));
    drop(fiber);
    // The last handle withdrew it from the lookup table and unmapped it.
    assert_eq!(
        vmas_in(region),
        0,
        "the dropped pool's region is still mapped"
    );
    assert!(!matches!(
        locate(b.low),
        Some(StackLocation::PoolSlot { .. })
    ));

    // Stacks returned while the pool lived sit parked in per-thread cells
    // (this thread's and other threads'); the last handle going unmaps the
    // region all the same.
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(8)).unwrap();
    let region = pool.region();
    drop(pool.acquire().unwrap());
    let remote = pool.clone();
    std::thread::spawn(move || {
        let held: Vec<_> = (0..3).map(|_| remote.acquire().unwrap()).collect();
        drop(held);
    })
    .join()
    .unwrap();
    assert_eq!(pool.in_use(), 0);
    assert!(vmas_in(region.clone()) > 0);
    drop(pool);
    assert_eq!(vmas_in(region), 0, "parked stacks kept the region mapped");

    // The last handle going while other threads return their stacks at
    // the same moment: whichever order they meet in, the region goes with
    // the last of them.
    for round in 0..50 {
        let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(8)).unwrap();
        let region = pool.region();
        let start = Arc::new(Barrier::new(5));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stacks: Vec<_> = (0..2).map(|_| pool.acquire().unwrap()).collect();
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    drop(stacks);
                })
            })
            .collect();
        start.wait();
        drop(pool);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            vmas_in(region),
            0,
            "round {round}: the region is still mapped"
        );
    }
}

#[test]
fn bad_configurations_name_the_numbers() {
    let err = StackPool::new(PoolConfig::default().capacity(0)).unwrap_err();
    assert!(err.to_string().contains("capacity 0"), "{err}");
    let err = StackPool::new(PoolConfig::default().stack_size(0)).unwrap_err();
    assert!(err.to_string().contains("stack size 0"), "{err}");
    let err = StackPool::new(PoolConfig::default().guard_size(0)).unwrap_err();
    assert!(err.to_string().contains("guard size 0"), "{err}");
    let err = StackPool::new(PoolConfig::default().stack_size(usize::MAX)).unwrap_err();
    assert!(matches!(err, Error::StackTooLarge { .. }), "{err}");
    let err =
        StackPool::new(PoolConfig::default().stack_size(1 << 30).capacity(1 << 20)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("1048576 slots") && msg.contains("bytes"),
        "{msg}"
    );
    let err = StackPool::new(PoolConfig::default().capacity(usize::MAX)).unwrap_err();
    assert!(err.to_string().contains(&usize::MAX.to_string()), "{err}");
}

#[test]
fn pool_vma_count_does_not_grow_with_stacks_when_guards_are_markers() {
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(256)).unwrap();
    let one = pool.acquire().unwrap();
    let with_one = vmas_in(pool.region());
    let rest: Vec<_> = (1..256).map(|_| pool.acquire().unwrap()).collect();
    let with_all = vmas_in(pool.region());
    match pool.guard_kind() {
        // Markers live in the page tables: the region stays one mapping.
        GuardKind::Markers => {
            assert_eq!(with_one, 1);
            assert_eq!(with_all, 1);
        }
        // A kernel without markers: each guard splits the mapping.
        GuardKind::Mprotect => assert_eq!(with_all, 2 * 256),
    }
    drop((one, rest));
}

#[test]
fn mprotect_guards_cost_two_vmas_per_stack() {
    let out = common::run_ignored_child(
        "mprotect_guard_vmas_in_child",
        &[("STACKSWITCH_GUARD", "mprotect")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 test passed") || stdout.contains("test result: ok. 1 passed"));
}

#[test]
#[ignore = "run in a child process with STACKSWITCH_GUARD=mprotect by mprotect_guards_cost_two_vmas_per_stack"]
fn mprotect_guard_vmas_in_child() {
    assert_eq!(
        std::env::var("STACKSWITCH_GUARD").as_deref(),
        Ok("mprotect")
    );
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(64)).unwrap();
    assert_eq!(pool.guard_kind(), GuardKind::Mprotect);
    let held: Vec<_> = (0..64).map(|_| pool.acquire().unwrap()).collect();
    // Guard (PROT_NONE) and stack (read-write) alternate: two per stack.
    assert_eq!(vmas_in(pool.region()), 2 * 64);
    // The guard still faults where expected: lookups say it is the guard.
    let b = held[10].bounds();
    assert!(StackBounds::containing(b.low - 1)
        .unwrap()
        .in_guard(b.low - 1));
}

#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "aarch64 runs under qemu-user, which does not emulate seccomp (PR_SET_SECCOMP: EINVAL)"
)]
fn warm_fiber_makes_no_system_call() {
    let out = common::run_ignored_child("warm_fiber_under_seccomp_in_child", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("no memory system call in 10000 warm fibers"),
        "child did not finish: {} (SIGSYS = 31 means a forbidden call)\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills the process on `mmap`, `munmap`, `mprotect`, `madvise`, `mremap`
/// or `brk` made by the calling thread.
fn forbid_memory_syscalls() {
    use libc::sock_filter;
    const LD_NR: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let forbidden = [
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_mremap,
        libc::SYS_brk,
    ];
    // Load the syscall number (offset 0 of seccomp_data); for each
    // forbidden number jump to the kill at the end; else allow.
    let n = forbidden.len() as u8;
    let mut prog = vec![sock_filter {
        code: LD_NR,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    for (i, nr) in forbidden.iter().enumerate() {
        prog.push(sock_filter {
            code: JEQ,
            jt: n - i as u8, // over the rest and the allow, to the kill
            jf: 0,
            k: *nr as u32,
        });
    }
    prog.push(sock_filter {
        code: RET,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    });
    prog.push(sock_filter {
        code: RET,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_KILL_PROCESS,
    });
    install_seccomp(&mut prog);
}

#[test]
#[ignore = "run in a child process by warm_fiber_makes_no_system_call (installs a seccomp filter)"]
fn warm_fiber_under_seccomp_in_child() {
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(4)).unwrap();
    let run = |pool: &StackPool, x: u64| {
        let mut fiber =
            Fiber::with_stack(pool.acquire().unwrap(), |x: u64, _: &Suspender<u64, ()>| {
                x + 1
            })
            .unwrap();
        fiber.resume(x).returned().unwrap()
    };
    // The same on a stack from this thread's LocalPool handle.
    let local = pool.local();
    let run_local = |x: u64| {
        let mut fiber = Fiber::with_stack(
            local.acquire().unwrap(),
            |x: u64, _: &Suspender<u64, ()>| x + 1,
        )
        .unwrap();
        fiber.resume(x).returned().unwrap()
    };
    // Warm the slots: guards installed, canaries written.
    for i in 0..10 {
        assert_eq!(run(&pool, i), i + 1);
        assert_eq!(run_local(i), i + 1);
    }
    forbid_memory_syscalls();
    let mut sum = 0;
    for i in 0..5_000 {
        sum += run(&pool, i) + run_local(i);
    }
    assert_eq!(sum, 2 * (1..=5_000).sum::<u64>());
    let msg = b"no memory system call in 10000 warm fibers\n";
    // SAFETY: writing a buffer we own to stdout.
    unsafe { libc::write(1, msg.as_ptr().cast(), msg.len()) };
    // Leave now: the test harness's own teardown would unmap memory.
    // SAFETY: ends the process; nothing needs to run after this.
    unsafe { libc::_exit(0) };
}

#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "aarch64 runs under qemu-user, which does not emulate seccomp (PR_SET_SECCOMP: EINVAL)"
)]
fn zeroing_is_exact_without_process_madvise() {
    let out = common::run_ignored_child("zeroing_without_process_madvise_in_child", &[]);
    common::assert_child_passed(&out);
}

/// Makes `process_madvise` fail with `ENOSYS` for this process, as on a
/// kernel without it.
fn refuse_process_madvise() {
    use libc::sock_filter;
    const LD_NR: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let mut prog = [
        // The syscall number; process_madvise: to the refusal, else allow.
        sock_filter {
            code: LD_NR,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: JEQ,
            jt: 1,
            jf: 0,
            k: libc::SYS_process_madvise as u32,
        },
        sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
        sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
    ];
    install_seccomp(&mut prog);
}

#[test]
#[ignore = "run in a child process by zeroing_is_exact_without_process_madvise (installs a seccomp filter)"]
fn zeroing_without_process_madvise_in_child() {
    refuse_process_madvise();
    // The batches of returned zeroed stacks fall back to one madvise per
    // stack: still every byte zero, deep and near the top.
    const N: usize = 6;
    let size = 256 << 10;
    let pool = StackPool::new(PoolConfig::default().stack_size(size).capacity(N)).unwrap();
    for _ in 0..3 {
        let stacks: Vec<_> = (0..N).map(|_| pool.acquire_zeroed().unwrap()).collect();
        assert!(stacks.iter().all(all_zero));
        for (i, stack) in stacks.iter().enumerate() {
            dirty_at(stack, &[1 + i, 9000, 150 << 10, size]);
        }
    }
    let stacks: Vec<_> = (0..N).map(|_| pool.acquire_zeroed().unwrap()).collect();
    assert!(stacks.iter().all(all_zero));
}

#[test]
fn trim_releases_what_the_canaries_missed() {
    let keep = 64 << 10;
    let pool = StackPool::new(
        PoolConfig::default()
            .stack_size(256 << 10)
            .resident(keep)
            .capacity(2),
    )
    .unwrap();
    let stack = pool.acquire().unwrap();
    let b = stack.bounds();
    let limit = b.high - keep;
    // Dirty the deep part only, skipping the canary page just above the
    // limit: the heuristic cannot see it.
    // SAFETY: low..limit of the stack we hold.
    unsafe { std::ptr::write_bytes(b.low as *mut u8, 9, limit - b.low) };
    drop(stack);
    assert!(resident_pages(b.low, limit - b.low).iter().all(|&r| r));
    assert_eq!(pool.trim(), 1);
    assert!(resident_pages(b.low, limit - b.low).iter().all(|&r| !r));
    // The slot still works and comes back first.
    let again = pool.acquire().unwrap();
    assert_eq!(again.bounds(), b);
}

/// Which guard byte `touch_guard_in_child` writes: of a plain or an
/// aligned (big-stack) pool, just below the stack or at the guard's
/// lowest byte.
const TOUCH_ENV: &str = "STACKSWITCH_TEST_TOUCH";

#[test]
fn touching_a_slot_guard_faults_with_markers_and_with_mprotect() {
    use std::os::unix::process::ExitStatusExt;
    for touch in ["plain", "aligned-top", "aligned-bottom"] {
        for guard in [None, Some("mprotect")] {
            let mut env = vec![(TOUCH_ENV, touch)];
            env.extend(guard.map(|g| ("STACKSWITCH_GUARD", g)));
            let out = common::run_ignored_child("touch_guard_in_child", &env);
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGSEGV),
                "{touch} guard byte, guards by {}",
                guard.unwrap_or("default")
            );
        }
    }
}

#[test]
#[ignore = "run in a child process by touching_a_slot_guard_faults_with_markers_and_with_mprotect"]
fn touch_guard_in_child() {
    let touch = std::env::var(TOUCH_ENV).unwrap_or_default();
    let size = if touch == "plain" { 64 << 10 } else { 2 << 20 };
    let pool = StackPool::new(PoolConfig::default().stack_size(size).capacity(2)).unwrap();
    // Two stacks, so that the second's guard lies above the first's stack.
    let _first = pool.acquire().unwrap();
    let stack = pool.acquire().unwrap();
    let b = stack.bounds();
    assert_eq!(touch != "plain", b.guard_size() > page(), "{touch}: {b:?}");
    let addr = if touch == "aligned-bottom" {
        b.guard
    } else {
        b.low - 1
    };
    // SAFETY: a write into the guard region, on purpose and in a child
    // process: it faults before any memory changes, which is what the
    // parent test checks.
    unsafe { (addr as *mut u8).write_volatile(1) };
    // Only reached if the guard did not fault.
    std::process::exit(0);
}

#[test]
fn stacks_parked_by_other_threads_are_found_before_exhaustion() {
    // Each thread's last returned stack waits in its parking cell; a pool
    // whose every free slot is parked by threads that have since ended
    // still hands all of them out, and counts none of them as in use.
    const CAPACITY: usize = 6;
    let pool = StackPool::new(
        PoolConfig::default()
            .stack_size(64 << 10)
            .capacity(CAPACITY),
    )
    .unwrap();
    for _ in 0..3 {
        let threads: Vec<_> = (0..CAPACITY)
            .map(|_| {
                let stack = pool.acquire().unwrap();
                std::thread::spawn(move || drop(stack))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(pool.in_use(), 0);
        let all: Vec<_> = (0..CAPACITY).map(|_| pool.acquire().unwrap()).collect();
        assert_eq!(pool.in_use(), CAPACITY);
        let mut slots: Vec<_> = all.iter().map(|s| s.slot()).collect();
        slots.sort();
        assert_eq!(slots, (0..CAPACITY).collect::<Vec<_>>());
        assert!(matches!(
            pool.acquire(),
            Err(Error::PoolExhausted { capacity: CAPACITY })
        ));
        drop(all);
        assert_eq!(pool.in_use(), 0);
    }
}

#[test]
fn pools_and_stacks_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<StackPool>();
    send_sync::<stackswitch::PooledStack>();
    // A stack acquired on one thread is returned from another.
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(1)).unwrap();
    let stack = pool.acquire().unwrap();
    std::thread::spawn(move || drop(stack)).join().unwrap();
    assert_eq!(pool.in_use(), 0);
    assert!(pool.acquire().is_ok());
}

// LocalPool: a thread's own handle, which keeps returned stacks for itself.

#[test]
fn local_stacks_come_back_to_their_handle_newest_first() {
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(8)).unwrap();
    let local = pool.local_keeping(3).unwrap();
    assert_eq!((local.keep(), local.kept()), (3, 0));
    let stacks: Vec<_> = (0..4).map(|_| local.acquire().unwrap()).collect();
    let slots: Vec<usize> = stacks.iter().map(|s| s.slot()).collect();
    for (s, slot) in stacks.iter().zip(&slots) {
        assert_eq!(s.pool_id(), pool.id());
        assert_eq!(Some(s.bounds()), pool.slot_bounds(*slot));
    }
    assert_eq!(pool.in_use(), 4);
    // Returned in order 0, 1, 2, 3: the handle keeps three; the oldest of
    // them goes back to the pool when the fourth comes.
    drop(stacks);
    assert_eq!(local.kept(), 3);
    assert_eq!(pool.in_use(), 3, "kept stacks count as in use");
    let mut taken = Vec::new();
    for want in [slots[3], slots[2], slots[1]] {
        // Returned at once, it is the newest again and comes back next.
        assert_eq!(local.acquire().unwrap().slot(), want);
        let stack = local.acquire().unwrap();
        assert_eq!(stack.slot(), want);
        taken.push(stack);
    }
    assert_eq!(local.kept(), 0);
    // Nothing kept: the next comes from the pool, where slot 0 went.
    let from_pool = local.acquire().unwrap();
    assert_eq!(from_pool.slot(), slots[0]);
    assert_eq!(pool.in_use(), 4);
    // Back to the handle (one to the pool: four came back), and the
    // handle's last clone gives every kept stack back to the pool.
    drop((taken, from_pool));
    assert_eq!((local.kept(), pool.in_use()), (3, 3));
    let clone = local.clone();
    drop(local);
    assert_eq!((clone.kept(), pool.in_use()), (3, 3));
    drop(clone);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn a_fiber_on_a_local_stack_runs_there_and_hands_it_back() {
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(4)).unwrap();
    let local = pool.local();
    assert_eq!(local.keep(), 4, "the default keeps at most the capacity");
    let stack = local.acquire().unwrap();
    let (slot, b) = (stack.slot(), stack.bounds());
    assert!(matches!(
        locate(b.low),
        Some(StackLocation::PoolSlot { region_id, slot: s, bounds })
            if region_id == pool.id() && s == slot && bounds == b
    ));
    let mut fiber = Fiber::with_stack(stack, |x: u32, s: &Suspender<u32, Option<StackBounds>>| {
        let y = s.suspend(StackBounds::current());
        x + y + remaining_stack().is_some() as u32
    })
    .unwrap();
    assert_eq!(fiber.resume(1), FiberResult::Yield(Some(b)));
    assert_eq!(fiber.resume(2), FiberResult::Return(4));
    drop(fiber);
    assert_eq!(local.kept(), 1);
    // Dropping a suspended fiber unwinds it, then hands the stack back.
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&dropped);
    let mut fiber = Fiber::with_stack(
        local.acquire().unwrap(),
        move |_: (), s: &Suspender<(), ()>| {
            struct SetOnDrop(Arc<AtomicBool>);
            impl Drop for SetOnDrop {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _guard = SetOnDrop(flag);
            s.suspend(());
        },
    )
    .unwrap();
    assert_eq!(fiber.resume(()), FiberResult::Yield(()));
    assert_eq!(local.kept(), 0);
    drop(fiber);
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(local.kept(), 1);
    assert_eq!(local.acquire().unwrap().slot(), slot);
}

#[test]
fn kept_local_stacks_are_in_use_until_their_handle_goes() {
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(2)).unwrap();
    let local = pool.local();
    let held = (local.acquire().unwrap(), local.acquire().unwrap());
    let err = local.acquire().unwrap_err();
    assert!(matches!(err, Error::PoolExhausted { capacity: 2 }), "{err}");
    assert!(pool.acquire().is_err());
    drop(held);
    // The handle keeps both: the pool's other users cannot have them.
    assert_eq!((local.kept(), pool.in_use()), (2, 2));
    assert!(matches!(
        pool.acquire(),
        Err(Error::PoolExhausted { capacity: 2 })
    ));
    let again = local.acquire().unwrap();
    drop(again);
    drop(local);
    assert_eq!(pool.in_use(), 0);
    let both = (pool.acquire().unwrap(), pool.acquire().unwrap());
    assert_ne!(both.0.slot(), both.1.slot());
}

#[test]
fn bad_local_keep_names_the_numbers() {
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(4)).unwrap();
    for keep in [0, 5, usize::MAX] {
        let err = pool.local_keeping(keep).unwrap_err();
        assert!(matches!(err, Error::BadPoolConfig { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("keeping {keep} stacks")) && text.contains("1 to 4"),
            "{text}"
        );
    }
    assert_eq!(pool.local_keeping(4).unwrap().keep(), 4);
    assert_eq!(pool.local_keeping(1).unwrap().keep(), 1);
}

#[test]
fn local_stacks_of_a_zeroing_pool_are_zeroed_on_return() {
    let pool = StackPool::new(
        PoolConfig::default()
            .stack_size(64 << 10)
            .capacity(2)
            .zero_on_return(true),
    )
    .unwrap();
    let local = pool.local();
    let stack = local.acquire().unwrap();
    assert!(all_zero(&stack));
    fill(&stack, 0xab);
    drop(stack);
    // It went back to the pool to be zeroed, not to the handle.
    assert_eq!((local.kept(), pool.in_use()), (0, 0));
    for _ in 0..4 {
        let stack = local.acquire().unwrap();
        assert!(all_zero(&stack));
        fill(&stack, 0xcd);
    }
}

#[test]
fn deep_local_stacks_are_trimmed_on_return() {
    let size = 256 << 10;
    let keep = 64 << 10;
    let pool = StackPool::new(
        PoolConfig::default()
            .stack_size(size)
            .resident(keep)
            .capacity(2),
    )
    .unwrap();
    let local = pool.local();
    let stack = local.acquire().unwrap();
    let b = stack.bounds();
    let limit = b.high - keep;
    fill(&stack, 1);
    drop(stack);
    // Kept by the handle, and trimmed like a PooledStack: the canaries
    // tripped, so the pages below the resident limit were released.
    assert_eq!(local.kept(), 1);
    assert!(resident_pages(b.low, limit - b.low).iter().all(|&r| !r));
    assert!(resident_pages(limit, keep).iter().all(|&r| r));
    // A shallow use keeps the resident part, and the canaries are armed
    // again: a second deep use is trimmed as well.
    let stack = local.acquire().unwrap();
    assert_eq!(stack.bounds(), b);
    fill(&stack, 2);
    drop(stack);
    assert!(resident_pages(b.low, limit - b.low).iter().all(|&r| !r));
}

#[test]
fn a_local_stack_outlives_its_handles() {
    // Unmapping is read from /proc/self/maps: in a child, as in
    // `a_stack_outlives_its_pool`.
    if !common::in_child(
        "a_local_stack_outlives_its_handles",
        "STACKSWITCH_LOCAL_OUTLIVES_CHILD",
    ) {
        return;
    }
    let pool = StackPool::new(PoolConfig::default().stack_size(64 << 10).capacity(4)).unwrap();
    let region = pool.region();
    let local = pool.local();
    drop(local.acquire().unwrap()); // one kept by the handle
    let stack = local.acquire().unwrap();
    let kept_too = local.acquire().unwrap();
    drop(kept_too);
    let b = stack.bounds();
    drop(pool);
    drop(local);
    // The stack holds the handle's cache, which holds the pool open.
    assert!(vmas_in(region.clone()) > 0);
    let mut fiber =
        Fiber::with_stack(stack, |_: (), _: &Suspender<(), ()>| StackBounds::current()).unwrap();
    assert_eq!(fiber.resume(()), FiberResult::Return(Some(b)));
    drop(fiber);
    assert_eq!(vmas_in(region), 0, "the region outlived its last stack");
}

/// Installs the seccomp filter `prog` for the calling thread (after
/// `PR_SET_NO_NEW_PRIVS`, which an unprivileged filter needs).
fn install_seccomp(prog: &mut [libc::sock_filter]) {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls; the filter program outlives the call.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let rc = libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        );
        assert_eq!(rc, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
}
