//! A labelled counter or gauge family, rendered in Prometheus text format.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// A counter or gauge family: one value per label set.
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, f64>>,
}

impl Family {
    /// A counter family with these label names.
    pub const fn counter(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self::new(name, help, "counter", labels)
    }

    /// A gauge family with these label names.
    pub const fn gauge(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self::new(name, help, "gauge", labels)
    }

    const fn new(
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            help,
            kind,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds `delta` to the series with `labels` (values in label-name order).
    pub fn add(&self, labels: &[&str], delta: f64) {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.name);
        let mut values = self
            .values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Looked up without building a key: this runs a few times per request (S2).
        match values.get_mut(&labels as &dyn SeriesKey) {
            Some(value) => *value += delta,
            None => {
                values.insert(owned(labels), delta);
            }
        }
    }

    /// Sets the series with `labels` to `value`.
    pub fn set(&self, labels: &[&str], value: f64) {
        let mut values = self
            .values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match values.get_mut(&labels as &dyn SeriesKey) {
            Some(slot) => *slot = value,
            None => {
                values.insert(owned(labels), value);
            }
        }
    }

    /// Adds one.
    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1.0);
    }

    /// The value of one series (0 if never touched).
    pub fn get(&self, labels: &[&str]) -> f64 {
        let values = self
            .values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        values
            .get(&labels as &dyn SeriesKey)
            .copied()
            .unwrap_or(0.0)
    }

    /// Appends the family in Prometheus text format. An unlabelled family always shows a value.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        let values = self
            .values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.labels.is_empty() && values.is_empty() {
            let _ = writeln!(out, "{} 0", self.name);
        }
        for (key, value) in values.iter() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .zip(key)
                .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{} {value}", self.name);
            } else {
                let _ = writeln!(out, "{}{{{}}} {value}", self.name, labels.join(","));
            }
        }
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A series' label values as the map stores them (`Vec<String>`) or as callers pass them
/// (`&[&str]`), ordered alike (element by element, as `Vec<String>` orders), so the map can be
/// searched with borrowed labels.
trait SeriesKey {
    fn count(&self) -> usize;
    fn label(&self, index: usize) -> &str;
}

impl SeriesKey for Vec<String> {
    fn count(&self) -> usize {
        self.len()
    }
    fn label(&self, index: usize) -> &str {
        &self[index]
    }
}

impl SeriesKey for &[&str] {
    fn count(&self) -> usize {
        self.len()
    }
    fn label(&self, index: usize) -> &str {
        self[index]
    }
}

impl<'a> Borrow<dyn SeriesKey + 'a> for Vec<String> {
    fn borrow(&self) -> &(dyn SeriesKey + 'a) {
        self
    }
}

impl PartialEq for dyn SeriesKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for dyn SeriesKey + '_ {}

impl PartialOrd for dyn SeriesKey + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn SeriesKey + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        (0..self.count().min(other.count()))
            .map(|index| self.label(index).cmp(other.label(index)))
            .find(|order| order.is_ne())
            .unwrap_or_else(|| self.count().cmp(&other.count()))
    }
}

fn owned(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|label| (*label).to_owned()).collect()
}
#[cfg(test)]
mod series_tests {
    use super::Family;

    /// Borrowed lookups must order labels as the stored keys do: one series per label set,
    /// whatever the order and lengths of the values (a mismatch would split a series).
    #[test]
    fn a_label_set_is_one_series_however_it_is_reached() {
        let family = Family::counter("t_total", "test", &["cluster", "code"]);
        let sets: [&[&str]; 5] = [
            &["b", "200"],
            &["a", "5"],
            &["ab", "200"],
            &["a", "200"],
            &["", "200"],
        ];
        for round in 1..=3 {
            for (index, labels) in sets.iter().enumerate() {
                family.add(labels, (index + 1) as f64);
            }
            family.set(&["z", "1"], f64::from(round));
        }
        for (index, labels) in sets.iter().enumerate() {
            assert_eq!(family.get(labels), 3.0 * (index + 1) as f64, "{labels:?}");
        }
        assert_eq!(family.get(&["z", "1"]), 3.0);
        assert_eq!(family.get(&["a", "20"]), 0.0);
        let mut text = String::new();
        family.render(&mut text);
        let series: Vec<&str> = text.lines().filter(|line| !line.starts_with('#')).collect();
        assert_eq!(
            series,
            [
                "t_total{cluster=\"\",code=\"200\"} 15",
                "t_total{cluster=\"a\",code=\"200\"} 12",
                "t_total{cluster=\"a\",code=\"5\"} 6",
                "t_total{cluster=\"ab\",code=\"200\"} 9",
                "t_total{cluster=\"b\",code=\"200\"} 3",
                "t_total{cluster=\"z\",code=\"1\"} 3",
            ]
        );
    }
}
