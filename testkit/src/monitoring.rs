//! The metric names the monitoring files use (`deploy/grafana/sendonce.json`
//! and `deploy/prometheus/alerts.yml`), and the names a process exports on
//! `/metrics`, so tests can check against live binaries that a renamed
//! metric cannot silently blank a panel or silence an alert.
//!
//! A name is what Prometheus stores as `__name__`: a histogram's queries use
//! `name_bucket` (or `_sum`, `_count`), and its exposition renders exactly
//! those series, so used and exported names are compared as they are.
//!
//! The rules file is read without a YAML parser (none is in the lock file):
//! a line scan for `expr:` keys, each either on one line (plain or quoted)
//! or a `|`/`>` block of the lines indented below it. That is the format of
//! our own file, and [`rule_expressions`] checks it found one expression per
//! rule, so a rule written otherwise fails instead of going unchecked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

/// Prefix of every metric the binaries name.
const PREFIX: &str = "sendonce_";

/// The Grafana dashboard.
pub fn dashboard_path() -> PathBuf {
    repository_root().join("deploy/grafana/sendonce.json")
}

/// The Prometheus alert rules.
pub fn alert_rules_path() -> PathBuf {
    repository_root().join("deploy/prometheus/alerts.yml")
}

fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lies in the repository")
        .to_path_buf()
}

/// Every `sendonce_*` metric name the dashboard's queries and the alert
/// rules' expressions use, each with where: the file, then the panel title
/// or variable name, or the rule's name.
///
/// # Panics
///
/// If a file cannot be read or parsed, a dashboard query has no
/// expression, or the rules file holds a rule without an `expr:` line.
pub fn metric_names_used() -> BTreeMap<String, BTreeSet<String>> {
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    for (place, query) in dashboard_queries(&dashboard) {
        for name in metric_names(&query) {
            used.entry(name)
                .or_default()
                .insert(format!("sendonce.json: {place}"));
        }
    }
    let path = alert_rules_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    for (rule, expr) in rule_expressions(&text) {
        for name in metric_names(&expr) {
            used.entry(name)
                .or_default()
                .insert(format!("alerts.yml: {rule}"));
        }
    }
    used
}

/// Every query of a Grafana dashboard, with the title of the panel (or the
/// name of the variable) holding it: the `expr` of every target and the
/// `query` and `definition` of every templating variable, in nested rows
/// too.
///
/// # Panics
///
/// If a panel's target has no `expr` (a query Grafana would run blank).
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = variable["name"].as_str().unwrap_or("?");
        for key in ["query", "definition"] {
            // The query is a string, or an object holding one.
            let query = &variable[key];
            for text in [query.as_str(), query["query"].as_str()]
                .into_iter()
                .flatten()
            {
                queries.push((format!("variable {name}"), text.to_owned()));
            }
        }
    }
    collect_panel_queries(&dashboard["panels"], &mut queries);
    queries
}

fn collect_panel_queries(panels: &Value, queries: &mut Vec<(String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without an expr: {target}"));
            queries.push((format!("panel {title:?}"), expr.to_owned()));
        }
        collect_panel_queries(&panel["panels"], queries);
    }
}

/// Every rule's `expr` in a Prometheus rules file, with the rule's name
/// (`alert:` or `record:`), by the line scan the module describes.
///
/// # Panics
///
/// If the number of expressions found is not the number of rules.
pub fn rule_expressions(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut rules = 0;
    let mut rule = String::from("?");
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let key = line.trim_start().trim_start_matches("- ");
        if let Some(name) = key
            .strip_prefix("alert:")
            .or_else(|| key.strip_prefix("record:"))
        {
            rules += 1;
            name.trim().clone_into(&mut rule);
        }
        if let Some(value) = key.strip_prefix("expr:") {
            let value = value.trim();
            assert!(
                !value.is_empty(),
                "{rule}: an expr continued on the next lines; write it on its line or as a | block"
            );
            if value.starts_with('|') || value.starts_with('>') {
                let mut block = String::new();
                while let Some(next) = lines.get(i + 1) {
                    if !next.trim().is_empty() && indent(next) <= indent(line) {
                        break;
                    }
                    block.push_str(next.trim());
                    block.push('\n');
                    i += 1;
                }
                found.push((rule.clone(), block));
            } else {
                found.push((rule.clone(), unquote(value)));
            }
        }
        i += 1;
    }
    assert_eq!(
        found.len(),
        rules,
        "{rules} rules but {} `expr:` lines were found: write each expr on its line or as a | block",
        found.len()
    );
    found
}

/// A YAML scalar without its quotes (a quoted PromQL string keeps its own).
fn unquote(value: &str) -> String {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner.replace("\\\"", "\"").replace("''", "'");
        }
    }
    value.to_owned()
}

