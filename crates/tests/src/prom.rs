//! `/metrics` as the tests read it: fetched, parsed with `prometheus-parse` (so the text must
//! be valid Prometheus exposition format), and flattened for lookups.

use std::collections::HashMap;

/// Samples by (metric name, sorted labels): counters, gauges and untyped (a histogram's
/// `_count` and `_sum`).
pub type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// Fetches `url`, parses it as Prometheus text (panicking if it is not), and returns the
/// flattened samples and the parsed ones (for histograms).
pub async fn scrape_all(url: &str) -> (Samples, Vec<prometheus_parse::Sample>) {
    let text = reqwest::get(url)
        .await
        .expect("scrape /metrics")
        .error_for_status()
        .expect("/metrics answers 200")
        .text()
        .await
        .expect("read /metrics");
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("/metrics parses as Prometheus text");
    let flat = parsed
        .samples
        .iter()
        .filter_map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => return None,
            };
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            Some(((s.metric.clone(), labels), value))
        })
        .collect();
    (flat, parsed.samples)
}

/// [`scrape_all`]'s flattened samples.
pub async fn scrape(url: &str) -> Samples {
    scrape_all(url).await.0
}

/// The value of `name` with exactly `labels` (in any order), 0 if absent.
pub fn get(m: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    m.get(&(name.to_owned(), want)).copied().unwrap_or(0.0)
}
