//! The table and the JSON: rows grouped in measurement order, each with its
//! ratio to the group's first stackswitch row; the machine and the build
//! above; memory and the targets below.

use std::fmt::Write as _;

use super::harness::Stats;
use super::memory::Parked;

/// One line of the table.
pub struct Row {
    pub group: &'static str,
    pub case: String,
    /// `None`: not measured, and `note` says why.
    pub stats: Option<Stats>,
    pub note: String,
}

impl Row {
    pub fn measured(group: &'static str, case: String, stats: Stats) -> Row {
        Row {
            group,
            case,
            stats: Some(stats),
            note: String::new(),
        }
    }

    pub fn pending(group: &'static str, case: &str, why: &str) -> Row {
        Row {
            group,
            case: case.to_string(),
            stats: None,
            note: why.to_string(),
        }
    }
}

/// One target from DESIGN.md: met, missed, or not measurable in this run.
pub struct Target {
    pub name: String,
    /// The measured value and whether it meets the target; `None` with a
    /// reason when it could not be measured.
    pub outcome: Result<(f64, bool), String>,
}

impl Target {
    pub fn pending(name: &str, why: &str) -> Target {
        Target {
            name: name.to_string(),
            outcome: Err(why.to_string()),
        }
    }

    /// `value <= limit`, when it was measured (a ratio or nanoseconds).
    pub fn at_most(name: &str, value: Option<f64>, limit: f64) -> Target {
        Target {
            name: name.to_string(),
            outcome: value
                .map(|v| (v, v <= limit))
                .ok_or_else(|| "its rows were not measured in this run".to_string()),
        }
    }
}

pub struct Report {
    pub quick: bool,
    pub rows: Vec<Row>,
    pub notes: Vec<(&'static str, String)>,
    pub parked: Vec<Parked>,
    pub targets: Vec<Target>,
}

/// Facts about the machine and the build, as (key, value).
fn facts() -> Vec<(&'static str, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name") || l.starts_with("CPU part"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown".to_string(), |s| s.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string());
    let rustc = std::process::Command::new(std::env::var_os("RUSTC").unwrap_or("rustc".into()))
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown (no rustc on PATH)".to_string(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        );
    let mut features = Vec::new();
    if cfg!(feature = "fp-control") {
        features.push("fp-control");
    }
    if cfg!(feature = "wasmtime") {
        features.push("wasmtime");
    }
    let features = if features.is_empty() {
        "none".to_string()
    } else {
        features.join(", ")
    };
    vec![
        ("cpu", cpu),
        ("cores", cores.to_string()),
        (
            "kernel",
            format!("Linux {kernel} {}", std::env::consts::ARCH),
        ),
        ("guard pages", format!("{:?}", stackswitch::guard_kind())),
        (
            "profile",
            if cfg!(debug_assertions) {
                "debug (numbers are meaningless: use --release)".to_string()
            } else {
                "release".to_string()
            },
        ),
        ("features", features),
        ("rustc", rustc),
    ]
}

fn ns(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} ms", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2} µs", v / 1e3)
    } else {
        format!("{v:.2} ns")
    }
}

fn bytes(v: f64) -> String {
    if v >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", v / (1024.0 * 1024.0))
    } else if v >= 1024.0 {
        format!("{:.1} KiB", v / 1024.0)
    } else {
        format!("{v:.0} B")
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "null".to_string()
    }
}

