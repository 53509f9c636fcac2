//! Peaks measured under `GuardMode::Measure`, per guarded function.

use std::fmt;
use std::sync::Mutex;

/// What `Measure` found for one guarded function name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeakEntry {
    /// The guarded function's name.
    pub name: &'static str,
    /// Measured calls.
    pub calls: u64,
    /// Its budget in bytes (the largest, if calls used different ones).
    pub budget: usize,
    /// The most stack any one call used, in bytes, counted from the
    /// lowered stack pointer (the guard's entry frame included).
    pub peak: usize,
}

impl PeakEntry {
    /// `peak` as a share of `budget`, in percent.
    pub fn percent(&self) -> f64 {
        self.peak as f64 * 100.0 / self.budget.max(1) as f64
    }
}

/// The peaks of every function measured so far, in the order first seen.
///
/// Its `Display` is a table:
///
/// ```text
/// function        calls    budget      peak   used
/// parse              12     65536     21408  32.7%
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeakReport {
    /// One entry per guarded function name.
    pub entries: Vec<PeakEntry>,
}

impl PeakReport {
    /// The entry for `name`, if it was measured.
    pub fn get(&self, name: &str) -> Option<&PeakEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

impl fmt::Display for PeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .entries
            .iter()
            .map(|e| e.name.len())
            .chain([8])
            .max()
            .unwrap_or(8);
        writeln!(
            f,
            "{:<width$}  {:>8}  {:>9}  {:>9}  {:>6}",
            "function", "calls", "budget", "peak", "used"
        )?;
        for e in &self.entries {
            writeln!(
                f,
                "{:<width$}  {:>8}  {:>9}  {:>9}  {:>5.1}%",
                e.name,
                e.calls,
                e.budget,
                e.peak,
                e.percent()
            )?;
        }
        Ok(())
    }
}

static PEAKS: Mutex<Vec<PeakEntry>> = Mutex::new(Vec::new());

/// Adds one measured call.
pub(crate) fn record(name: &'static str, budget: usize, used: usize) {
    let mut peaks = PEAKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match peaks.iter_mut().find(|e| e.name == name) {
        Some(e) => {
            e.calls += 1;
            e.budget = e.budget.max(budget);
            e.peak = e.peak.max(used);
        }
        None => peaks.push(PeakEntry {
            name,
            calls: 1,
            budget,
            peak: used,
        }),
    }
}

/// A snapshot of the peaks measured so far under
/// [`GuardMode::Measure`](super::GuardMode::Measure), across all threads.
///
/// ```
/// use stackswitch::guard::{peak_report, GuardMode, StackGuard};
///
/// let guard = StackGuard::new("doc_sum", 16 << 10).mode(GuardMode::Measure);
/// guard.run(|| std::hint::black_box([1u8; 2000]).iter().map(|&b| b as u32).sum::<u32>())?;
/// let entry = peak_report().get("doc_sum").cloned().unwrap();
/// assert_eq!((entry.calls, entry.budget), (1, 16 << 10));
/// assert!(entry.peak >= 2000);
/// println!("{}", peak_report());
/// # Ok::<(), stackswitch::Error>(())
/// ```
pub fn peak_report() -> PeakReport {
    let peaks = PEAKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    PeakReport {
        entries: peaks.clone(),
    }
}

/// Forgets every measured peak.
pub fn reset_peaks() {
    PEAKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clear();
}
