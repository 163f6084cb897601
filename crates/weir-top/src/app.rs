//! What the view holds between two frames: each gateway's latest scrapes, the rows computed
//! from them, the view and sort chosen, and what each key does. No drawing here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::rates::{Window, Windows};
use crate::rows::Row;
use crate::scrape::{Scrape, Target};
use crate::table::{BACKEND_UP, IN_FLIGHT, Tables, View};

/// One gateway watched.
#[derive(Debug)]
struct Watched {
    target: Target,
    prev: Option<Scrape>,
    cur: Option<Scrape>,
    /// Why the last scrape failed; cleared by the next one that works.
    error: Option<String>,
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Stay,
    Quit,
}

#[derive(Debug)]
pub struct App {
    watched: Vec<Watched>,
    pub interval: Duration,
    pub tables: Tables,
    pub view: View,
    /// The column each view sorts on.
    sort: [usize; 3],
    pub descending: bool,
    /// The highlighted row of the current view.
    pub selected: usize,
}

impl App {
    pub fn new(targets: Vec<Target>, interval: Duration) -> App {
        let watched = targets
            .into_iter()
            .map(|target| Watched {
                target,
                prev: None,
                cur: None,
                error: None,
            })
            .collect();
        App {
            watched,
            interval,
            tables: Tables::default(),
            view: View::Models,
            sort: View::ALL.map(View::default_sort),
            descending: true,
            selected: 0,
        }
    }

    /// Takes one round of scrapes (one result per gateway, in order) and recomputes the rows.
    pub fn update(&mut self, round: Vec<Result<Scrape, String>>) {
        for (w, result) in self.watched.iter_mut().zip(round) {
            match result {
                Ok(s) => {
                    w.prev = w.cur.replace(s);
                    w.error = None;
                }
                Err(e) => {
                    // The last good scrape stays the base of the next window.
                    w.prev = None;
                    w.error = Some(e);
                }
            }
        }
        let live: Vec<&Watched> = self.watched.iter().filter(|w| w.error.is_none()).collect();
        let windows = Windows::new(live.iter().filter_map(|w| {
            let (prev, cur) = (w.prev.as_ref()?, w.cur.as_ref()?);
            Some(Window {
                prev: &prev.samples,
                cur: &cur.samples,
                secs: cur.at.duration_since(prev.at).as_secs_f64(),
            })
        }));
        let current: Vec<&Scrape> = live.iter().filter_map(|w| w.cur.as_ref()).collect();
        self.tables = Tables::compute(&windows, &current);
    }

    /// Whether some gateway has been scraped twice in a row: rates need two scrapes.
    pub fn has_rates(&self) -> bool {
        self.watched
            .iter()
            .any(|w| w.error.is_none() && w.prev.is_some() && w.cur.is_some())
    }

    pub fn sort_column(&self) -> usize {
        self.sort[self.view_index()]
    }

    fn view_index(&self) -> usize {
        View::ALL.iter().position(|v| *v == self.view).unwrap_or(0)
    }

    /// The current view's rows, sorted.
    pub fn rows(&self) -> Vec<Row> {
        self.tables
            .rows(self.view, self.sort_column(), self.descending)
    }

    /// Acts on a key: views, sort, selection, quit.
    pub fn key(&mut self, k: KeyEvent) -> Action {
        if k.kind != KeyEventKind::Press {
            return Action::Stay;
        }
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        let i = self.view_index();
        match k.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('c') if ctrl => return Action::Quit,
            KeyCode::Tab | KeyCode::Right => self.show(View::ALL[(i + 1) % 3]),
            KeyCode::BackTab | KeyCode::Left => self.show(View::ALL[(i + 2) % 3]),
            KeyCode::Char('m') => self.show(View::Models),
            KeyCode::Char('b') => self.show(View::Backends),
            KeyCode::Char('e') => self.show(View::Errors),
            KeyCode::Char('s') => {
                let n = self.view.columns().len();
                self.sort[i] = (self.sort[i] + 1) % n;
            }
            KeyCode::Char('r') => self.descending = !self.descending,
            KeyCode::Down | KeyCode::Char('j') => self.selected = self.selected.saturating_add(1),
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            _ => {}
        }
        Action::Stay
    }

    fn show(&mut self, view: View) {
        if view != self.view {
            self.view = view;
            self.selected = 0;
        }
    }

    /// The header's first line: the time, the interval, the view and its sort, the totals.
    pub fn title(&self) -> String {
        let col = self.view.columns()[self.sort_column()];
        let arrow = if self.descending { "desc" } else { "asc" };
        let m = &self.tables.models;
        let req: f64 = m.iter().map(|r| r.req_s).sum();
        let tok: f64 = m.iter().map(|r| r.tok_s).sum();
        let rates = if self.has_rates() {
            format!("{req:.1} req/s  {tok:.0} tok/s")
        } else {
            "waiting for a second scrape".to_owned()
        };
        format!(
            "weir top  {} UTC  every {}  {}  sort: {col} {arrow}  {rates}",
            clock(SystemTime::now()),
            humantime::format_duration(self.interval),
            self.view.title(),
        )
    }

    /// Each gateway whose last scrape failed: its URL and why.
    pub fn failures(&self) -> Vec<String> {
        self.watched
            .iter()
            .filter_map(|w| Some(format!("{}: {}", w.target.base, w.error.as_ref()?)))
            .collect()
    }

    /// One line per gateway: its URL, up or down (and why), requests in flight, backends up.
    pub fn gateway_lines(&self) -> Vec<(bool, String)> {
        self.watched.iter().map(gateway_line).collect()
    }
}

