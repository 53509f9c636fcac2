//! Model-based property test of the fiber API.
//!
//! proptest generates programs of operations over a few fiber slots —
//! create, resume with a command (suspend with a value, return, panic, run a
//! nested fiber to completion, drop a suspended nested fiber, resume the
//! fiber of another slot from inside this one, nested again), resume on
//! another thread, drop, take the stack back and reuse it — and runs each
//! against the real fibers and against a small model. A fiber that is
//! running is out of its slot, so a fiber that tries to resume itself or
//! one of the fibers that resumed it finds the slot empty. After every operation
//! the result of the call must be what the model predicts, and the number of
//! destructors that ran (values the fibers captured or kept on their stacks)
//! must match the model's count exactly.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

use proptest::prelude::*;
use stackswitch::{Error, Fiber, FiberResult, MmapStack, SendFiber, Stack, Suspender};

/// Slots a program works on.
const SLOTS: usize = 4;
/// Stack size of every fiber in the model (outer and nested).
const STACK: usize = 64 << 10;

/// What a resume asks the fiber to do next.
#[derive(Clone, Debug)]
enum Cmd {
    /// Keep one more tracked value on the stack, then suspend with `f(v)`.
    Yield(u64),
    /// Return `g(v)`: everything on the stack is dropped.
    Return(u64),
    /// Panic with `ModelPanic(v)`: everything on the stack is dropped.
    Panic(u64),
    /// Run a nested fiber that yields `k` values, to completion, then
    /// suspend with their sum (plus the nested fiber's return value).
    Nested(u8),
    /// Start a nested fiber holding a tracked value, suspend it once, drop
    /// it while suspended (its value must be dropped), then suspend with
    /// `v`.
    NestedDrop(u64),
    /// Resume the fiber in slot `j` with the command, from inside this
    /// fiber; suspend with what happened, encoded (see `encode`).
    ResumeSlot(usize, Box<Cmd>),
}

#[derive(Clone, Debug)]
enum Op {
    Create(usize),
    Resume(usize, Cmd),
    /// As `Resume`, but on another thread (through `into_send`).
    ResumeElsewhere(usize, Cmd),
    Drop(usize),
    /// Drop the fiber while this thread unwinds from a panic: a suspended
    /// fiber must still be unwound, inside the resumer's unwinding.
    DropWhilePanicking(usize),
    /// `into_stack`, then a new fiber on the same stack.
    Recycle(usize),
}

/// The payload of a panic the model asks for.
#[derive(Debug)]
struct ModelPanic(u64);

