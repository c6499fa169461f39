//! Percentiles, and the table plus JSON line every scenario prints.

use std::time::Duration;

/// Latencies of one run, in the order they were measured.
#[derive(Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn push(&mut self, latency: Duration) {
        self.0.push(latency);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p`-th percentile (0–100) in milliseconds, nearest-rank.
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1].as_secs_f64() * 1000.0
    }
}

/// A scenario's figures, by name, in the order they are printed.
pub type Figures = Vec<(&'static str, serde_json::Value)>;

/// The figures of several runs of one scenario as one: each number the median of the runs (the
/// mean of the middle two for an even count), anything else as the first run had it; then
/// `runs`, and `spread`, each number's lowest and highest.
pub fn median(runs: &[Figures]) -> Figures {
    let Some(first) = runs.first() else {
        return Figures::new();
    };
    if runs.len() == 1 {
        return first.clone();
    }
    let mut merged = Figures::new();
    let mut spread = serde_json::Map::new();
    for (index, (name, value)) in first.iter().enumerate() {
        let mut numbers: Vec<f64> = runs
            .iter()
            .filter_map(|run| run.get(index).and_then(|(_, value)| value.as_f64()))
            .collect();
        if numbers.len() != runs.len() || value.is_boolean() {
            merged.push((name, value.clone()));
            continue;
        }
        numbers.sort_by(f64::total_cmp);
        let (lowest, highest) = (numbers[0], numbers[numbers.len() - 1]);
        if lowest == highest {
            // A setting, or a figure every run agreed on: as it was (integers stay integers).
            merged.push((name, value.clone()));
            continue;
        }
        let middle = numbers.len() / 2;
        let median = if numbers.len() % 2 == 1 {
            numbers[middle]
        } else {
            (numbers[middle - 1] + numbers[middle]) / 2.0
        };
        spread.insert((*name).into(), serde_json::json!([lowest, highest]));
        merged.push((name, serde_json::json!(median)));
    }
    merged.push(("runs", serde_json::json!(runs.len())));
    merged.push(("spread", serde_json::Value::Object(spread)));
    merged
}

/// Prints a two-column table, then the same figures as one JSON line.
pub fn print(scenario: &str, figures: &[(&str, serde_json::Value)]) {
    println!("\n{scenario}");
    let width = figures
        .iter()
        .map(|(name, _)| name.len())
        .max()
        .unwrap_or(0);
    for (name, value) in figures {
        let shown = match value {
            serde_json::Value::Number(n) if n.is_f64() => {
                format!("{:.3}", n.as_f64().unwrap_or(0.0))
            }
            other => other.to_string(),
        };
        println!("  {name:<width$}  {shown}");
    }
    let mut json = serde_json::Map::new();
    json.insert("scenario".into(), scenario.into());
    for (name, value) in figures {
        json.insert((*name).into(), value.clone());
    }
    println!("{}", serde_json::Value::Object(json));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_runs_report_each_figure_s_median_and_spread() {
        let run = |rate: f64, jobs: u64| -> Figures {
            vec![
                ("jobs", serde_json::json!(jobs)),
                ("jobs_per_sec", serde_json::json!(rate)),
                ("submit_and_watch", serde_json::json!(true)),
            ]
        };
        let merged = median(&[run(3.0, 10), run(1.0, 10), run(2.0, 10)]);
        let get = |name: &str| merged.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        assert_eq!(get("jobs_per_sec"), serde_json::json!(2.0));
        assert_eq!(get("jobs"), serde_json::json!(10));
        assert_eq!(get("submit_and_watch"), serde_json::json!(true));
        assert_eq!(get("runs"), serde_json::json!(3));
        assert_eq!(
            get("spread"),
            serde_json::json!({"jobs_per_sec": [1.0, 3.0]})
        );
        let even = median(&[run(1.0, 10), run(4.0, 10)]);
        assert_eq!(even[1].1, serde_json::json!(2.5));
        assert_eq!(median(&[run(5.0, 1)]), run(5.0, 1));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut latencies = Latencies::default();
        for ms in 1..=100 {
            latencies.push(Duration::from_millis(ms));
        }
        assert_eq!(latencies.percentile_ms(50.0), 50.0);
        assert_eq!(latencies.percentile_ms(99.0), 99.0);
        assert_eq!(latencies.percentile_ms(100.0), 100.0);
        assert!(Latencies::default().percentile_ms(50.0).is_nan());
    }
}
