//! Small SVG line charts for sweeps and training curves, written without a plotting dependency.

use std::fmt::Write as _;
use std::path::Path;

/// One named line of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart with axis labels and a legend.
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub series: Vec<Series>,
}

const W: f64 = 720.0;
const H: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// About five round tick values covering [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(f64::EPSILON);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 1e4 || (v != 0.0 && v.abs() < 1e-2) {
        format!("{v:.0e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Chart {
    /// Renders the chart as an SVG document.
    pub fn to_svg(&self) -> String {
        let tx = |x: f64| {
            if self.log_x {
                x.max(f64::MIN_POSITIVE).log10()
            } else {
                x
            }
        };
        let pts = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter())
                .filter(|p| p.0.is_finite() && p.1.is_finite())
        };
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts() {
            x0 = x0.min(tx(x));
            x1 = x1.max(tx(x));
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        let pad = ((y1 - y0) * 0.05).max(1e-9);
        (y0, y1) = (y0 - pad, y1 + pad);
        if x1 - x0 < 1e-12 {
            (x0, x1) = (x0 - 0.5, x1 + 0.5);
        }
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let sx = |x: f64| LEFT + (tx(x) - x0) / (x1 - x0) * pw;
        let sy = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * ph;
        let mut s = String::new();
        let _ = write!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>
<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>
"##,
            LEFT + pw / 2.0,
            escape(&self.title)
        );
        let xt = if self.log_x {
            ticks(x0.floor(), x1.ceil())
                .into_iter()
                .filter(|t| t.fract() == 0.0)
                .map(|t| 10f64.powf(t))
                .collect()
        } else {
            ticks(x0, x1)
        };
        for t in xt
            .into_iter()
            .filter(|&t| tx(t) >= x0 - 1e-9 && tx(t) <= x1 + 1e-9)
        {
            let x = sx(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 18.0,
                fmt_tick(t)
            );
        }
        for t in ticks(y0, y1) {
            let y = sy(t);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                y + 4.0,
                fmt_tick(t)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 16.0,
            escape(&self.x_label),
            TOP + ph / 2.0,
            escape(&self.y_label)
        );
        for (i, series) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let path: Vec<String> = series
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for p in &path {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>"#);
            }
            let ly = TOP + 10.0 + 20.0 * i as f64;
            let lx = LEFT + pw + 12.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
                lx + 20.0,
                lx + 26.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// Writes the SVG to `path` through a temporary file.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        crate::io::write_atomic(path, self.to_svg().as_bytes())
    }
}

/// Each point's y replaced by the mean of it and the `window - 1` points before it.
pub fn running_mean(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let window = window.max(1);
    (0..points.len())
        .map(|i| {
            let part = &points[i.saturating_sub(window - 1)..=i];
            (
                points[i].0,
                part.iter().map(|p| p.1).sum::<f64>() / part.len() as f64,
            )
        })
        .collect()
}

/// A training-loss chart: the loss per update and its running mean over `window` updates.
pub fn loss_curve(title: &str, loss: Vec<(f64, f64)>, window: usize) -> Chart {
    let window = window.max(1);
    let smooth = running_mean(&loss, window);
    Chart {
        title: title.into(),
        x_label: "update".into(),
        y_label: "loss".into(),
        log_x: false,
        series: vec![
            Series {
                name: "loss".into(),
                points: loss,
            },
            Series {
                name: format!("mean of {window}"),
                points: smooth,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_curve_smooths_with_a_running_mean() {
        let loss = vec![(1.0, 4.0), (2.0, 2.0), (3.0, 6.0), (4.0, 0.0)];
        let chart = loss_curve("loss", loss.clone(), 2);
        assert_eq!(chart.series[0].points, loss);
        assert_eq!(
            chart.series[1].points,
            [(1.0, 4.0), (2.0, 3.0), (3.0, 4.0), (4.0, 3.0)]
        );
        assert_eq!(chart.series[1].name, "mean of 2");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = ticks(13.2, 19.7);
        assert_eq!(t.first(), Some(&14.0));
        assert!(t.last().unwrap() <= &19.7);
    }

    #[test]
    fn svg_has_one_line_per_series_and_escapes_text() {
        let chart = Chart {
            title: "ppl <vs> λ".into(),
            x_label: "λ".into(),
            y_label: "perplexity".into(),
            log_x: false,
            series: vec![
                Series {
                    name: "T=1".into(),
                    points: vec![(0.0, 20.0), (0.25, 17.5), (0.5, 18.0)],
                },
                Series {
                    name: "T=10".into(),
                    points: vec![(0.0, 20.0), (0.25, 16.0), (0.5, f64::NAN)],
                },
            ],
        };
        let svg = chart.to_svg();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("ppl &lt;vs&gt; λ"));
        assert_eq!(
            svg.matches("<circle").count(),
            5,
            "non-finite points are dropped"
        );
    }
}
