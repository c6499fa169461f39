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