/// Every identifier in `query` that starts with `sendonce_`, label values
/// included: a `{__name__="sendonce_x"}` names a metric too, and a regex
/// over names (`sendonce_.*`) is reported as `sendonce_`, which no binary
/// exports, so queries name their metrics in full.
pub fn metric_names(query: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (at, _) in query.match_indices(PREFIX) {
        if query[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let end = query[at..]
            .find(|c: char| !is_ident(c))
            .map_or(query.len(), |n| at + n);
        names.insert(query[at..end].to_owned());
    }
    names
}

/// The name of every series in a Prometheus text exposition (a histogram's
/// as `_bucket`, `_sum` and `_count`).
pub fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Whether `name`, as a query uses it, is a series of `metric` (a
/// histogram's `_bucket`, `_sum` or `_count` included).
pub fn is_series_of(name: &str, metric: &str) -> bool {
    name == metric
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| name.strip_suffix(suffix) == Some(metric))
}

/// `used` names not in `exported`, each with where it is used, one per
/// line: for a test's failure message.
pub fn unexported(
    used: &BTreeMap<String, BTreeSet<String>>,
    exported: &BTreeSet<String>,
) -> String {
    used.iter()
        .filter(|(name, _)| !exported.contains(*name))
        .map(|(name, places)| {
            let places: Vec<&str> = places.iter().map(String::as_str).collect();
            format!("{name} (in {})\n", places.join("; "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_are_whole_identifiers_with_the_prefix() {
        let query = r#"histogram_quantile(0.99, sum by (le) (rate(sendonce_a_seconds_bucket{job=~"$job"}[5m]))) / sum(x_sendonce_b) and on() {__name__="sendonce_c_total"} or sendonce_d:rate5m"#;
        let names: Vec<String> = metric_names(query).into_iter().collect();
        assert_eq!(
            names,
            [
                "sendonce_a_seconds_bucket",
                "sendonce_c_total",
                "sendonce_d:rate5m"
            ]
        );
        assert_eq!(
            metric_names(r#"{__name__=~"sendonce_.*"}"#),
            BTreeSet::from(["sendonce_".to_owned()])
        );
    }

    #[test]
    fn every_rule_expression_is_found_on_its_line_quoted_or_in_a_block() {
        let yaml = r#"groups:
  - name: g
    rules:
      - alert: One
        expr: sum(sendonce_one_total) > 0
        for: 5m
      - alert: Two
        expr: |
          sum(rate(sendonce_two_total[5m]))

            / sum(rate(sendonce_three_total[5m])) > 0.5
        labels: {severity: page}
      - record: job:four
        expr: "sum(sendonce_four{a=\"b\"})"
      - expr: 'sendonce_five'
        alert: Five
"#;
        let found = rule_expressions(yaml);
        let names: Vec<(&str, BTreeSet<String>)> = found
            .iter()
            .map(|(rule, expr)| (rule.as_str(), metric_names(expr)))
            .collect();
        let set = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
        assert_eq!(
            names,
            [
                ("One", set(&["sendonce_one_total"])),
                ("Two", set(&["sendonce_two_total", "sendonce_three_total"])),
                ("job:four", set(&["sendonce_four"])),
                // An `expr:` before its rule's name is found, though named
                // after the rule before it.
                ("job:four", set(&["sendonce_five"])),
            ]
        );
        assert!(found[1].1.contains("> 0.5"), "{:?}", found[1]);
        assert_eq!(found[2].1, r#"sum(sendonce_four{a="b"})"#);
    }

    #[test]
    #[should_panic(expected = "B: an expr continued on the next lines")]
    fn an_expression_the_scan_cannot_read_fails() {
        rule_expressions("- alert: A\n  expr: a\n- alert: B\n  expr:\n    b\n");
    }

    #[test]
    #[should_panic(expected = "2 rules but 1 `expr:` lines")]
    fn a_rule_whose_expression_the_scan_misses_fails() {
        rule_expressions("- alert: A\n  expr: a\n- alert: B\n  'expr': b\n");
    }

    #[test]
    fn dashboard_queries_come_from_targets_nested_rows_and_variables() {
        let dashboard = json!({
            "templating": {"list": [
                {"name": "ds", "type": "datasource", "query": "prometheus"},
                {"name": "job", "definition": "label_values(sendonce_v, job)",
                 "query": {"query": "label_values(sendonce_w, job)"}}
            ]},
            "panels": [
                {"title": "A", "targets": [{"expr": "sendonce_a"}, {"expr": "sendonce_b"}]},
                {"title": "Row", "type": "row", "panels": [
                    {"title": "C", "targets": [{"expr": "sendonce_c"}]}
                ]}
            ]
        });
        let queries: Vec<(String, String)> = dashboard_queries(&dashboard);
        let all: BTreeSet<String> = queries.iter().flat_map(|(_, q)| metric_names(q)).collect();
        let want = [
            "sendonce_v",
            "sendonce_w",
            "sendonce_a",
            "sendonce_b",
            "sendonce_c",
        ];
        assert_eq!(all, want.iter().map(|n| (*n).to_owned()).collect());
        assert!(queries.contains(&("panel \"C\"".to_owned(), "sendonce_c".to_owned())));
    }

    #[test]
    #[should_panic(expected = "a target without an expr")]
    fn a_panel_query_without_an_expression_fails() {
        dashboard_queries(&json!({"panels": [{"title": "A", "targets": [{"refId": "A"}]}]}));
    }

    #[test]
    fn exported_names_are_the_series_names_a_histogram_as_its_parts() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total 3\n\
                    b{layer=\"l1\"} 2\nh_bucket{le=\"0.1\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n";
        let names: Vec<String> = exported_names(text).into_iter().collect();
        assert_eq!(names, ["a_total", "b", "h_bucket", "h_count", "h_sum"]);
        assert!(is_series_of("h_bucket", "h"));
        assert!(is_series_of("h", "h"));
        assert!(!is_series_of("h_total", "h"));
    }

    #[test]
    fn the_monitoring_files_name_metrics_and_every_rule_has_an_expression() {
        let used = metric_names_used();
        assert!(
            used.contains_key("sendonce_dead_lettered_total"),
            "the uncertain alert's metric: {used:?}"
        );
        let rules = std::fs::read_to_string(alert_rules_path()).expect("the rules file");
        assert!(!rule_expressions(&rules).is_empty());
    }
}
