//! The figures of a run, the checks on them, and their markdown and JSON forms.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::cluster::Position;
use crate::traffic::{LoadReport, Probe, PROBE_EVERY};
use crate::{Args, ROSTER, SAMPLE_EVERY};

/// Most a `lambda` process's mean RSS may grow from the second third of the run to the last (the broker is
/// reported, not checked: it is the test's fixture, not the system). Not applied to the batch process: a
/// run recomputes the views from the whole archive (DESIGN.md §5), so its memory follows the distinct events
/// archived so far (`batch_layer/src/job/compute.rs`), which grow with the run; the hold checks it instead.
pub const MAX_GROWTH: f64 = 1.25;
/// Most a `lambda` process's peak RSS may grow from the first half of the hold (no production, the batch
/// recomputing the same archive every 10 s, the API read) to the second half.
pub const MAX_HOLD_GROWTH: f64 = 1.10;
/// The process whose memory follows the archive, not time.
const FOLLOWS_DATA: &str = "batch";

/// RSS samples of one process over the run: (seconds since the start, KiB).
#[derive(Debug, Default, Clone)]
pub struct Series {
    pub samples: Vec<(f64, u64)>,
    /// Seconds since the start at which the process was started again after a kill.
    pub restarts: Vec<f64>,
}

/// One process's memory over the run, MiB. The first third is the warm-up; the second third is the
/// baseline the last third is held against.
#[derive(Debug)]
pub struct MemoryRow {
    pub name: String,
    pub kills: usize,
    pub warm_end: f64,
    pub second: f64,
    pub last: f64,
    pub ratio: f64,
    pub max: f64,
    /// Least-squares slope, MiB per minute, of the samples of the process running at the end from the
    /// later of one third into the run and 30 s after its last start (NaN with fewer than 6): growth that
    /// a restart in the last third would hide from `ratio`.
    pub slope: f64,
    /// Peak RSS in the first and the second half of the hold, and their ratio.
    pub hold_first: f64,
    pub hold_second: f64,
    pub hold_ratio: f64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (n, sum) = xs.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    sum / n as f64 // NaN when empty
}

impl MemoryRow {
    pub fn of(name: &str, s: &Series, duration_s: f64, hold: &Series, hold_s: f64) -> MemoryRow {
        let (a, b) = (duration_s / 3.0, 2.0 * duration_s / 3.0);
        let warm_end = s.samples.iter().rev().find(|(t, _)| *t <= a).map_or(f64::NAN, |&(_, k)| mib(k));
        let second = mean(s.samples.iter().filter(|(t, _)| *t > a && *t <= b).map(|&(_, k)| mib(k)));
        let last = mean(s.samples.iter().filter(|(t, _)| *t > b).map(|&(_, k)| mib(k)));
        let max = s.samples.iter().map(|&(_, k)| mib(k)).fold(f64::NAN, f64::max);
        let since = s.restarts.last().map_or(a, |r| a.max(r + 30.0));
        let tail: Vec<(f64, f64)> =
            s.samples.iter().filter(|(t, _)| *t >= since).map(|&(t, k)| (t / 60.0, mib(k))).collect();
        let n = tail.len() as f64;
        let (mt, my) = (tail.iter().map(|p| p.0).sum::<f64>() / n, tail.iter().map(|p| p.1).sum::<f64>() / n);
        let cov: f64 = tail.iter().map(|(t, y)| (t - mt) * (y - my)).sum();
        let var: f64 = tail.iter().map(|(t, _)| (t - mt).powi(2)).sum();
        let slope = if tail.len() >= 6 { cov / var } else { f64::NAN };
        let kills = s.restarts.len();
        let peak = |first: bool| {
            let half = hold.samples.iter().filter(|(t, _)| (*t < hold_s / 2.0) == first);
            half.map(|&(_, k)| mib(k)).fold(f64::NAN, f64::max)
        };
        let (hold_first, hold_second) = (peak(true), peak(false));
        MemoryRow {
            name: name.to_owned(),
            kills,
            warm_end,
            second,
            last,
            ratio: last / second,
            max,
            slope,
            hold_first,
            hold_second,
            hold_ratio: hold_second / hold_first,
        }
    }

