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
/// mean of the middle two for an even count); a table (rows of a label and numbers, as
/// redis-cost's by command) the median of each number by label, in the first run's order;
/// anything else as the first run had it; then `runs`, and `spread`, each number's lowest and
/// highest.
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
        if let Some(rows) = table_rows(value) {
            let tables: Vec<&Vec<serde_json::Value>> = runs
                .iter()
                .filter_map(|run| run.get(index)?.1.as_array())
                .collect();
            merged.push((name, median_rows(rows, &tables)));
            continue;
        }
        if numbers.len() != runs.len() || value.is_boolean() {
            merged.push((name, value.clone()));
            continue;
        }
        let lowest = numbers.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = numbers.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if lowest == highest {
            // A setting, or a figure every run agreed on: as it was (integers stay integers).
            merged.push((name, value.clone()));
            continue;
        }
        spread.insert((*name).into(), serde_json::json!([lowest, highest]));
        merged.push((name, serde_json::json!(middle(&mut numbers))));
    }
    merged.push(("runs", serde_json::json!(runs.len())));
    merged.push(("spread", serde_json::Value::Object(spread)));
    merged
}

/// The median of `numbers` (the mean of the middle two for an even count).
fn middle(numbers: &mut [f64]) -> f64 {
    numbers.sort_by(f64::total_cmp);
    let middle = numbers.len() / 2;
    if numbers.len() % 2 == 1 {
        numbers[middle]
    } else {
        (numbers[middle - 1] + numbers[middle]) / 2.0
    }
}

/// The rows of a figure that is a table: arrays, each a label and numbers.
fn table_rows(value: &serde_json::Value) -> Option<&Vec<serde_json::Value>> {
    let rows = value.as_array()?;
    rows.iter()
        .all(|row| row.get(0).is_some_and(serde_json::Value::is_string))
        .then_some(rows)
}

/// `rows` (the first run's table) with each number the median of that label's row in every
/// run of `tables` that has it.
fn median_rows(
    rows: &[serde_json::Value],
    tables: &[&Vec<serde_json::Value>],
) -> serde_json::Value {
    let merged = rows.iter().map(|row| {
        let label = &row[0];
        let same: Vec<&serde_json::Value> = tables
            .iter()
            .filter_map(|table| table.iter().find(|other| other.get(0) == Some(label)))
            .collect();
        let columns = row.as_array().map_or(0, Vec::len);
        let mut merged = vec![label.clone()];
        for column in 1..columns {
            let mut numbers: Vec<f64> = same
                .iter()
                .filter_map(|other| other.get(column)?.as_f64())
                .collect();
            merged.push(if numbers.is_empty() {
                row[column].clone()
            } else {
                serde_json::json!(middle(&mut numbers))
            });
        }
        serde_json::Value::Array(merged)
    });
    serde_json::Value::Array(merged.collect())
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
            // A table of its own (rows of values): one row per line.
            serde_json::Value::Array(rows) if rows.iter().all(serde_json::Value::is_array) => rows
                .iter()
                .map(|row| row.to_string())
                .collect::<Vec<_>>()
                .join(&format!("\n  {:width$}  ", "")),
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
        let table = |rows: serde_json::Value| -> Figures { vec![("by", rows)] };
        let merged = median(&[
            table(serde_json::json!([["a", 1.0, 9.0], ["b", 2.0, 1.0]])),
            table(serde_json::json!([["b", 4.0, 3.0], ["a", 3.0, 5.0]])),
            table(serde_json::json!([["a", 2.0, 7.0]])),
        ]);
        assert_eq!(
            merged[0].1,
            serde_json::json!([["a", 2.0, 7.0], ["b", 3.0, 2.0]]),
            "each number the median of its label's rows, in the first run's order"
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
