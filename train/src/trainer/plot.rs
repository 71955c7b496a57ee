//! The loss plot (`loss.png`), redrawn during the run.

use super::TrainError;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in; registration cannot fail for it.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws training loss (line) and validation loss (points joined) against step into
/// `path` (PNG), via a temporary file and a rename.
pub fn plot_losses(path: &Path, title: &str, train: &[(u64, f64)], val: &[(u64, f64)]) -> Result<(), TrainError> {
    register_font();
    let finite = |s: &[(u64, f64)]| s.iter().copied().filter(|(_, v)| v.is_finite()).collect::<Vec<_>>();
    let (train, val) = (finite(train), finite(val));
    let all = train.iter().chain(&val);
    let max_step = all.clone().map(|p| p.0).max().unwrap_or(1).max(1);
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let (lo, hi) = if lo.is_finite() { (lo, hi.max(lo + 1e-6)) } else { (0.0, 1.0) };
    let pad = (hi - lo) * 0.05;
    let tmp = path.with_extension("png.tmp.png");
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(&tmp, (900, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0u64..max_step, (lo - pad)..(hi + pad))?;
        chart.configure_mesh().x_desc("step").y_desc("loss").label_style(("sans-serif", 14)).draw()?;
        chart
            .draw_series(LineSeries::new(train.iter().copied(), BLUE.stroke_width(2)))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        if !val.is_empty() {
            chart
                .draw_series(LineSeries::new(val.iter().copied(), RED.stroke_width(2)).point_size(3))?
                .label("validation")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| TrainError::Other(format!("plotting {}: {e}", path.display())))?;
    std::fs::rename(&tmp, path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let train: Vec<(u64, f64)> = (0..50).map(|s| (s, 5.0 / (1.0 + s as f64 / 10.0))).collect();
        plot_losses(&path, "test", &train, &[(0, 5.0), (49, 1.9), (25, f64::NAN)]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        plot_losses(&path, "empty", &[], &[]).unwrap();
    }
}