/// A value whose drop is counted.
struct Tracked(Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn yielded(id: u64, v: u64) -> u64 {
    v.wrapping_mul(3).wrapping_add(id)
}

fn returned(id: u64, v: u64) -> u64 {
    v ^ (id << 32)
}

/// Sum the nested fiber of `Cmd::Nested(k)` makes: it yields 1..=k and
/// returns 1000.
fn nested_sum(k: u8) -> u64 {
    (1..=u64::from(k)).sum::<u64>() + 1000
}

/// Slot contents. `SendFiber`, so that the table can be shared with the
/// fibers themselves and a fiber can be finished on another thread.
type ModelFiber = SendFiber<Cmd, u64, u64>;
/// The slots, shared by the test and every fiber.
type Table = Arc<Mutex<Vec<Option<ModelFiber>>>>;

/// What a `ResumeSlot` finds in an empty slot (or its own, or a resumer's).
const ABSENT: u64 = 0x55;

/// Folds the outcome of a nested resume into the value the fiber yields.
fn encode(out: &Outcome) -> u64 {
    match *out {
        Outcome::Yield(y) => y.wrapping_mul(5) ^ 0x11,
        Outcome::Return(r) => r.wrapping_mul(7) ^ 0x22,
        Outcome::Panic(v) => v.wrapping_mul(11) ^ 0x33,
        Outcome::Finished => 0x44,
    }
}

/// A fiber that interprets commands, with its id baked into its values.
fn make_fiber(id: u64, drops: &Arc<AtomicUsize>, table: &Table, stack: MmapStack) -> ModelFiber {
    let captured = Tracked(drops.clone());
    let drops = drops.clone();
    let table = table.clone();
    let fiber = Fiber::with_stack(stack, move |first: Cmd, s: &Suspender<Cmd, u64>| {
        let _captured = captured;
        let mut kept = Vec::new();
        let mut cmd = first;
        loop {
            cmd = match cmd {
                Cmd::Yield(v) => {
                    kept.push(Tracked(drops.clone()));
                    s.suspend(yielded(id, v))
                }
                Cmd::Return(v) => return returned(id, v),
                Cmd::Panic(v) => std::panic::panic_any(ModelPanic(v)),
                Cmd::Nested(k) => {
                    let inner_drops = drops.clone();
                    let mut inner = Fiber::new(STACK, move |(): (), s2: &Suspender<(), u64>| {
                        let _t = Tracked(inner_drops);
                        for i in 1..=u64::from(k) {
                            s2.suspend(i);
                        }
                        1000u64
                    })
                    .expect("nested fiber");
                    let mut sum = 0;
                    let total = loop {
                        match inner.resume(()) {
                            FiberResult::Yield(y) => sum += y,
                            FiberResult::Return(r) => break sum + r,
                        }
                    };
                    s.suspend(total)
                }
                Cmd::NestedDrop(v) => {
                    let inner_drops = drops.clone();
                    let mut inner = Fiber::new(STACK, move |(): (), s2: &Suspender<(), u64>| {
                        let _t = Tracked(inner_drops);
                        s2.suspend(7);
                        unreachable!("resumed after being dropped");
                    })
                    .expect("nested fiber");
                    assert_eq!(inner.resume(()), FiberResult::Yield(7));
                    drop(inner);
                    s.suspend(v)
                }
                Cmd::ResumeSlot(j, inner) => {
                    let taken = table.lock().unwrap()[j].take();
                    let code = match taken {
                        None => ABSENT,
                        Some(mut f) => {
                            let out = resume_real(&mut f, *inner);
                            table.lock().unwrap()[j] = Some(f);
                            encode(&out)
                        }
                    };
                    s.suspend(yielded(id, code))
                }
            };
        }
    })
    .expect("fiber");
    // SAFETY: the fiber's stack holds Arcs (of atomics and of the mutexed
    // table of SendFibers), Vecs of those and u64s, all Send; no fiber code
    // keeps the address of a thread-local.
    unsafe { fiber.into_send() }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum St {
    Fresh,
    Suspended,
    Finished,
}

/// The model of one slot: state and how many tracked values the fiber holds.
#[derive(Clone, Copy, Debug)]
struct MSlot {
    id: u64,
    st: St,
    live: usize,
}

/// What a resume must produce.
#[derive(Debug, PartialEq)]
enum Outcome {
    Yield(u64),
    Return(u64),
    Panic(u64),
    Finished,
}

/// Resumes the real fiber (a finished one both ways, which must refuse)
/// and classifies what happened.
fn resume_real(fiber: &mut ModelFiber, cmd: Cmd) -> Outcome {
    if fiber.is_finished() {
        assert!(matches!(
            fiber.try_resume(cmd.clone()),
            Err(Error::FiberFinished)
        ));
        let err = catch_unwind(AssertUnwindSafe(|| fiber.resume(cmd))).unwrap_err();
        let msg = err.downcast_ref::<String>().expect("message");
        assert!(msg.contains("finished"), "{msg}");
        return Outcome::Finished;
    }
    match catch_unwind(AssertUnwindSafe(|| fiber.resume(cmd))) {
        Ok(FiberResult::Yield(y)) => Outcome::Yield(y),
        Ok(FiberResult::Return(r)) => Outcome::Return(r),
        Err(payload) => Outcome::Panic(payload.downcast::<ModelPanic>().expect("model panic").0),
    }
}

/// Applies a resume of slot `i` to the model: `None` if the slot is empty
/// (or its fiber is running), else the expected outcome and how many
/// tracked values get dropped. The slot is empty while its fiber runs.
fn resume_model(models: &mut [Option<MSlot>], i: usize, cmd: &Cmd) -> Option<(Outcome, usize)> {
    let mut m = models[i].take()?;
    let r = step_model(models, &mut m, cmd);
    models[i] = Some(m);
    Some(r)
}

fn step_model(models: &mut [Option<MSlot>], m: &mut MSlot, cmd: &Cmd) -> (Outcome, usize) {
    if m.st == St::Finished {
        return (Outcome::Finished, 0);
    }
    m.st = St::Suspended;
    match cmd {
        Cmd::Yield(v) => {
            m.live += 1;
            (Outcome::Yield(yielded(m.id, *v)), 0)
        }
        Cmd::Return(v) => {
            m.st = St::Finished;
            (
                Outcome::Return(returned(m.id, *v)),
                std::mem::take(&mut m.live),
            )
        }
        Cmd::Panic(v) => {
            m.st = St::Finished;
            (Outcome::Panic(*v), std::mem::take(&mut m.live))
        }
        // The nested fiber's tracked value is made and dropped inside.
        Cmd::Nested(k) => (Outcome::Yield(nested_sum(*k)), 1),
        Cmd::NestedDrop(v) => (Outcome::Yield(*v), 1),
        Cmd::ResumeSlot(j, inner) => {
            let (code, dropped) = match resume_model(models, *j, inner) {
                None => (ABSENT, 0),
                Some((out, dropped)) => (encode(&out), dropped),
            };
            (Outcome::Yield(yielded(m.id, code)), dropped)
        }
    }
}

fn silence_model_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let quiet = info.payload().is::<ModelPanic>()
                || info
                    .payload()
                    .downcast_ref::<String>()
                    .is_some_and(|m| m.contains("fiber that has finished"));
            if !quiet {
                default(info);
            }
        }));
    });
}

