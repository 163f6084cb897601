//! `weir bench --report`: the HTML page of a sweep against the simulator, rendered by
//! headless Chromium to a PNG, in which every chart is found drawn by its series colour.
//! The PNG stays under target/test-artifacts/ for CI to keep.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bench_truth::{bench, run_bounded};
use crate::common::ops::{TempDir, tool_from};
use crate::common::*;
use weir_sim::SimConfig;

/// The window the page is drawn in.
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 3000;
/// Rows of one chart's colour closer than this belong to the same chart: a chart's plot
/// area is 210 pixels tall, and the same chart of the next run is over 400 pixels further.
const SAME_CHART: usize = 250;

/// A decoded screenshot, RGB.
struct Shot {
    path: PathBuf,
    width: usize,
    rgb: Vec<u8>,
}

impl Shot {
    fn read(path: &Path) -> Shot {
        let file = std::fs::File::open(path).unwrap();
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => panic!("unexpected PNG colour type {other:?}"),
        };
        let rgb = buf[..info.buffer_size()]
            .chunks_exact(channels)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        Shot {
            path: path.to_owned(),
            width: info.width as usize,
            rgb,
        }
    }

    /// The top rows of the `times` charts drawn in `colour`, each with at least `least`
    /// pixels of it; a failure names the screenshot.
    fn drawn(&self, name: &str, colour: &str, times: usize, least: usize) -> Vec<usize> {
        let b = bands(&self.rows_of(colour));
        let see = self.path.display();
        assert_eq!(
            b.len(),
            times,
            "{name} ({colour}) drawn as {b:?}; see {see}"
        );
        for &(_, pixels) in &b {
            assert!(
                pixels >= least,
                "{name} ({colour}) drawn as {b:?}; see {see}"
            );
        }
        b.into_iter().map(|(top, _)| top).collect()
    }

    /// How many pixels of each row are `colour` (`#rrggbb`, each channel within 3).
    fn rows_of(&self, colour: &str) -> Vec<usize> {
        let hex = |i: usize| u8::from_str_radix(&colour[i..i + 2], 16).unwrap();
        let want = [hex(1), hex(3), hex(5)];
        self.rgb
            .chunks_exact(self.width * 3)
            .map(|row| {
                row.chunks_exact(3)
                    .filter(|p| p.iter().zip(want).all(|(&a, b)| a.abs_diff(b) <= 3))
                    .count()
            })
            .collect()
    }
}

/// Where a colour is drawn: one (first row, pixels) per group of rows no further apart than
/// [`SAME_CHART`], top to bottom.
fn bands(rows: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize, usize)> = Vec::new();
    for (y, &n) in rows.iter().enumerate().filter(|(_, n)| **n > 0) {
        match out.last_mut() {
            Some((_, last, pixels)) if y - *last < SAME_CHART => {
                *last = y;
                *pixels += n;
            }
            _ => out.push((y, y, n)),
        }
    }
    out.into_iter().map(|(first, _, n)| (first, n)).collect()
}

/// Where the screenshots are kept: target/test-artifacts/.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Draws `html` with headless Chromium into `png`.
fn screenshot(chromium: &Path, html: &Path, png: &Path) {
    let profile = TempDir::new("chromium-profile");
    let args = [
        "--headless".to_owned(),
        "--disable-gpu".to_owned(),
        "--no-sandbox".to_owned(),
        "--hide-scrollbars".to_owned(),
        "--force-device-scale-factor=1".to_owned(),
        format!("--user-data-dir={}", profile.0.display()),
        format!("--screenshot={}", png.display()),
        format!("--window-size={WIDTH},{HEIGHT}"),
        format!("file://{}", html.display()),
    ];
    let o = run_bounded(chromium, &args, &profile);
    assert!(png.is_file(), "chromium wrote no screenshot: {o:?}");
}

#[tokio::test]
async fn the_html_report_of_a_sweep_draws_every_chart_in_chromium() {
    let Some(chromium) = tool_from("chromium", "chromium") else {
        return;
    };
    let sim = start_sim(SimConfig {
        ttft: Duration::from_millis(15),
        ttft_jitter: Duration::from_millis(20),
        itl: Duration::from_millis(2),
        itl_jitter: Duration::from_millis(4),
        ..SimConfig::fast()
    })
    .await;
    let dir = artifacts();
    let (html, json, png) = (
        dir.join("bench-report.html"),
        dir.join("bench-report.json"),
        dir.join("bench-report.png"),
    );
    let _ = std::fs::remove_file(&png);
    let u = format!("http://{sim}");
    let o = bench(&[
        "--url",
        &u,
        "--model",
        "tiny-llama",
        "--sweep",
        "1,4",
        "--requests",
        "24",
        "--max-tokens",
        "8",
        "--slo",
        "ttft=300ms,itl=100ms",
        "--report",
        html.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for run in doc["runs"].as_array().unwrap() {
        assert_eq!(run["errors"], 0, "{run}");
        assert!(
            run["good_requests"].as_u64() > Some(0),
            "no goodput to draw: {run}"
        );
    }

    let (chromium, h, p) = (chromium, html.clone(), png.clone());
    tokio::task::spawn_blocking(move || screenshot(&chromium, &h, &p))
        .await
        .unwrap();
    // Written past the test harness's capture, so that a passing run's log names it too.
    let _ = writeln!(
        std::io::stderr(),
        "bench report screenshot: {}",
        png.display()
    );
    let shot = Shot::read(&png);
    assert_eq!(shot.width, WIDTH as usize);

    use weir_bench::colour::*;
    // The sweep's charts, once each: TTFT and ITL against throughput, with their SLO lines,
    // and the goodput bars.
    let sweep: Vec<usize> = [
        ("throughput against TTFT p99", SWEEP_TTFT, 150),
        ("throughput against ITL p99", SWEEP_ITL, 150),
        ("goodput per level", GOODPUT, 2000),
        ("SLO lines", SLO, 400),
    ]
    .into_iter()
    .flat_map(|(name, colour, least)| shot.drawn(name, colour, 1, least))
    .collect();
    let sweep_bottom = sweep.into_iter().max().unwrap();
    // Each run's charts, once per level, below the sweep.
    for (name, colour, least) in [
        ("TTFT distribution", TTFT, 1000),
        ("ITL distribution", ITL, 1000),
        ("TTFT over time", TTFT_TIME, 150),
    ] {
        let tops = shot.drawn(name, colour, 2, least);
        assert!(
            tops[0] > sweep_bottom,
            "{name} above the sweep; see {}",
            shot.path.display()
        );
    }
    // Nothing failed: no crosses.
    assert_eq!(shot.rows_of(FAILED).iter().sum::<usize>(), 0);
}
