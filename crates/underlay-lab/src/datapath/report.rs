//! Figures over alternating rounds: each configuration's median and spread
//! (min–max over the rounds), the ratio of its median to each reference's
//! (the first configuration's, and any other the table names), and the
//! issue's goals for those ratios, printed as a markdown table.

use std::fmt::Write as _;

/// What one round measured for one configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub gbits: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub conns_per_s: f64,
}

/// One figure of a [`Sample`], with its unit and which way is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Throughput,
    P50,
    P99,
    ConnRate,
}

impl Metric {
    pub const ALL: [Self; 4] = [Self::Throughput, Self::P50, Self::P99, Self::ConnRate];

    fn of(self, s: &Sample) -> f64 {
        match self {
            Self::Throughput => s.gbits,
            Self::P50 => s.p50_us,
            Self::P99 => s.p99_us,
            Self::ConnRate => s.conns_per_s,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Throughput => "throughput Gbit/s",
            Self::P50 => "p50 latency us",
            Self::P99 => "p99 latency us",
            Self::ConnRate => "new TCP connections/s",
        }
    }

    fn decimals(self) -> usize {
        match self {
            Self::Throughput => 2,
            Self::P50 | Self::P99 => 1,
            Self::ConnRate => 0,
        }
    }
}

/// A bound on a ratio to the reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    fn met(self, ratio: f64) -> bool {
        match self {
            Self::AtLeast(b) => ratio >= b,
            Self::AtMost(b) => ratio <= b,
        }
    }

    fn text(self, ratio: f64) -> String {
        let verdict = if self.met(ratio) { "met" } else { "MISSED" };
        match self {
            Self::AtLeast(b) => format!("≥ {b:.2}: {verdict}"),
            Self::AtMost(b) => format!("≤ {b:.2}: {verdict}"),
        }
    }
}

/// Every round's sample of one configuration.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub samples: Vec<Sample>,
}

impl Series {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            samples: Vec::new(),
        }
    }
}

/// Median, minimum and maximum of some values; `None` when there are none.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The median of an even count is the mean of the middle two.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// A goal the issue sets for `metric` of the configuration `series` (an
/// index into the table's series) as a ratio to the configuration
/// `reference` (0, the first, unless the table compares to another too).
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub metric: Metric,
    pub series: usize,
    pub reference: usize,
    pub goal: Goal,
}

/// One comparison: the first series is the reference; `also_against` adds
/// a ratio column to each of those series too.
#[derive(Clone, Debug)]
pub struct Table {
    pub title: String,
    /// How the rounds were run, printed under the title.
    pub method: String,
    pub series: Vec<Series>,
    pub also_against: Vec<usize>,
    pub targets: Vec<Target>,
}

