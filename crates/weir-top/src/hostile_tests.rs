//! Whatever an admin URL answers, the view computes and draws without panicking: random
//! expositions (names `weir top` reads, odd labels, values no gateway writes) and
//! `/backends` states go through the whole path, from the parser to the drawn screen.

use proptest::prelude::*;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use tokio::time::Instant;

use crate::app::App;
use crate::expo;
use crate::scrape::{BackendState, Queue, Scrape, Target};
use crate::table::{READ, View};
use crate::ui;

const LABELS: [&str; 10] = [
    "gen_ai_request_model",
    "backend",
    "outcome",
    "le",
    "gen_ai_token_type",
    "slo",
    "met",
    "kind",
    "reason",
    "code",
];

const VALUES: [&str; 12] = [
    "+Inf",
    "NaN",
    "-1",
    "1e308",
    "0.1",
    "ok",
    "timeout",
    "output",
    "all",
    "true",
    "m",
    "\u{1b}[31m",
];

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(VALUES.to_vec()).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
        1 => ".{0,64}",
    ]
}

/// A sample line, mostly well formed: a name read or not, escaped labels, any number.
fn line() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        4 => prop::sample::select(READ.to_vec()).prop_map(str::to_owned),
        1 => "[a-z_]{1,8}",
        1 => ".{0,10}",
    ];
    // Most series are of a model and a backend, as the gateway's are.
    let labels = (
        prop::option::weighted(0.8, (Just("gen_ai_request_model"), label_value())),
        prop::option::weighted(0.8, (Just("backend"), label_value())),
        prop::collection::vec((prop::sample::select(LABELS.to_vec()), label_value()), 0..4),
    )
        .prop_map(|(m, b, mut rest)| {
            rest.extend(m.into_iter().chain(b));
            rest
        });
    // Rarely a value that is not a number, which fails the whole scrape.
    let value = prop_oneof![
        10 => any::<f64>().prop_map(|v| v.to_string()),
        40 => (0u32..1000).prop_map(|v| v.to_string()),
        10 => prop::sample::select(vec!["NaN", "+Inf", "-Inf", "1e308", "-0"]).prop_map(str::to_owned),
        1 => ".{0,6}",
    ];
    (name, labels, value).prop_map(|(name, labels, value)| {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| {
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                format!("{k}=\"{v}\"")
            })
            .collect();
        format!("{name}{{{}}} {value}", labels.join(","))
    })
}

fn exposition() -> impl Strategy<Value = String> {
    prop::collection::vec(line(), 0..40).prop_map(|l| l.join("\n"))
}

fn backends() -> impl Strategy<Value = Option<Vec<BackendState>>> {
    let queue =
        (any::<u64>(), any::<u64>(), any::<f64>()).prop_map(|(waiting, running, kv)| Queue {
            waiting,
            running,
            kv_cache_usage: kv,
        });
    let backend = (
        label_value(),
        label_value(),
        any::<u64>(),
        prop::option::of(queue),
    )
        .prop_map(|(name, state, outstanding, queue)| BackendState {
            name,
            state,
            outstanding,
            queue,
        });
    prop::option::of(prop::collection::vec(backend, 0..4))
}

fn scrape(text: &str, backends: Option<Vec<BackendState>>) -> Result<Scrape, String> {
    let samples = expo::parse_keeping(text, |n| READ.contains(&n))?;
    Ok(Scrape {
        at: Instant::now(),
        samples,
        backends,
    })
}

/// Every view, sorted on every column both ways, as rows, as the snapshot and as drawn.
fn show_everything(app: &mut App) {
    let mut terminal = Terminal::new(TestBackend::new(120, 30)).expect("a test terminal");
    let press = |app: &mut App, code| {
        app.key(KeyEvent::new(code, KeyModifiers::NONE));
    };
    for view in View::ALL {
        for _ in 0..view.columns().len() {
            for _ in 0..2 {
                let rows = app.rows();
                assert!(
                    rows.iter()
                        .all(|r| r.cells.len() == app.view.columns().len())
                );
                terminal.draw(|f| ui::draw(f, app)).expect("drawn");
                press(app, KeyCode::Char('r'));
            }
            press(app, KeyCode::Char('s'));
        }
        press(app, KeyCode::Down);
        press(app, KeyCode::Tab);
    }
    let _ = ui::snapshot(app);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn hostile_expositions_never_panic(
        texts in prop::collection::vec((exposition(), backends()), 1..4),
    ) {
        let targets = ["127.0.0.1:1", "127.0.0.1:2"]
            .map(|t| Target::parse(t, None).expect("a target"));
        let mut app = App::new(targets.to_vec(), std::time::Duration::from_secs(1));
        for (text, backends) in texts {
            let ok = scrape(&text, backends.clone());
            app.update(vec![ok, scrape(&text, backends)]);
            show_everything(&mut app);
        }
    }
}
