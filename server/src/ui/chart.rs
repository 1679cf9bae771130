//! Usage charts of an Instance (or of a scaling group's members summed): CPU and memory; and
//! a load balancer's request rate; as inline SVG line charts with axes. The value axis starts at zero and ends at a round number
//! no lower than the series' floor, so a few thousandths of a core stay a flat line near the
//! bottom instead of filling the chart; its ticks carry the unit. The time axis runs from the
//! oldest sample to "now".

use maud::{html, Markup};

use crate::usage::{Count, Point};

/// The drawing's size, in SVG units, and the margins that hold the axis labels.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

/// One chart's series: what it shows and how.
struct Series {
    id: &'static str,
    title: &'static str,
    unit: &'static str,
    /// The value axis never ends below this.
    floor: f64,
    /// Decimals of the heading's figures.
    decimals: usize,
}

const CPU: Series = Series { id: "cpu-chart", title: "CPU", unit: "cores", floor: 0.05, decimals: 3 };
const MEMORY: Series = Series { id: "memory-chart", title: "Memory", unit: "MiB", floor: 16.0, decimals: 1 };
const REQUESTS: Series = Series { id: "requests-chart", title: "Requests", unit: "req/s", floor: 1.0, decimals: 2 };

/// CPU and memory charts of `points`; `interval` is how often the page asks for newer ones
/// (the section's `data-chart`).
pub fn charts(points: &[Point], interval: std::time::Duration) -> Markup {
    let cpu: Vec<(i64, f64)> = points.iter().map(|point| (point.time, f64::from(point.cores))).collect();
    let memory: Vec<(i64, f64)> =
        points.iter().map(|point| (point.time, point.memory_bytes as f64 / (1024.0 * 1024.0))).collect();
    html! {
        section class="charts" data-chart=(interval.as_secs().max(1)) {
            h2 { "Usage" }
            (chart(&CPU, &cpu))
            (chart(&MEMORY, &memory))
        }
    }
}

/// A load balancer's request rate from readings of its request counter; `interval` as for
/// [`charts`].
pub fn traffic(counts: &[Count], interval: std::time::Duration) -> Markup {
    html! {
        section class="charts" data-chart=(interval.as_secs().max(1)) {
            h2 { "Traffic" }
            (chart(&REQUESTS, &rates(counts)))
        }
    }
}

/// Requests per second between consecutive readings, at the later one's time.
fn rates(counts: &[Count]) -> Vec<(i64, f64)> {
    counts
        .windows(2)
        .filter_map(|pair| {
            let seconds = pair[1].time - pair[0].time;
            let requests = pair[1].requests.saturating_sub(pair[0].requests);
            (seconds > 0).then(|| (pair[1].time, requests as f64 / seconds as f64))
        })
        .collect()
}

/// One line chart: `values` as (unix time, value), oldest first.
fn chart(series: &Series, values: &[(i64, f64)]) -> Markup {
    let Some((&(first, _), &(last, latest))) = values.first().zip(values.last()) else {
        return html! {
            div class="chart" id=(series.id) { h3 { (series.title) " (" (series.unit) ")" } p class="none" { "collecting…" } }
        };
    };
    let highest = values.iter().map(|(_, value)| *value).fold(0.0_f64, f64::max);
    let top = round_up(highest.max(series.floor));
    let span = (last - first).max(1) as f64;
    let (plot_width, plot_height) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |time: i64| LEFT + (time - first) as f64 / span * plot_width;
    let y = |value: f64| TOP + plot_height - value / top * plot_height;
    let coordinates: Vec<String> =
        values.iter().map(|(time, value)| format!("{:.1},{:.1}", x(*time), y(*value))).collect();
    let decimals = series.decimals;
    let heading = format!(
        "{} ({}): {latest:.decimals$} now, {highest:.decimals$} at most over the last {}",
        series.title,
        series.unit,
        duration(last - first)
    );
    let ticks = [0.0, top / 2.0, top];
    let times = if last > first {
        vec![
            (first, format!("-{}", duration(last - first))),
            (first + (last - first) / 2, format!("-{}", duration((last - first) / 2))),
            (last, "now".to_owned()),
        ]
    } else {
        vec![(last, "now".to_owned())]
    };
    html! {
        div class="chart" id=(series.id) data-points=(values.len()) data-top=(top) {
            h3 { (heading) }
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } width=(WIDTH) height=(HEIGHT) role="img" aria-label=(heading) {
                @for tick in ticks {
                    line class="grid" x1=(LEFT) x2=(WIDTH - RIGHT) y1=(format!("{:.1}", y(tick))) y2=(format!("{:.1}", y(tick))) {}
                    text class="tick" x=(LEFT - 6.0) y=(format!("{:.1}", y(tick) + 4.0)) text-anchor="end" {
                        (tick_label(tick, top)) " " (series.unit)
                    }
                }
                @for (time, label) in &times {
                    text class="tick" x=(format!("{:.1}", x(*time))) y=(HEIGHT - 6.0)
                        text-anchor=(if *time == first { "start" } else if *time == last { "end" } else { "middle" }) { (label) }
                }
                line class="axis" x1=(LEFT) x2=(LEFT) y1=(TOP) y2=(TOP + plot_height) {}
                line class="axis" x1=(LEFT) x2=(WIDTH - RIGHT) y1=(TOP + plot_height) y2=(TOP + plot_height) {}
                polyline class="series" fill="none" points=(coordinates.join(" ")) {}
                // One point alone makes no line.
                @if values.len() == 1 { circle class="point" cx=(format!("{:.1}", x(last))) cy=(format!("{:.1}", y(latest))) r="3" {} }
            }
        }
    }
}

