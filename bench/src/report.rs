//! The results: one row per figure, with the baseline it is compared to and
//! the goal it is held against; printed as a table or as JSON.

use serde::Serialize;

/// What a figure must be to meet its goal.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// tokend / baseline at most this.
    RatioAtMost(f64),
    /// tokend / baseline at least this.
    RatioAtLeast(f64),
    /// tokend − baseline at most this (in the row's unit).
    DiffAtMost(f64),
    /// The figure itself at most this.
    AtMost(f64),
    /// The figure itself at least this.
    AtLeast(f64),
    /// No goal: shown for information.
    None,
}

impl Goal {
    fn text(self) -> Option<String> {
        match self {
            Goal::RatioAtMost(x) => Some(format!("ratio <= {x}")),
            Goal::RatioAtLeast(x) => Some(format!("ratio >= {x}")),
            Goal::DiffAtMost(x) => Some(format!("diff <= {x}")),
            Goal::AtMost(x) => Some(format!("<= {x}")),
            Goal::AtLeast(x) => Some(format!(">= {x}")),
            Goal::None => None,
        }
    }

    fn met(self, value: f64, baseline: Option<f64>) -> Option<bool> {
        let b = baseline.unwrap_or(f64::NAN);
        match self {
            Goal::RatioAtMost(x) => Some(value / b <= x),
            Goal::RatioAtLeast(x) => Some(value / b >= x),
            Goal::DiffAtMost(x) => Some(value - b <= x),
            Goal::AtMost(x) => Some(value <= x),
            Goal::AtLeast(x) => Some(value >= x),
            Goal::None => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub shape: String,
    pub unit: &'static str,
    pub tokend: f64,
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
    pub diff: Option<f64>,
    pub goal: Option<String>,
    pub met: Option<bool>,
}

impl Row {
    /// A figure, optionally beside its baseline, held against `goal`.
    pub fn new(
        shape: impl Into<String>,
        unit: &'static str,
        tokend: f64,
        baseline: Option<f64>,
        goal: Goal,
    ) -> Row {
        Row {
            shape: shape.into(),
            unit,
            tokend,
            baseline,
            ratio: baseline.map(|b| tokend / b),
            diff: matches!(goal, Goal::DiffAtMost(_))
                .then(|| baseline.map(|b| tokend - b))
                .flatten(),
            goal: goal.text(),
            met: goal.met(tokend, baseline),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub unix_time: u64,
    pub cores: usize,
    pub kernel: String,
    pub settings: serde_json::Value,
    pub rows: Vec<Row>,
    /// Problems that make the run fail (not noise: wrong answers, errors).
    pub errors: Vec<String>,
    /// Things worth knowing that are not figures.
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(settings: serde_json::Value) -> Report {
        Report {
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            settings,
            ..Report::default()
        }
    }

    pub fn push(&mut self, row: Row) {
        progress(&format!(
            "  {}: {} {}",
            row.shape,
            number(row.tokend),
            row.unit
        ));
        self.rows.push(row);
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }

    /// The table: shape, tokend, baseline, ratio (or difference), goal, met.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<56} {:>11} {:>11} {:>9}  {:<6} {:<16} {}\n",
            "shape", "tokend", "baseline", "ratio", "unit", "goal", "met"
        );
        for r in &self.rows {
            let compare = match (r.diff, r.ratio) {
                (Some(d), _) => format!("{:+.3}", d),
                (None, Some(x)) => format!("{x:.2}x"),
                _ => "-".into(),
            };
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            out.push_str(&format!(
                "{:<56} {:>11} {:>11} {:>9}  {:<6} {:<16} {}\n",
                r.shape,
                number(r.tokend),
                r.baseline.map_or("-".into(), number),
                compare,
                r.unit,
                r.goal.as_deref().unwrap_or(""),
                met
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        for e in &self.errors {
            out.push_str(&format!("ERROR: {e}\n"));
        }
        out
    }
}

/// Prints `message` on stderr after the seconds elapsed since the first call.
pub fn progress(message: &str) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    eprintln!("[{:6.1}s] {message}", start.elapsed().as_secs_f64());
}

/// A figure with about four significant digits.
fn number(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}
