//! The bench's table: one row per measured quantity, Warren, Nebula and their ratio.
//!
//! Bench layer. A value that could not be measured is `n/a`, with the reason in the notes.

use std::fmt;

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Which path (`direct` or `relayed`).
    pub path: &'static str,
    /// What is measured, with its unit.
    pub metric: String,
    /// Warren's value.
    pub warren: Option<f64>,
    /// Nebula's value.
    pub nebula: Option<f64>,
    /// Decimal places to print.
    pub decimals: usize,
    /// Whether more is better (throughput) or less is (RTT, CPU, memory): shown next to the
    /// ratio so that it reads the right way.
    pub higher_is_better: bool,
}

/// The whole report.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Rows in print order.
    pub rows: Vec<Row>,
    /// Free-form lines printed under the table (setup, raw path, what failed and why).
    pub notes: Vec<String>,
    /// `perf report` tops, `(what was recorded, report lines)`, printed last.
    pub perf: Vec<(String, String)>,
}

impl Table {
    /// Adds a row.
    pub fn row(
        &mut self,
        path: &'static str,
        metric: impl Into<String>,
        warren: Option<f64>,
        nebula: Option<f64>,
        decimals: usize,
        higher_is_better: bool,
    ) {
        self.rows.push(Row {
            path,
            metric: metric.into(),
            warren,
            nebula,
            decimals,
            higher_is_better,
        });
    }

    /// Adds a note.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "n/a".to_string(),
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .rows
            .iter()
            .map(|r| r.metric.len())
            .max()
            .unwrap_or(10)
            .max(10);
        writeln!(
            f,
            "\n{:<8} {:<width$} {:>10} {:>10} {:>14}",
            "path", "metric", "warren", "nebula", "warren/nebula"
        )?;
        writeln!(f, "{}", "-".repeat(8 + width + 10 + 10 + 14 + 4))?;
        for r in &self.rows {
            let ratio = match (r.warren, r.nebula) {
                // A share of bytes is a path check, not a score.
                _ if r.metric.ends_with("(%)") => String::new(),
                (Some(w), Some(n)) if n > 0.0 && w.is_finite() && n.is_finite() => {
                    let better = if r.higher_is_better {
                        "(more=better)"
                    } else {
                        "(less=better)"
                    };
                    format!("{:>7.2}x {better}", w / n)
                }
                _ => format!("{:>7}", "n/a"),
            };
            writeln!(
                f,
                "{:<8} {:<width$} {:>10} {:>10} {ratio}",
                r.path,
                r.metric,
                cell(r.warren, r.decimals),
                cell(r.nebula, r.decimals),
            )?;
        }
        if !self.notes.is_empty() {
            writeln!(f)?;
            for n in &self.notes {
                writeln!(f, "- {n}")?;
            }
        }
        for (what, top) in &self.perf {
            writeln!(f, "\nperf: {what}:\n{top}")?;
        }
        Ok(())
    }
}
