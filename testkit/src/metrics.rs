//! Reading what a process serves on `/metrics`.

/// The value of `series` (a metric name with its labels, exactly as
/// rendered: `name{label="value"}`) in a Prometheus text exposition.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_read_by_its_exact_name_and_labels() {
        let text = "# TYPE a_total counter\na_total 3\na_total_x 9\nb{layer=\"l1\"} 2\nb{layer=\"l2\"} 0\n";
        assert_eq!(sample(text, "a_total"), Some(3.0));
        assert_eq!(sample(text, r#"b{layer="l2"}"#), Some(0.0));
        assert_eq!(sample(text, "b"), None);
        assert_eq!(sample(text, "c_total"), None);
    }
}