/// The smallest of 1, 2, 2.5 and 5 times a power of ten that is at least `value` (> 0).
fn round_up(value: f64) -> f64 {
    let exponent = value.log10().floor() as i32;
    // Dividing by an exact power of ten keeps 0.05 from printing as 0.05000000000000001.
    let scaled = |step: f64| {
        if exponent >= 0 {
            step * 10f64.powi(exponent)
        } else {
            step / 10f64.powi(-exponent)
        }
    };
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(scaled)
        .find(|candidate| *candidate >= value * (1.0 - 1e-9))
        .unwrap_or_else(|| scaled(10.0))
}

/// A tick's figure with as many decimals as the axis' middle tick needs (0.025, 1.25, 250).
fn tick_label(value: f64, top: f64) -> String {
    let half = top / 2.0;
    let decimals = (0..=4)
        .find(|decimals| {
            let shifted = half * 10f64.powi(*decimals);
            (shifted - shifted.round()).abs() < 1e-6
        })
        .unwrap_or(4) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// Seconds as "45 s" or "12 min".
fn duration(seconds: i64) -> String {
    match seconds {
        seconds @ ..=119 => format!("{seconds} s"),
        seconds => format!("{} min", seconds / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(cores: &[f32]) -> Vec<Point> {
        cores
            .iter()
            .enumerate()
            .map(|(index, cores)| Point { time: 100 + index as i64 * 5, cores: *cores, memory_bytes: 1 << 20 })
            .collect()
    }

    #[test]
    fn charts_draw_what_was_sampled_on_labelled_axes() {
        let interval = std::time::Duration::from_secs(5);
        assert!(charts(&[], interval).into_string().contains("collecting…"));
        let drawn = charts(&points(&[0.0, 0.25, 0.5, 0.75]), interval).into_string();
        assert!(drawn.contains("data-chart=\"5\"") && drawn.contains("data-points=\"4\""), "{drawn}");
        assert!(drawn.contains("CPU (cores): 0.750 now, 0.750 at most over the last 15 s"), "{drawn}");
        // 0.75 cores: the axis ends at 1 core.
        assert!(drawn.contains("points=\"64.0,156.0 253.3,119.5 442.7,83.0 632.0,46.5\""), "{drawn}");
        assert!(drawn.contains(">0.5 cores<") && drawn.contains(">1 cores<") && drawn.contains(">now<"), "{drawn}");
        assert!(drawn.contains(">-15 s<") && drawn.contains(">-7 s<"), "{drawn}");
        // 1 MiB of memory under a 16 MiB floor: the axis ends at 20 MiB.
        assert!(drawn.contains("Memory (MiB): 1.0 now") && drawn.contains(">20 MiB<"), "{drawn}");
    }

    #[test]
    fn a_tiny_load_stays_near_the_bottom() {
        let drawn = charts(&points(&[0.001, 0.001]), std::time::Duration::from_secs(5)).into_string();
        assert!(drawn.contains("data-top=\"0.05\""), "{drawn}");
        // 0.001 of 0.05 cores: 2 % of the plot's height above its floor line (y = 156).
        assert!(drawn.contains("points=\"64.0,153.1 632.0,153.1\""), "{drawn}");
        assert!(drawn.contains(">0.025 cores<") && drawn.contains(">0.05 cores<"), "{drawn}");
    }

    #[test]
    fn request_rates_come_from_counter_differences() {
        let counts = [(100, 0), (105, 50), (110, 50), (115, 80)].map(|(time, requests)| Count { time, requests });
        assert_eq!(rates(&counts), vec![(105, 10.0), (110, 0.0), (115, 6.0)]);
        let drawn = traffic(&counts, std::time::Duration::from_secs(5)).into_string();
        assert!(drawn.contains("Requests (req/s): 6.00 now, 10.00 at most over the last 10 s"), "{drawn}");
        assert!(drawn.contains(">10 req/s<"), "{drawn}");
        assert!(traffic(&counts[..1], std::time::Duration::from_secs(5)).into_string().contains("collecting…"));
        let one = traffic(&counts[..2], std::time::Duration::from_secs(5)).into_string();
        assert!(one.contains("<circle class=\"point\"") && one.matches("class=\"tick\"").count() == 4, "{one}");
    }

    #[test]
    fn axes_end_at_round_numbers() {
        let ends: Vec<f64> = [0.001, 0.05, 0.07, 0.75, 1.0, 1.2, 2.2, 3.0, 7.0, 130.0].map(round_up).to_vec();
        assert_eq!(ends, [0.001, 0.05, 0.1, 1.0, 1.0, 2.0, 2.5, 5.0, 10.0, 200.0]);
        assert_eq!(tick_label(0.025, 0.05), "0.025");
        assert_eq!(tick_label(125.0, 250.0), "125");
        assert_eq!(tick_label(1.25, 2.5), "1.25");
        assert_eq!(tick_label(0.0, 1.0), "0");
    }
}
