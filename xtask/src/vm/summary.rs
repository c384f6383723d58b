//! Reading the results share: progress while the guest runs, and the
//! summary table after it.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use super::guest::stem;

/// What became of one suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// The test executable's exit code (101 when a test failed).
    Failed(i32),
    /// Started, never finished (the guest hung, crashed or timed out).
    Unfinished,
    NotRun,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Passed => write!(f, "passed"),
            Self::Failed(rc) => write!(f, "FAILED (exit {rc})"),
            Self::Unfinished => write!(f, "UNFINISHED"),
            Self::NotRun => write!(f, "not run"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SuiteResult {
    pub name: String,
    pub outcome: Outcome,
    /// Seconds by the guest's clock.
    pub secs: Option<f64>,
    /// What the test executable printed (so far, when unfinished).
    pub output: String,
}

/// `rc start end` as the run script writes it: (rc, seconds).
pub fn parse_done(text: &str) -> Option<(i32, f64)> {
    let mut it = text.split_whitespace();
    let rc = it.next()?.parse().ok()?;
    let t0: f64 = it.next()?.parse().ok()?;
    let t1: f64 = it.next()?.parse().ok()?;
    Some((rc, (t1 - t0).max(0.0)))
}

fn path(share: &Path, index: usize, name: &str, ext: &str) -> PathBuf {
    share.join(format!("{}.{ext}", stem(index, name)))
}

fn result(share: &Path, index: usize, name: &str) -> (Outcome, Option<f64>) {
    let done = std::fs::read_to_string(path(share, index, name, "done")).ok();
    match done.as_deref().and_then(parse_done) {
        Some((0, secs)) => (Outcome::Passed, Some(secs)),
        Some((rc, secs)) => (Outcome::Failed(rc), Some(secs)),
        None if path(share, index, name, "start").exists() => (Outcome::Unfinished, None),
        None => (Outcome::NotRun, None),
    }
}

/// Every suite's result from the share.
pub fn collect(share: &Path, names: &[String]) -> Vec<SuiteResult> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (outcome, secs) = result(share, i, name);
            let output = std::fs::read(path(share, i, name, "out"))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            SuiteResult {
                name: name.clone(),
                outcome,
                secs,
                output,
            }
        })
        .collect()
}

/// The summary table.
pub fn table(results: &[SuiteResult]) -> String {
    let rows: Vec<[String; 3]> = results
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.outcome.to_string(),
                r.secs.map_or_else(|| "-".into(), |s| format!("{s:.1} s")),
            ]
        })
        .collect();
    let header = ["suite".to_string(), "result".into(), "time".into()];
    let width = |c: usize| {
        rows.iter()
            .chain([&header])
            .map(|r| r[c].len())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1) = (width(0), width(1));
    let mut out = String::new();
    for [a, b, c] in std::iter::once(&header).chain(&rows) {
        let _ = writeln!(out, "{a:<w0$}  {b:<w1$}  {c}");
    }
    out
}

/// The last `n` lines of `bytes`, as text.
pub fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Says on stderr when a suite starts and ends, while the guest runs.
pub struct Progress {
    share: PathBuf,
    names: Vec<String>,
    seen: Vec<Outcome>,
}

impl Progress {
    pub fn new(share: &Path, names: &[String]) -> Self {
        Self {
            share: share.to_path_buf(),
            names: names.to_vec(),
            seen: vec![Outcome::NotRun; names.len()],
        }
    }

    pub fn poll(&mut self) {
        let n = self.names.len();
        for (i, name) in self.names.iter().enumerate() {
            let (now, secs) = result(&self.share, i, name);
            if now == self.seen[i] {
                continue;
            }
            if self.seen[i] == Outcome::NotRun && now != Outcome::NotRun {
                eprintln!("==> [{}/{n}] {name}", i + 1);
            }
            if let Some(s) = secs {
                eprintln!("    {name}: {now} in {s:.1} s");
            }
            self.seen[i] = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_lines_parse_to_code_and_seconds() {
        assert_eq!(parse_done("0 100.25 103.75\n"), Some((0, 3.5)));
        assert_eq!(parse_done("101 1.0 2.0"), Some((101, 1.0)));
        assert_eq!(parse_done("0 100.25"), None, "half-written");
        assert_eq!(parse_done(""), None);
    }

    #[test]
    fn results_come_from_the_share_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let names: Vec<String> = ["p:ok", "p:bad", "p:hung", "p:never"]
            .map(String::from)
            .into();
        std::fs::write(d.join("00-p-ok.done"), "0 10.0 12.5\n").unwrap();
        std::fs::write(d.join("01-p-bad.done"), "101 12.5 13.0\n").unwrap();
        std::fs::write(d.join("01-p-bad.out"), "test x ... FAILED\n").unwrap();
        std::fs::write(d.join("02-p-hung.start"), "").unwrap();
        std::fs::write(d.join("02-p-hung.out"), "running 3 tests\n").unwrap();
        let r = collect(d, &names);
        let outcomes: Vec<_> = r.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Passed,
                Outcome::Failed(101),
                Outcome::Unfinished,
                Outcome::NotRun
            ]
        );
        assert_eq!(r[0].secs, Some(2.5));
        assert_eq!(r[1].output, "test x ... FAILED\n");
        assert_eq!(r[2].output, "running 3 tests\n");
    }

    #[test]
    fn table_aligns_columns() {
        let r = |name: &str, outcome, secs| SuiteResult {
            name: name.into(),
            outcome,
            secs,
            output: String::new(),
        };
        let t = table(&[
            r("ciliate-lab:vm_smoke", Outcome::Passed, Some(2.04)),
            r(
                "ciliate-datapath:programs",
                Outcome::Failed(101),
                Some(40.0),
            ),
            r("ciliate-lab:vm_modes", Outcome::NotRun, None),
        ]);
        assert_eq!(
            t,
            "suite                      result             time\n\
             ciliate-lab:vm_smoke       passed             2.0 s\n\
             ciliate-datapath:programs  FAILED (exit 101)  40.0 s\n\
             ciliate-lab:vm_modes       not run            -\n"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail(b"a", 5), "a");
        assert_eq!(tail(b"", 5), "");
    }
}