fn gateway_line(w: &Watched) -> (bool, String) {
    let base = &w.target.base;
    if let Some(e) = &w.error {
        return (false, format!("{base}  DOWN  {e}"));
    }
    let Some(cur) = &w.cur else {
        return (true, format!("{base}  scraping..."));
    };
    let value = |name: &'static str| {
        cur.samples
            .iter()
            .filter(move |s| s.name == name)
            .map(|s| s.value)
    };
    let in_flight: f64 = value(IN_FLIGHT).sum();
    let ups: Vec<f64> = value(BACKEND_UP).collect();
    let up = ups.iter().filter(|v| **v >= 1.0).count();
    (
        true,
        format!(
            "{base}  up  in flight {in_flight:.0}  backends up {up}/{}",
            ups.len()
        ),
    )
}

/// `HH:MM:SS` of `t` in UTC.
fn clock(t: SystemTime) -> String {
    let s = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn app() -> App {
        let t = Target::parse("127.0.0.1:1", None).unwrap();
        App::new(vec![t], Duration::from_secs(1))
    }

    fn press(app: &mut App, code: KeyCode) -> Action {
        app.key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn keys_switch_views_cycle_the_sort_and_quit() {
        let mut a = app();
        assert_eq!(a.sort_column(), 1);
        press(&mut a, KeyCode::Char('s'));
        assert_eq!(a.sort_column(), 2);
        press(&mut a, KeyCode::Tab);
        assert_eq!((a.view, a.sort_column()), (View::Backends, 2));
        press(&mut a, KeyCode::Left);
        assert_eq!(
            (a.view, a.sort_column()),
            (View::Models, 2),
            "each view keeps its sort"
        );
        press(&mut a, KeyCode::Char('e'));
        assert_eq!(a.view, View::Errors);
        for _ in 0..View::Errors.columns().len() {
            press(&mut a, KeyCode::Char('s'));
        }
        assert_eq!(a.sort_column(), 3, "the sort comes round again");
        assert_eq!(press(&mut a, KeyCode::Char('x')), Action::Stay);
        assert_eq!(press(&mut a, KeyCode::Char('q')), Action::Quit);
        assert_eq!(press(&mut a, KeyCode::Esc), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(a.key(ctrl_c), Action::Quit);
    }

    #[test]
    fn a_failed_scrape_shows_in_the_header_and_the_next_one_clears_it() {
        let mut a = app();
        let scrape = |text: &str| Scrape {
            at: Instant::now(),
            samples: crate::expo::parse(text).unwrap(),
            backends: None,
        };
        a.update(vec![Err("connection refused".into())]);
        let (up, line) = a.gateway_lines().swap_remove(0);
        assert!(!up && line.contains("DOWN  connection refused"), "{line}");
        a.update(vec![Ok(scrape(
            "weir_requests_in_flight 3\nweir_backend_up{backend=\"x\"} 1\n",
        ))]);
        assert!(!a.has_rates());
        a.update(vec![Ok(scrape("weir_requests_in_flight 2\n"))]);
        assert!(a.has_rates());
        let (up, line) = a.gateway_lines().swap_remove(0);
        assert!(up && line.contains("up  in flight 2"), "{line}");
    }

    #[test]
    fn the_clock_reads_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 3600 * 13 + 60 * 4 + 5);
        assert_eq!(clock(t), "13:04:05");
    }
}
