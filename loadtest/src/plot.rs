//! PNG plots of a load test report (plotters, bitmap backend; text drawn with Debian's DejaVu
//! Sans through ab_glyph, so no fontconfig is needed).

use std::collections::BTreeSet;
use std::path::Path;

use plotters::prelude::*;

use crate::Report;

/// One figure of a stage, for a line of the latency plot.
type StageFigure = fn(&crate::StageReport) -> Option<i64>;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> anyhow::Result<()> {
    static ONCE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let bytes: &'static [u8] = Box::leak(
            std::fs::read(FONT)
                .map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?
                .into_boxed_slice(),
        );
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT} is not a font"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

fn series_plot(
    r: &Report,
    path: &Path,
    title: &str,
    y_label: &str,
    get: impl Fn(&crate::Sample) -> &std::collections::BTreeMap<String, f64>,
) -> anyhow::Result<()> {
    let comps: BTreeSet<&String> = r.samples.iter().flat_map(|s| get(s).keys()).collect();
    let t_max = r.samples.last().map(|s| s.t_secs).unwrap_or(1.0).max(1.0);
    let y_max = r.samples.iter().flat_map(|s| get(s).values().copied()).fold(1.0, f64::max) * 1.1;
    let root = BitMapBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart.configure_mesh().x_desc("seconds (stages: see report.md)").y_desc(y_label).draw()?;
    for (i, c) in comps.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> =
            r.samples.iter().map(|s| (s.t_secs, get(s).get(*c).copied().unwrap_or(0.0))).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(c.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// `cpu.png`, `ram.png` (per component over time) and `latency.png` (percentiles per stage).
pub fn plots(r: &Report, dir: &Path) -> anyhow::Result<()> {
    register_font()?;
    series_plot(r, &dir.join("cpu.png"), "CPU per component", "% of one core", |s| &s.cpu)?;
    series_plot(r, &dir.join("ram.png"), "RSS per component", "MiB", |s| &s.rss_mib)?;
    series_plot(r, &dir.join("pss.png"), "PSS per component (shared pages split between sharers)", "MiB", |s| {
        &s.pss_mib
    })?;

    let latency_png = dir.join("latency.png");
    let root = BitMapBackend::new(&latency_png, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let stages: Vec<usize> = r.stages.iter().map(|s| s.channels).collect();
    let y_max = r
        .stages
        .iter()
        .flat_map(|s| [s.motion_latency_ms.p95, s.yolo_latency_ms.p95, s.record_start_latency_ms.p95])
        .flatten()
        .fold(100, i64::max) as f64
        * 1.2;
    let x_max = stages.iter().copied().max().unwrap_or(4) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency percentiles per stage", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart.configure_mesh().x_desc("channels").y_desc("ms").draw()?;
    let lines: [(&str, StageFigure); 6] = [
        ("motion p50", |s| s.motion_latency_ms.p50),
        ("motion p95", |s| s.motion_latency_ms.p95),
        ("YOLO p50", |s| s.yolo_latency_ms.p50),
        ("YOLO p95", |s| s.yolo_latency_ms.p95),
        ("record start p50", |s| s.record_start_latency_ms.p50),
        ("record start p95", |s| s.record_start_latency_ms.p95),
    ];
    for (i, (name, f)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = r.stages.iter().filter_map(|s| Some((s.channels as f64, f(s)? as f64))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