    /// The memory check of a `lambda` process: flat under load (except the batch, [`MAX_GROWTH`]) and flat
    /// in the hold. A NaN figure (a process without samples) fails.
    pub fn flat(&self) -> bool {
        let load = self.name == FOLLOWS_DATA || self.ratio <= MAX_GROWTH;
        load && self.hold_ratio <= MAX_HOLD_GROWTH
    }
}

/// Freshness of the probes produced in one phase, milliseconds; a probe never seen is infinitely late.
#[derive(Debug)]
pub struct Phase {
    pub probes: usize,
    pub never: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Phase {
    pub fn of<'a>(probes: impl Iterator<Item = &'a Probe>) -> Phase {
        let mut ms: Vec<f64> = probes.map(Probe::latency_ms).collect();
        ms.sort_by(f64::total_cmp);
        let at = |p: f64| ms.get(((ms.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
        Phase {
            probes: ms.len(),
            never: ms.iter().filter(|x| x.is_infinite()).count(),
            p50: at(0.5),
            p99: at(0.99),
            max: ms.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn json(&self) -> Value {
        // non-finite figures (never seen) become null
        json!({"probes": self.probes, "never_visible": self.never, "p50": self.p50, "p99": self.p99, "max": self.max})
    }
}

/// Milliseconds as the table shows them.
fn ms(x: f64) -> String {
    if x.is_infinite() {
        "never".into()
    } else if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.0}")
    }
}

/// The API's totals once the layers had caught up (or the wait gave up).
#[derive(Debug)]
pub struct Totals {
    pub probes: Option<i64>,
    pub probes_expected: i64,
    pub all: Option<i64>,
    pub all_expected: i64,
    pub wait_s: f64,
}

#[derive(Debug)]
pub struct Report<'a> {
    pub args: &'a Args,
    pub store: String,
    pub duration_s: f64,
    pub load: LoadReport,
    pub probes_delivered: u64,
    pub probes_failed: u64,
    pub kills: Vec<(f64, usize)>,
    pub memory: Vec<MemoryRow>,
    pub series: Vec<Series>,
    /// RSS samples of the hold, seconds since the hold started.
    pub hold_series: Vec<Series>,
    pub baseline: Phase,
    pub under_kills: Phase,
    pub doubled: usize,
    pub polls: u64,
    pub failed_polls: u64,
    pub totals: Totals,
    pub positions: Vec<Position>,
    /// Every probe: (seconds since the start at production, visible - produced in ms; infinite if never).
    pub latencies: Vec<(f64, f64)>,
}

/// Records the two consumer groups together may be behind the log ends at the end: `rate` x this (an open
/// segment or archive file holds its records uncommitted for a while; a stalled group falls behind by the
/// whole rate).
const LAG_SECONDS: f64 = 10.0;

impl Report<'_> {
    /// Every check with its outcome; the run fails if any is false.
    pub fn checks(&self) -> Vec<(&'static str, bool)> {
        let t = &self.totals;
        let behind = |committed: fn(&Position) -> Option<i64>| -> i64 {
            self.positions.iter().map(|p| p.log_end - committed(p).unwrap_or(0)).sum()
        };
        let most = (self.args.rate * LAG_SECONDS) as i64;
        vec![
            ("every probe visible", self.baseline.never + self.under_kills.never == 0),
            ("no probe counted twice", self.doubled == 0),
            ("probe total equals probes produced", t.probes == Some(t.probes_expected)),
            ("event total equals distinct events produced", t.all == Some(t.all_expected)),
            ("every delivery acknowledged", self.load.failed == 0 && self.probes_failed == 0),
            (
                "speed and archive groups caught up (each within 10 s of production of the log ends)",
                behind(|p| p.speed) <= most && behind(|p| p.archive) <= most,
            ),
            (
                "memory flat (last / 2nd third <= 1.25 under load, the batch excepted; 2nd / 1st half peak <= 1.10 in the hold)",
                self.memory[..ROSTER.len()].iter().all(MemoryRow::flat),
            ),
        ]
    }

    fn kill_list(&self) -> String {
        self.kills.iter().map(|(t, i)| format!("{t:.0} s {}", ROSTER[*i].0)).collect::<Vec<_>>().join(", ")
    }

    pub fn markdown(&self) -> String {
        let (a, d) = (self.args, self.duration_s);
        let mut o = String::new();
        let _ = writeln!(
            o,
            "## Soak: {} min at {} events/s, a SIGKILL every {} s from minute 1, restart after {} s (seed {})\n",
            a.minutes, a.rate, a.kill_every, a.restart_after, a.seed
        );
        let _ = writeln!(
            o,
            "{} events produced ({:.0}/s sustained, {} distinct), {} probes (one every {} ms), {} kills ({}); \
             store {}; RSS every {} s.\n",
            self.load.sent,
            self.load.sent as f64 / d,
            self.load.distinct,
            self.baseline.probes + self.under_kills.probes,
            PROBE_EVERY.as_millis(),
            self.kills.len(),
            self.kill_list(),
            self.store,
            SAMPLE_EVERY.as_secs()
        );
        let _ = writeln!(
            o,
            "| process | kills | RSS MiB at warm-up end (1/3) | mean RSS MiB, 2nd third (baseline) | mean RSS MiB, last third | last / 2nd third | max RSS MiB | slope MiB/min | hold: peak MiB, 1st half (baseline) | hold: peak MiB, 2nd half | hold: 2nd / 1st half |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for m in &self.memory {
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.3}{} | {:.1} | {} | {:.1} | {:.1} | {:.3} |",
                m.name,
                m.kills,
                m.warm_end,
                m.second,
                m.last,
                m.ratio,
                if m.name == FOLLOWS_DATA { " (follows the archive)" } else { "" },
                m.max,
                if m.slope.is_nan() { "-".into() } else { format!("{:+.2}", m.slope) },
                m.hold_first,
                m.hold_second,
                m.hold_ratio
            );
        }
        let _ = writeln!(
            o,
            "\nA killed process is a new one after its restart: its later samples start from a fresh heap, so the \
             slope is fitted to the samples of the process running at the end, from one third into the run or 30 s \
             after its last start, whichever is later. The memory check covers the lambda processes (the broker is \
             shown, not checked): the last third against the second under load, except the batch, whose every \
             run recomputes the whole archive (DESIGN.md §5) and so follows the events archived so far; and, for \
             every process, the peak RSS of the second half of the hold (after production stopped: the batch \
             recomputing the same archive every 10 s, the API read every 100 ms) against its first half, where \
             memory that grows with time, not data, would show.\n"
        );
        let _ = writeln!(
            o,
            "| freshness, visible - produced | probes | never visible | p50 ms | p99 ms | max ms | p99 vs baseline |\n|---|---|---|---|---|---|---|"
        );
        let (b, k) = (&self.baseline, &self.under_kills);
        let _ = writeln!(
            o,
            "| first 55 s, no kills (baseline) | {} | {} | {} | {} | {} | 1.00 |",
            b.probes,
            b.never,
            ms(b.p50),
            ms(b.p99),
            ms(b.max)
        );
        let ratio = if k.p99.is_finite() { format!("{:.2}", k.p99 / b.p99) } else { "never".into() };
        let _ = writeln!(
            o,
            "| 55 s to the end, under kills | {} | {} | {} | {} | {} | {ratio} |\n",
            k.probes,
            k.never,
            ms(k.p50),
            ms(k.p99),
            ms(k.max)
        );
        let t = &self.totals;
        let _ = writeln!(
            o,
            "Probes counted more than once: {}; API polls {} ({} failed: the server down or restarting). After \
             production stopped, the API's totals {} in {:.1} s: probes {} of {} (3 warm-up probes included), all \
             events {} of {}.\n",
            self.doubled,
            self.polls,
            self.failed_polls,
            if t.probes == Some(t.probes_expected) && t.all == Some(t.all_expected) {
                "were reached"
            } else {
                "were NOT reached"
            },
            t.wait_s,
            t.probes.map_or("no answer".into(), |n| n.to_string()),
            t.probes_expected,
            t.all.map_or("no answer".into(), |n| n.to_string()),
            t.all_expected
        );
        let behind = |c: Option<i64>, end: i64| end - c.unwrap_or(0);
        let _ = writeln!(
            o,
            "Then, records behind the log end (speed group / archive group): {}.\n",
            self.positions
                .iter()
                .map(|p| format!(
                    "partition {}: {} / {}",
                    p.partition,
                    behind(p.speed, p.log_end),
                    behind(p.archive, p.log_end)
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        let checks = self.checks();
        let _ = writeln!(
            o,
            "Checks: {}.",
            checks
                .iter()
                .map(|(n, ok)| format!("{n}: {}", if *ok { "ok" } else { "**FAILED**" }))
                .collect::<Vec<_>>()
                .join("; ")
        );
        o
    }

    pub fn json(&self) -> Value {
        let a = self.args;
        let t = &self.totals;
        json!({
            "args": {"rate": a.rate, "minutes": a.minutes, "kill_every_s": a.kill_every,
                     "restart_after_s": a.restart_after, "hold_s": a.hold, "seed": a.seed,
                     "killable": a.kill.iter().map(|&i| ROSTER[i].0).collect::<Vec<_>>(),
                     "store": self.store, "batch_cron": crate::BATCH_CRON, "sample_every_s": SAMPLE_EVERY.as_secs()},
            "events": {"sent": self.load.sent, "distinct": self.load.distinct,
                       "delivered": self.load.delivered, "failed": self.load.failed},
            "kills": self.kills.iter().map(|(t, i)| json!({"at_s": t, "process": ROSTER[*i].0})).collect::<Vec<_>>(),
            "memory": self.memory.iter().zip(self.series.iter().zip(&self.hold_series)).map(|(m, (s, h))| json!({
                "process": m.name, "kills": m.kills, "warm_up_end_mib": m.warm_end,
                "second_third_mean_mib": m.second, "last_third_mean_mib": m.last, "ratio": m.ratio, "max_mib": m.max,
                "slope_mib_per_min": m.slope, "hold_first_half_peak_mib": m.hold_first,
                "hold_second_half_peak_mib": m.hold_second, "hold_ratio": m.hold_ratio,
                "samples_s_kib": s.samples.iter().map(|(t, k)| json!([t, k])).collect::<Vec<_>>(),
                "hold_samples_s_kib": h.samples.iter().map(|(t, k)| json!([t, k])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "freshness_ms": {
                "baseline_first_55_s": self.baseline.json(),
                "under_kills": self.under_kills.json(),
                "p99_ratio": self.under_kills.p99 / self.baseline.p99,
            },
            "probes": {"delivered": self.probes_delivered, "failed": self.probes_failed,
                       "counted_twice": self.doubled, "polls": self.polls, "failed_polls": self.failed_polls,
                       "at_s_latency_ms": self.latencies.iter().map(|(t, ms)| json!([t, ms])).collect::<Vec<_>>()},
            "totals": {"probes": t.probes, "probes_expected": t.probes_expected, "all": t.all,
                       "all_expected": t.all_expected, "wait_s": t.wait_s},
            "positions_at_end": self.positions.iter().map(|p| json!({
                "partition": p.partition, "log_end": p.log_end, "speed_committed": p.speed,
                "archive_committed": p.archive,
            })).collect::<Vec<_>>(),
            "checks": self.checks().iter().map(|(n, ok)| (n.to_string(), json!(ok))).collect::<serde_json::Map<_, _>>(),
        })
    }
}
