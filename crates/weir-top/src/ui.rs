//! The terminal: the alternate screen in raw mode, drawn with ratatui after every scrape
//! and every key, and given back as it was however the view ends (a key, SIGTERM, an
//! error, or a panic: ratatui's hook restores the terminal before the message prints).

use std::io;

use ratatui::Frame;
use ratatui::crossterm::event::{self, Event};
use ratatui::layout::{Alignment, Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table, TableState};
use tokio::sync::mpsc;

use crate::app::{Action, App};
use crate::rows::widths;
use crate::scrape::Scrape;
use crate::table::View;

/// Runs the view until a key or a signal ends it, on scrape rounds from `rounds`.
pub async fn run(
    mut app: App,
    rounds: mpsc::Receiver<Vec<Result<Scrape, String>>>,
) -> io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, &mut app, rounds).await;
    let restored = ratatui::try_restore();
    result.and(restored)
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    mut rounds: mpsc::Receiver<Vec<Result<Scrape, String>>>,
) -> io::Result<()> {
    let mut keys = key_events();
    let mut stop = Stop::install()?;
    loop {
        terminal.draw(|f| draw(f, app))?;
        tokio::select! {
            Some(round) = rounds.recv() => app.update(round),
            ev = keys.recv() => match ev {
                Some(Ok(Event::Key(k))) => {
                    if app.key(k) == Action::Quit {
                        return Ok(());
                    }
                }
                // A resize (or anything else): drawn again at the top of the loop.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
            () = stop.recv() => return Ok(()),
        }
    }
}

/// The terminal's events, read on a thread of their own: crossterm's reads block.
fn key_events() -> mpsc::UnboundedReceiver<io::Result<Event>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        loop {
            let ev = event::read();
            let failed = ev.is_err();
            if tx.send(ev).is_err() || failed {
                break;
            }
        }
    });
    rx
}

/// SIGTERM, SIGHUP (the terminal closed) or SIGINT from elsewhere end the view as `q`
/// does, so that the terminal is given back. In raw mode a Ctrl-C typed is a key instead.
struct Stop {
    #[cfg(unix)]
    signals: [tokio::signal::unix::Signal; 3],
}

impl Stop {
    fn install() -> io::Result<Stop> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Stop {
                signals: [
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::hangup())?,
                    signal(SignalKind::interrupt())?,
                ],
            })
        }
        #[cfg(not(unix))]
        Ok(Stop {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let [a, b, c] = &mut self.signals;
            tokio::select! {
                _ = a.recv() => {}
                _ = b.recv() => {}
                _ = c.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Header (title, a line per gateway), the table, and a line of keys.
pub(crate) fn draw(f: &mut Frame, app: &mut App) {
    let gateways = app.gateway_lines();
    let [header, table, footer] = Layout::vertical([
        Constraint::Length(u16::try_from(gateways.len() + 1).unwrap_or(u16::MAX)),
        Constraint::Min(2),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let mut lines = vec![Line::styled(
        app.title(),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    for (up, text) in gateways {
        let color = if up { Color::Green } else { Color::Red };
        lines.push(Line::styled(text, Style::new().fg(color)));
    }
    f.render_widget(Paragraph::new(lines), header);
    draw_table(f, app, table);
    let keys = "q quit  tab/m/b/e view  s sort column  r reverse  up/down move";
    f.render_widget(
        Paragraph::new(keys).style(Style::new().add_modifier(Modifier::DIM)),
        footer,
    );
}

fn draw_table(f: &mut Frame, app: &mut App, area: ratatui::layout::Rect) {
    let view = app.view;
    let rows = app.rows();
    app.selected = app.selected.min(rows.len().saturating_sub(1));
    let widths = widths(view, &rows);
    let sorted = app.sort_column();
    let cell = |i: usize, text: String| {
        let align = if i < view.text_columns() {
            Alignment::Left
        } else {
            Alignment::Right
        };
        Cell::from(Line::from(text).alignment(align))
    };
    let header = TableRow::new(view.columns().iter().enumerate().map(|(i, t)| {
        let c = cell(i, (*t).to_owned());
        if i == sorted {
            c.style(Style::new().add_modifier(Modifier::UNDERLINED))
        } else {
            c
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD));
    let body = rows
        .into_iter()
        .map(|r| TableRow::new(r.cells.into_iter().enumerate().map(|(i, c)| cell(i, c))));
    let lengths = widths
        .iter()
        .map(|w| Constraint::Length(u16::try_from(*w).unwrap_or(u16::MAX)));
    let table = Table::new(body, lengths)
        .header(header)
        .column_spacing(2)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(Some(app.selected));
    f.render_stateful_widget(table, area, &mut state);
}

/// The plain-text snapshot: the header and every view's table.
pub fn snapshot(app: &App) -> String {
    let mut out = app.title() + "\n";
    for (_, line) in app.gateway_lines() {
        out += &line;
        out.push('\n');
    }
    for view in View::ALL {
        let rows = app.tables.rows(view, view.default_sort(), true);
        out += &format!("\n{}\n{}", view.title(), crate::rows::plain(view, &rows));
    }
    out
}