fn run(program: &[Op]) {
    silence_model_panics();
    let drops = Arc::new(AtomicUsize::new(0));
    let mut expected_drops = 0usize;
    let table: Table = Arc::new(Mutex::new((0..SLOTS).map(|_| None).collect()));
    let mut model: Vec<Option<MSlot>> = vec![None; SLOTS];
    let mut next_id = 1u64;
    // Takes a slot's fiber out, without holding the lock afterwards (a
    // fiber running or unwinding may need it).
    let take = |i: usize| table.lock().unwrap()[i].take();
    let put = |i: usize, f: ModelFiber| table.lock().unwrap()[i] = Some(f);

    for (step, op) in program.iter().enumerate() {
        match op {
            Op::Create(i) | Op::Recycle(i) => {
                let recycle = matches!(op, Op::Recycle(_));
                let stack = match take(*i) {
                    Some(f) if recycle => {
                        let st = f.into_inner().into_stack().expect("stack back");
                        assert!(st.bounds().size() >= STACK);
                        st
                    }
                    old => {
                        drop(old);
                        MmapStack::new(STACK).expect("stack")
                    }
                };
                if let Some(m) = model[*i].take() {
                    expected_drops += m.live;
                }
                let id = next_id;
                next_id += 1;
                put(*i, make_fiber(id, &drops, &table, stack));
                model[*i] = Some(MSlot {
                    id,
                    st: St::Fresh,
                    live: 1,
                });
            }
            Op::Resume(i, cmd) | Op::ResumeElsewhere(i, cmd) => {
                let Some(mut fiber) = take(*i) else {
                    assert!(model[*i].is_none(), "step {step}");
                    continue;
                };
                let (want, dropped) = resume_model(&mut model, *i, cmd).expect("in the model");
                let got = if matches!(op, Op::ResumeElsewhere(..)) {
                    let cmd = cmd.clone();
                    let (back, got) = std::thread::spawn(move || {
                        let got = resume_real(&mut fiber, cmd);
                        (fiber, got)
                    })
                    .join()
                    .expect("resuming thread");
                    fiber = back;
                    got
                } else {
                    resume_real(&mut fiber, cmd.clone())
                };
                expected_drops += dropped;
                assert_eq!(got, want, "step {step}: {op:?}");
                assert_eq!(
                    fiber.is_finished(),
                    model[*i].unwrap().st == St::Finished,
                    "step {step}"
                );
                assert!(fiber.is_started(), "step {step}");
                put(*i, fiber);
            }
            Op::Drop(i) => {
                drop(take(*i));
                if let Some(m) = model[*i].take() {
                    expected_drops += m.live;
                }
            }
            Op::DropWhilePanicking(i) => {
                let fiber = take(*i);
                let r = catch_unwind(AssertUnwindSafe(move || {
                    let _dropped_while_unwinding = fiber;
                    std::panic::panic_any(ModelPanic(u64::MAX));
                }));
                assert!(r.is_err_and(|p| p.is::<ModelPanic>()), "step {step}");
                if let Some(m) = model[*i].take() {
                    expected_drops += m.live;
                }
            }
        }
        assert_eq!(
            drops.load(Ordering::SeqCst),
            expected_drops,
            "destructors after step {step}: {op:?}"
        );
        // Every slot agrees with the model about being filled.
        let filled: Vec<bool> = table.lock().unwrap().iter().map(Option::is_some).collect();
        let want: Vec<bool> = model.iter().map(Option::is_some).collect();
        assert_eq!(filled, want, "step {step}");
    }
    let live: usize = model.iter().flatten().map(|m| m.live).sum();
    // Drop the fibers outside the lock (their unwinding may not need it,
    // but nothing should be held while fiber code runs).
    let fibers: Vec<_> = (0..SLOTS).map(take).collect();
    drop(fibers);
    assert_eq!(drops.load(Ordering::SeqCst), expected_drops + live);
}

