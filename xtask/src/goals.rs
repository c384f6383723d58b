//! The goals next to what a run measured: met, or missed by how much.

use std::fmt::Write as _;

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    /// What the issue asks, in words.
    pub goal: String,
    pub measured: Option<f64>,
    pub target: f64,
    pub unit: &'static str,
    /// How `measured` must compare with `target`: `>=`, `<=` or `<`.
    pub comparison: &'static str,
    /// `met`, `missed by N%` or `not measured (why)`.
    pub verdict: String,
}

impl Goal {
    /// A goal met when `measured >= target`.
    pub fn at_least(
        goal: impl Into<String>,
        measured: Option<f64>,
        target: f64,
        unit: &'static str,
    ) -> Self {
        Self::new(goal.into(), measured, target, unit, ">=")
    }

    /// A goal met when `measured <= target`.
    pub fn at_most(
        goal: impl Into<String>,
        measured: Option<f64>,
        target: f64,
        unit: &'static str,
    ) -> Self {
        Self::new(goal.into(), measured, target, unit, "<=")
    }

    /// A goal met when `measured < target`.
    pub fn below(
        goal: impl Into<String>,
        measured: Option<f64>,
        target: f64,
        unit: &'static str,
    ) -> Self {
        Self::new(goal.into(), measured, target, unit, "<")
    }

    fn new(
        goal: String,
        measured: Option<f64>,
        target: f64,
        unit: &'static str,
        comparison: &'static str,
    ) -> Self {
        let met = |m: f64| match comparison {
            ">=" => m >= target,
            "<=" => m <= target,
            _ => m < target,
        };
        let verdict = match measured {
            None => "not measured".to_string(),
            Some(m) if met(m) => "met".to_string(),
            Some(m) => format!("missed by {:.1}%", (m - target).abs() / target * 100.0),
        };
        Self {
            goal,
            measured,
            target,
            unit,
            comparison,
            verdict,
        }
    }

    /// Says why nothing was measured.
    #[must_use]
    pub fn because(mut self, why: &str) -> Self {
        if self.measured.is_none() {
            self.verdict = format!("not measured ({why})");
        }
        self
    }
}

/// The markdown table of goals.
pub fn markdown(goals: &[Goal]) -> String {
    let mut md = String::from("| goal | target | measured | verdict |\n|---|---:|---:|---|\n");
    for g in goals {
        let sign = g.comparison;
        let measured = g
            .measured
            .map_or_else(|| "-".to_string(), |m| format!("{m:.3} {}", g.unit));
        let _ = writeln!(
            md,
            "| {} | {sign} {} {} | {measured} | {} |",
            g.goal, g.target, g.unit, g.verdict
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_say_met_or_by_how_much() {
        assert_eq!(Goal::at_least("x", Some(0.98), 0.97, "x").verdict, "met");
        assert_eq!(
            Goal::at_least("x", Some(0.485), 0.97, "x").verdict,
            "missed by 50.0%"
        );
        assert_eq!(Goal::below("p99", Some(20.0), 50.0, "ms").verdict, "met");
        assert_eq!(
            Goal::below("p99", Some(75.0), 50.0, "ms").verdict,
            "missed by 50.0%"
        );
        assert_eq!(
            Goal::below("p99", None, 50.0, "ms")
                .because("skipped")
                .verdict,
            "not measured (skipped)"
        );
    }
}