impl Report {
    pub fn new(quick: bool) -> Report {
        Report {
            quick,
            rows: Vec::new(),
            notes: Vec::new(),
            parked: Vec::new(),
            targets: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn note(&mut self, group: &'static str, text: &str) {
        self.notes.push((group, text.to_string()));
    }

    fn groups(&self) -> Vec<&'static str> {
        let mut groups: Vec<&'static str> = Vec::new();
        for r in &self.rows {
            if !groups.contains(&r.group) {
                groups.push(r.group);
            }
        }
        groups
    }

    /// A measured row's ratio to the first stackswitch row of its group
    /// measured in the same run (failing that, in any run; in a group with
    /// no stackswitch row, to its first row).
    pub fn ratio(&self, row: &Row) -> Option<f64> {
        let stats = row.stats.as_ref()?;
        let ours = || {
            self.rows
                .iter()
                .filter(|r| r.group == row.group && r.case.starts_with("stackswitch"))
                .filter_map(|r| r.stats.as_ref())
        };
        let first = || {
            self.rows
                .iter()
                .filter(|r| r.group == row.group)
                .filter_map(|r| r.stats.as_ref())
        };
        let base = ours()
            .find(|b| b.run == stats.run)
            .or_else(|| ours().next())
            .or_else(|| first().next())?;
        Some(stats.ratio_to(base))
    }

    /// The statistics of a measured row.
    pub fn stats(&self, group: &str, case: &str) -> Option<&Stats> {
        self.rows
            .iter()
            .find(|r| r.group == group && r.case == case)
            .and_then(|r| r.stats.as_ref())
    }

    /// `a`'s ratio to `b` (side by side when measured in the same run).
    pub fn ratio_of(&self, group: &str, a: &str, b: &str) -> Option<f64> {
        Some(self.stats(group, a)?.ratio_to(self.stats(group, b)?))
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "stackswitch compare{}",
            if self.quick {
                " --quick (smoke run: few samples, numbers are rough)"
            } else {
                ""
            }
        );
        for (k, v) in facts() {
            let _ = writeln!(out, "  {k:<12} {v}");
        }
        let _ = writeln!(out);
        let w = self
            .rows
            .iter()
            .map(|r| r.case.chars().count())
            .max()
            .unwrap_or(10)
            .max(30)
            + 2;
        let _ = writeln!(
            out,
            "  {:<w$} {:>10} {:>10} {:>10} {:>8}",
            "case", "median", "min", "max", "ratio"
        );
        for group in self.groups() {
            let _ = writeln!(out, "{group}");
            for r in self.rows.iter().filter(|r| r.group == group) {
                match &r.stats {
                    Some(s) => {
                        let ratio = self
                            .ratio(r)
                            .map_or("-".to_string(), |x| format!("{x:.2}x"));
                        let _ = writeln!(
                            out,
                            "  {:<w$} {:>10} {:>10} {:>10} {:>8}",
                            r.case,
                            ns(s.median),
                            ns(s.min),
                            ns(s.max),
                            ratio
                        );
                    }
                    None => {
                        let _ = writeln!(out, "  {:<w$} {}", r.case, r.note);
                    }
                }
            }
            for (_, n) in self.notes.iter().filter(|(g, _)| *g == group) {
                let _ = writeln!(out, "  note: {n}");
            }
        }
        let _ = writeln!(
            out,
            "  (per operation: median, min, max over the samples; ratio: to the group's \
             stackswitch row (or first row) of the same run, the median of per-round ratios)"
        );
        if !self.parked.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "memory per parked fiber");
            for p in &self.parked {
                let _ = writeln!(
                    out,
                    "  {:<24} {} parked, {} stacks: {} resident, {:.2} mappings each; \
                     fit: ~{} (limited by {})",
                    p.name,
                    p.count,
                    bytes(p.stack_size as f64),
                    bytes(p.rss_per_fiber),
                    p.maps_per_fiber,
                    p.fit,
                    p.limit
                );
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "targets");
        for t in &self.targets {
            let verdict = match &t.outcome {
                Ok((v, true)) => format!("met ({v:.3})"),
                Ok((v, false)) => format!("MISSED ({v:.3})"),
                Err(why) => format!("not measured: {why}"),
            };
            let _ = writeln!(out, "  {:<70} {verdict}", t.name);
        }
        out
    }

    /// The table as Markdown, for the README: the machine and build, one
    /// table, memory and targets as lists.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let facts: Vec<String> = facts()
            .into_iter()
            .filter(|(k, _)| *k != "guard pages")
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            out,
            "Measured with `cargo run --release --features wasmtime --example compare`"
        );
        let _ = writeln!(out, "on {}.\n", facts.join("; "));
        let _ = writeln!(out, "| case | median | min | max | ratio |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        for group in self.groups() {
            let _ = writeln!(out, "| **{group}** | | | | |");
            for r in self.rows.iter().filter(|r| r.group == group) {
                match &r.stats {
                    Some(s) => {
                        let ratio = self
                            .ratio(r)
                            .map_or("-".to_string(), |x| format!("{x:.2}x"));
                        let _ = writeln!(
                            out,
                            "| {} | {} | {} | {} | {ratio} |",
                            r.case,
                            ns(s.median),
                            ns(s.min),
                            ns(s.max)
                        );
                    }
                    None => {
                        let _ = writeln!(out, "| {} | {} | | | |", r.case, r.note);
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "\nPer operation; ratio: to the group's stackswitch row (or first row) measured in \
             the same run, as the median of per-round ratios."
        );
        for (g, n) in &self.notes {
            let _ = writeln!(out, "{g}: {n}.");
        }
        if !self.parked.is_empty() {
            let _ = writeln!(out);
            for p in &self.parked {
                let _ = writeln!(
                    out,
                    "- {}: {} resident and {:.2} mappings per parked fiber ({} stacks); \
                     about {} fit (limited by {}).",
                    p.name,
                    bytes(p.rss_per_fiber),
                    p.maps_per_fiber,
                    bytes(p.stack_size as f64),
                    p.fit,
                    p.limit
                );
            }
        }
        let _ = writeln!(out);
        for t in &self.targets {
            let verdict = match &t.outcome {
                Ok((v, true)) => format!("met ({v:.3})"),
                Ok((v, false)) => format!("missed ({v:.3})"),
                Err(why) => format!("not measured: {why}"),
            };
            let _ = writeln!(out, "- {}: {verdict}", t.name);
        }
        out
    }

    pub fn json(&self) -> String {
        let mut out = String::from("{\n  \"machine\": {");
        let f: Vec<String> = facts()
            .into_iter()
            .map(|(k, v)| format!("{}: {}", json_str(k), json_str(&v)))
            .collect();
        let _ = write!(
            out,
            "{}}},\n  \"quick\": {},\n  \"rows\": [",
            f.join(", "),
            self.quick
        );
        let rows: Vec<String> = self
            .rows
            .iter()
            .map(|r| {
                let ratio = self.ratio(r);
                match &r.stats {
                    Some(s) => format!(
                        "\n    {{\"group\": {}, \"case\": {}, \"median_ns\": {}, \"min_ns\": {}, \
                         \"max_ns\": {}, \"ratio\": {}}}",
                        json_str(r.group),
                        json_str(&r.case),
                        json_num(s.median),
                        json_num(s.min),
                        json_num(s.max),
                        ratio.map_or("null".to_string(), json_num)
                    ),
                    None => format!(
                        "\n    {{\"group\": {}, \"case\": {}, \"pending\": {}}}",
                        json_str(r.group),
                        json_str(&r.case),
                        json_str(&r.note)
                    ),
                }
            })
            .collect();
        let _ = write!(out, "{}\n  ],\n  \"notes\": [", rows.join(","));
        let notes: Vec<String> = self
            .notes
            .iter()
            .map(|(g, n)| {
                format!(
                    "\n    {{\"group\": {}, \"note\": {}}}",
                    json_str(g),
                    json_str(n)
                )
            })
            .collect();
        let _ = write!(out, "{}\n  ],\n  \"memory\": [", notes.join(","));
        let mem: Vec<String> = self
            .parked
            .iter()
            .map(|p| {
                format!(
                    "\n    {{\"case\": {}, \"parked\": {}, \"stack_bytes\": {}, \
                     \"resident_bytes_per_fiber\": {}, \"mappings_per_fiber\": {}, \
                     \"fit\": {}, \"limited_by\": {}}}",
                    json_str(&p.name),
                    p.count,
                    p.stack_size,
                    json_num(p.rss_per_fiber),
                    json_num(p.maps_per_fiber),
                    p.fit,
                    json_str(p.limit)
                )
            })
            .collect();
        let _ = write!(out, "{}\n  ],\n  \"targets\": [", mem.join(","));
        let targets: Vec<String> = self
            .targets
            .iter()
            .map(|t| match &t.outcome {
                Ok((v, met)) => format!(
                    "\n    {{\"target\": {}, \"value\": {}, \"met\": {met}}}",
                    json_str(&t.name),
                    json_num(*v)
                ),
                Err(why) => format!(
                    "\n    {{\"target\": {}, \"met\": null, \"why\": {}}}",
                    json_str(&t.name),
                    json_str(why)
                ),
            })
            .collect();
        let _ = writeln!(out, "{}\n  ]\n}}", targets.join(","));
        out
    }
}