fn cmd() -> impl Strategy<Value = Cmd> {
    let leaf = prop_oneof![
        6 => any::<u64>().prop_map(Cmd::Yield),
        2 => any::<u64>().prop_map(Cmd::Return),
        1 => any::<u64>().prop_map(Cmd::Panic),
        1 => (0u8..5).prop_map(Cmd::Nested),
        1 => any::<u64>().prop_map(Cmd::NestedDrop),
    ];
    // Up to three fibers deep: a fiber resumes another slot's fiber, which
    // resumes a third.
    leaf.prop_recursive(2, 8, 1, |inner| {
        (0..SLOTS, inner).prop_map(|(j, c)| Cmd::ResumeSlot(j, Box::new(c)))
    })
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    prop_oneof![
        3 => slot.clone().prop_map(Op::Create),
        8 => (slot.clone(), cmd()).prop_map(|(i, c)| Op::Resume(i, c)),
        1 => (slot.clone(), cmd()).prop_map(|(i, c)| Op::ResumeElsewhere(i, c)),
        2 => slot.clone().prop_map(Op::Drop),
        1 => slot.clone().prop_map(Op::DropWhilePanicking),
        1 => slot.prop_map(Op::Recycle),
    ]
}

fn cases() -> u32 {
    // PROPTEST_CASES=n asks for more (or fewer), e.g. in a nightly job.
    if let Some(n) = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    // Valgrind runs everything ~50x slower: fewer, still random, programs.
    if stackswitch::valgrind::running_on_valgrind() {
        64
    } else {
        256
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn fibers_follow_the_model(program in proptest::collection::vec(op(), 1..48)) {
        run(&program);
    }
}

/// One fixed program that touches every operation, so a regression shows up
/// even with few random cases.
#[test]
fn fixed_program_covers_every_operation() {
    use Cmd::*;
    use Op::*;
    run(&[
        Create(0),
        Create(1),
        Resume(0, Yield(1)),
        Resume(0, Nested(3)),
        Resume(0, NestedDrop(9)),
        ResumeElsewhere(0, Yield(2)),
        Resume(1, Panic(5)),
        Resume(1, Yield(1)),
        Recycle(1),
        Resume(1, Yield(4)),
        Recycle(1),
        Resume(0, ResumeSlot(1, Box::new(Yield(3)))),
        Resume(0, ResumeSlot(0, Box::new(Yield(3)))),
        Resume(
            0,
            ResumeSlot(1, Box::new(ResumeSlot(0, Box::new(Yield(1))))),
        ),
        Create(2),
        Resume(
            0,
            ResumeSlot(1, Box::new(ResumeSlot(2, Box::new(Panic(4))))),
        ),
        ResumeElsewhere(1, ResumeSlot(0, Box::new(Nested(2)))),
        Resume(0, ResumeSlot(1, Box::new(Return(6)))),
        Resume(0, ResumeSlot(1, Box::new(Return(6)))),
        Resume(0, Return(8)),
        Resume(0, Return(8)),
        Create(2),
        Resume(2, Yield(3)),
        Drop(2),
        Create(2),
        Resume(2, Yield(3)),
        DropWhilePanicking(2),
        Create(3),
        Drop(3),
        Resume(1, Yield(1)),
    ]);
}