impl Table {
    /// The markdown table: per metric, one row per configuration.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n## {}\n", self.title);
        let _ = writeln!(out, "{}\n", self.method);
        let mut head: Vec<String> = ["row", "median", "spread (min–max)"]
            .map(str::to_owned)
            .into();
        for r in self.references() {
            let name = self.series.get(r).map_or("", |s| s.name.as_str());
            head.push(format!("ratio to {name}"));
        }
        head.push("goal".into());
        let rows = self.rows();
        let widths: Vec<usize> = (0..head.len())
            .map(|c| column_width(&head[c], rows.iter().map(|r| r[c].as_str())))
            .collect();
        line(&mut out, &head, &widths);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&mut out, &rule, &widths);
        for r in &rows {
            line(&mut out, r, &widths);
        }
        out
    }

    /// The series each ratio column compares to: the first, then the others
    /// the table names.
    fn references(&self) -> Vec<usize> {
        let mut refs = vec![0];
        refs.extend(self.also_against.iter().filter(|r| **r != 0));
        refs
    }

    /// Per row: name, median, spread, one ratio per reference, goals.
    fn rows(&self) -> Vec<Vec<String>> {
        let refs = self.references();
        let mut rows = Vec::new();
        for metric in Metric::ALL {
            for (i, s) in self.series.iter().enumerate() {
                let d = metric.decimals();
                let name = format!("{}, {}", metric.label(), s.name);
                let Some(sp) = spread(s, metric) else {
                    let mut row = vec![name, "-".into(), "-".into()];
                    row.extend(refs.iter().map(|_| "-".to_owned()));
                    row.push(String::new());
                    rows.push(row);
                    continue;
                };
                let ratio = |reference: usize| {
                    let base = spread(self.series.get(reference)?, metric)?;
                    Some(sp.median / base.median).filter(|r| r.is_finite())
                };
                let mut row = vec![
                    name,
                    format!("{:.d$}", sp.median),
                    format!("{:.d$}–{:.d$}", sp.min, sp.max),
                ];
                for r in &refs {
                    row.push(match ratio(*r) {
                        _ if i == *r => "1.000 (reference)".to_owned(),
                        Some(x) => format!("{x:.3}"),
                        None => "-".to_owned(),
                    });
                }
                // Each goal; named by its reference when the table has several.
                let goals: Vec<String> = self
                    .targets
                    .iter()
                    .filter(|t| t.metric == metric && t.series == i)
                    .filter_map(|t| {
                        let text = t.goal.text(ratio(t.reference)?);
                        Some(match self.series.get(t.reference) {
                            Some(r) if refs.len() > 1 => format!("to {}: {text}", r.name),
                            _ => text,
                        })
                    })
                    .collect();
                row.push(goals.join("; "));
                rows.push(row);
            }
        }
        rows
    }
}

fn spread(s: &Series, metric: Metric) -> Option<Spread> {
    let values: Vec<f64> = s.samples.iter().map(|x| metric.of(x)).collect();
    Spread::of(&values)
}

fn column_width<'a>(head: &str, cells: impl Iterator<Item = &'a str>) -> usize {
    cells
        .map(|c| c.chars().count())
        .chain([head.chars().count()])
        .max()
        .unwrap_or(0)
}

fn line(out: &mut String, cells: &[String], widths: &[usize]) {
    out.push('|');
    let last = cells.len().saturating_sub(1);
    for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
        // Text left, figures right.
        if i == 0 || i == last {
            let _ = write!(out, " {cell:<w$} |");
        } else {
            let _ = write!(out, " {cell:>w$} |");
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_spread(values: &[f64], expect: Option<(f64, f64, f64)>) {
        let got = Spread::of(values).map(|s| (s.median, s.min, s.max));
        assert_eq!(got, expect, "spread of {values:?}");
    }

    #[test]
    fn spread_is_median_min_and_max() {
        check_spread(&[], None);
        check_spread(&[f64::NAN], None);
        check_spread(&[3.0], Some((3.0, 3.0, 3.0)));
        check_spread(&[5.0, 1.0, 3.0], Some((3.0, 1.0, 5.0)));
        check_spread(&[4.0, 1.0, 2.0, 3.0], Some((2.5, 1.0, 4.0)));
        check_spread(&[2.0, f64::NAN, 1.0], Some((1.5, 1.0, 2.0)));
    }

    fn sample(gbits: f64, p50_us: f64, conns_per_s: f64) -> Sample {
        Sample {
            gbits,
            p50_us,
            p99_us: p50_us * 2.0,
            conns_per_s,
        }
    }

    #[test]
    fn rows_give_each_configuration_its_ratio_to_the_reference_and_goal_verdict() {
        let table = Table {
            title: "t".into(),
            method: "m".into(),
            series: vec![
                Series {
                    name: "none".into(),
                    samples: vec![sample(10.0, 100.0, 1000.0), sample(12.0, 80.0, 1200.0)],
                },
                Series {
                    name: "many".into(),
                    samples: vec![sample(9.0, 110.0, 800.0), sample(13.0, 90.0, 1000.0)],
                },
            ],
            also_against: Vec::new(),
            targets: vec![
                Target {
                    metric: Metric::Throughput,
                    series: 1,
                    reference: 0,
                    goal: Goal::AtLeast(0.95),
                },
                Target {
                    metric: Metric::P50,
                    series: 1,
                    reference: 0,
                    goal: Goal::AtMost(1.05),
                },
                Target {
                    metric: Metric::ConnRate,
                    series: 1,
                    reference: 0,
                    goal: Goal::AtLeast(0.9),
                },
            ],
        };
        let rows = table.rows();
        let find = |name: &str| {
            rows.iter()
                .find(|r| r[0] == name)
                .unwrap_or_else(|| panic!("no row {name} in {rows:?}"))
                .clone()
        };
        assert_eq!(
            find("throughput Gbit/s, none"),
            [
                "throughput Gbit/s, none".to_owned(),
                "11.00".into(),
                "10.00–12.00".into(),
                "1.000 (reference)".into(),
                String::new()
            ]
        );
        let many = find("throughput Gbit/s, many");
        assert_eq!(
            (many[3].as_str(), many[4].as_str()),
            ("1.000", "≥ 0.95: met")
        );
        let p50 = find("p50 latency us, many");
        assert_eq!(
            (p50[3].as_str(), p50[4].as_str()),
            ("1.111", "≤ 1.05: MISSED")
        );
        let conns = find("new TCP connections/s, many");
        assert_eq!(conns[2], "800–1000");
        assert_eq!(
            (conns[3].as_str(), conns[4].as_str()),
            ("0.818", "≥ 0.90: MISSED")
        );
        assert_eq!(find("p99 latency us, many")[4], "");
        assert_eq!(rows.len(), 8);
    }

    #[test]
    fn a_configuration_without_samples_prints_dashes() {
        let table = Table {
            title: "t".into(),
            method: "m".into(),
            series: vec![Series::new("none"), Series::new("many")],
            also_against: vec![1],
            targets: Vec::new(),
        };
        assert!(
            table
                .rows()
                .iter()
                .all(|r| r[1] == "-" && r[3] == "-" && r[4] == "-")
        );
        assert!(table.render().contains("| throughput Gbit/s, none"));
    }

    #[test]
    fn a_second_reference_gets_its_own_ratio_column_and_named_goals() {
        let table = Table {
            title: "t".into(),
            method: "m".into(),
            series: vec![
                Series {
                    name: "none".into(),
                    samples: vec![sample(10.0, 100.0, 1000.0)],
                },
                Series {
                    name: "many".into(),
                    samples: vec![sample(9.0, 110.0, 950.0)],
                },
                Series {
                    name: "vxlan".into(),
                    samples: vec![sample(8.0, 120.0, 1000.0)],
                },
            ],
            also_against: vec![2],
            targets: vec![
                Target {
                    metric: Metric::ConnRate,
                    series: 1,
                    reference: 0,
                    goal: Goal::AtLeast(0.9),
                },
                Target {
                    metric: Metric::ConnRate,
                    series: 1,
                    reference: 2,
                    goal: Goal::AtLeast(1.0),
                },
            ],
        };
        let rows = table.rows();
        let find = |name: &str| rows.iter().find(|r| r[0] == name).unwrap().clone();
        assert_eq!(
            find("new TCP connections/s, many")[3..],
            [
                "0.950".to_owned(),
                "0.950".into(),
                "to none: ≥ 0.90: met; to vxlan: ≥ 1.00: MISSED".into()
            ]
        );
        assert_eq!(
            find("throughput Gbit/s, vxlan")[3..],
            [
                "0.800".to_owned(),
                "1.000 (reference)".into(),
                String::new()
            ]
        );
        assert_eq!(find("throughput Gbit/s, none")[4], "1.250");
        let head = table.render();
        assert!(head.contains(" ratio to none |") && head.contains(" ratio to vxlan |"));
        assert_eq!(rows.len(), 12);
    }
}
