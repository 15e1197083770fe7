//! `taskscope top`: the live view in a terminal, a client of the agent's live feed (the
//! dashboard's, `/api/v1/live`) and of its JSON API for a row's page. It needs no privileges
//! and never loads kernel programs.

mod client;
mod detail;
mod format;
mod table;
mod view;

use std::{
    io::IsTerminal,
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use ratatui::{
    buffer::Buffer,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::Rect,
    style::{Color, Style},
};
use tokio::sync::mpsc;

use self::{
    client::{Endpoint, Frame, FromAgent, ToAgent},
    table::{Column, Line, Mode},
};
use crate::{api::ui::ClientMessage, cli::TopArgs};

/// How long `--once` waits for a frame with rates.
const ONCE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a message stays in the status line.
const MESSAGE_FOR: Duration = Duration::from_secs(4);

/// Width of a text snapshot when the output is not a terminal.
const DEFAULT_WIDTH: u16 = 120;

/// Runs `taskscope top`; the error is one line for the user.
pub fn run(args: &TopArgs) -> Result<(), String> {
    let token = client::read_token(args.token.as_deref(), args.token_file.as_deref())?;
    let endpoint = Endpoint::parse(&args.url, token)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))?;
    let connection = runtime.block_on(client::connect(&endpoint))?;
    let mut app = App::new(args, &endpoint, &connection.hello.version);
    let (from_agent, to_agent) = connection.spawn(runtime);
    let once = args.once || !std::io::stdout().is_terminal();
    app.once = once;
    app.color = !once && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    app.subscribe(&to_agent);
    if once {
        return print_once(&mut app, &from_agent, args.width);
    }
    let mut terminal =
        ratatui::try_init().map_err(|err| format!("cannot use the terminal: {err}"))?;
    let result = interactive(&mut app, &mut terminal, &from_agent, &to_agent, args);
    ratatui::restore();
    result
}

/// Waits for a frame with rates, prints it as text and returns.
fn print_once(
    app: &mut App,
    from_agent: &std_mpsc::Receiver<FromAgent>,
    width: Option<u16>,
) -> Result<(), String> {
    let deadline = Instant::now() + ONCE_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match from_agent.recv_timeout(left) {
            Ok(FromAgent::Frame(frame)) => {
                let ready = app.has_rates(&frame);
                app.take_frame(frame);
                if ready {
                    break;
                }
            }
            Ok(FromAgent::Closed(why) | FromAgent::Refused(why)) => return Err(why),
            Ok(FromAgent::Detail(..)) => {}
            Err(_) => {
                return Err(format!(
                    "no frame with rates from the agent in {} s",
                    ONCE_TIMEOUT.as_secs()
                ))
            }
        }
    }
    let width = width
        .or_else(|| ratatui::crossterm::terminal::size().ok().map(|s| s.0))
        .filter(|_| std::io::stdout().is_terminal() || width.is_some())
        .unwrap_or(DEFAULT_WIDTH);
    // Every row: the header, the table's header and its lines.
    let height = 8 + app.lines.len() as u16 + 1;
    let area = Rect::new(0, 0, width, height);
    let mut buf = Buffer::empty(area);
    view::render(app, area, &mut buf);
    print!("{}", view::text(&buf));
    Ok(())
}

fn interactive(
    app: &mut App,
    terminal: &mut ratatui::DefaultTerminal,
    from_agent: &std_mpsc::Receiver<FromAgent>,
    to_agent: &mpsc::Sender<ToAgent>,
    args: &TopArgs,
) -> Result<(), String> {
    let mut dirty = true;
    loop {
        if dirty {
            let drawn = terminal
                .draw(|f| view::render(app, f.area(), f.buffer_mut()))
                .map_err(|err| format!("cannot draw: {err}"))?;
            app.screen = view::text(drawn.buffer);
            dirty = false;
        }
        if event::poll(Duration::from_millis(100)).map_err(|err| format!("terminal: {err}"))? {
            match event::read().map_err(|err| format!("terminal: {err}"))? {
                Event::Key(key) if key.kind != KeyEventKind::Release => {
                    if app.key(key, to_agent, args) == Flow::Quit {
                        return Ok(());
                    }
                    dirty = true;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
        while let Ok(news) = from_agent.try_recv() {
            dirty = true;
            match news {
                FromAgent::Frame(frame) if !app.paused => {
                    app.take_frame(frame);
                    app.refresh_detail(to_agent);
                }
                FromAgent::Frame(_) => {}
                FromAgent::Detail(id, page) => app.take_detail(id, page),
                FromAgent::Refused(why) => app.say(why),
                FromAgent::Closed(why) => return Err(why),
            }
        }
        if app.quiet_for().is_some() {
            // The age it shows moves on.
            dirty = true;
        }
        if app.message_at.is_some_and(|at| at.elapsed() > MESSAGE_FOR) {
            app.message = None;
            app.message_at = None;
            dirty = true;
        }
    }
}

/// Whether to go on after a key.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

/// A row's page, while it is open.
#[derive(Debug)]
pub(crate) struct Detail {
    title: String,
    /// The JSON API page it shows.
    path: String,
    workload: bool,
    lines: Vec<String>,
    error: Option<String>,
    scroll: u16,
    /// The request being answered; none in flight when `None`.
    waiting: Option<u64>,
}

/// The state of the screen.
pub(crate) struct App {
    url: String,
    base: reqwest::Url,
    agent_version: String,
    pub(crate) mode: Mode,
    pub(crate) sort: Column,
    pub(crate) descending: bool,
    pub(crate) filter: String,
    pub(crate) typing: bool,
    pub(crate) tree: bool,
    pub(crate) paused: bool,
    pub(crate) interval: u64,
    pub(crate) frame: Option<Box<Frame>>,
    /// When the latest frame came (a feed that goes quiet shows as such).
    last_frame_at: Option<Instant>,
    /// The table as shown: filtered, sorted.
    pub(crate) lines: Vec<Line>,
    /// The key of the selected line (it stays selected when lines move).
    selected: Option<String>,
    pub(crate) offset: usize,
    pub(crate) detail: Option<Detail>,
    pub(crate) help: bool,
    pub(crate) message: Option<String>,
    message_at: Option<Instant>,
    pub(crate) frames_missed: u64,
    pub(crate) color: bool,
    pub(crate) once: bool,
    /// The screen's text as last drawn (for `w`).
    screen: String,
    /// Lines a page shows at once, as last drawn.
    pub(crate) page_height: std::cell::Cell<u16>,
    requests: u64,
}

impl App {
    fn new(args: &TopArgs, endpoint: &Endpoint, agent_version: &str) -> Self {
        Self {
            url: endpoint.base.as_str().trim_end_matches('/').to_string(),
            base: endpoint.base.clone(),
            agent_version: agent_version.to_string(),
            mode: if args.processes {
                Mode::Processes
            } else {
                Mode::Workloads
            },
            sort: Column::Cpu,
            descending: true,
            filter: String::new(),
            typing: false,
            tree: false,
            paused: false,
            interval: args.interval,
            frame: None,
            lines: Vec::new(),
            selected: None,
            offset: 0,
            detail: None,
            help: false,
            message: None,
            message_at: None,
            frames_missed: 0,
            last_frame_at: None,
            color: false,
            once: false,
            screen: String::new(),
            page_height: std::cell::Cell::new(1),
            requests: 0,
        }
    }

    /// A foreground colour, or none without colours.
    pub(crate) fn style(&self, color: Color) -> Style {
        if self.color {
            Style::default().fg(color)
        } else {
            Style::default()
        }
    }

    fn say(&mut self, message: String) {
        self.message = Some(message);
        self.message_at = Some(Instant::now());
    }

    /// Tells the agent what this screen shows and how often.
    fn subscribe(&self, to_agent: &mpsc::Sender<ToAgent>) {
        let _ = to_agent.try_send(ToAgent::Feed(ClientMessage {
            subscribe: Some(client::sections(self.mode == Mode::Processes)),
            pause: Some(self.paused),
            every: Some(self.interval),
        }));
    }

    /// Whether `frame`'s table has rates (a client's first frame has none).
    fn has_rates(&self, frame: &Frame) -> bool {
        match self.mode {
            Mode::Workloads => frame
                .workloads
                .as_ref()
                .is_some_and(|t| t.rows.iter().any(|r| r.rates.cpu.is_some())),
            Mode::Processes => frame
                .processes
                .as_ref()
                .is_some_and(|t| t.rows.iter().any(|r| r.rates.cpu.is_some())),
        }
    }

    /// Seconds since the latest frame when that is well over the refresh interval (the agent
    /// is stuck or the network is), unless paused.
    pub(crate) fn quiet_for(&self) -> Option<u64> {
        let since = self.last_frame_at?.elapsed().as_secs();
        (!self.paused && since >= 3 * self.interval).then_some(since)
    }

    fn take_frame(&mut self, frame: Box<Frame>) {
        self.last_frame_at = Some(Instant::now());
        self.frames_missed += frame.dropped;
        self.frame = Some(frame);
        self.rebuild();
    }

    /// The table from the latest frame, filtered and sorted, keeping the selected line.
    fn rebuild(&mut self) {
        let Some(frame) = &self.frame else {
            return;
        };
        let lines: Vec<Line> = match self.mode {
            Mode::Workloads => frame
                .workloads
                .iter()
                .flat_map(|t| &t.rows)
                .map(Line::of_workload)
                .collect(),
            Mode::Processes => frame
                .processes
                .iter()
                .flat_map(|t| &t.rows)
                .map(Line::of_process)
                .collect(),
        };
        let mut lines: Vec<Line> = lines
            .into_iter()
            .filter(|l| l.matches(&self.filter))
            .collect();
        let previous: Vec<String> = self.lines.iter().map(|l| l.key.clone()).collect();
        table::sort(&mut lines, self.sort, self.descending, &previous);
        if self.tree && self.mode == Mode::Processes {
            lines = table::tree(lines);
        }
        self.lines = lines;
        if self.selected_index().is_none() {
            self.selected = self.lines.first().map(|l| l.key.clone());
        }
    }

    /// The lines in the frame's table and those in the agent (beyond the frame's bound).
    fn counts(&self) -> (usize, usize) {
        let total = self.frame.as_ref().map_or(0, |f| match self.mode {
            Mode::Workloads => f.workloads.as_ref().map_or(0, |t| t.total),
            Mode::Processes => f.processes.as_ref().map_or(0, |t| t.total),
        });
        (self.lines.len(), total)
    }

    pub(crate) fn selected_index(&self) -> Option<usize> {
        let key = self.selected.as_ref()?;
        self.lines.iter().position(|l| &l.key == key)
    }

    fn select(&mut self, index: usize) {
        if let Some(line) = self
            .lines
            .get(index.min(self.lines.len().saturating_sub(1)))
        {
            self.selected = Some(line.key.clone());
        }
    }

    fn take_detail(&mut self, id: u64, page: Result<serde_json::Value, String>) {
        let Some(detail) = &mut self.detail else {
            return;
        };
        if detail.waiting != Some(id) {
            return;
        }
        detail.waiting = None;
        match page {
            Ok(page) => {
                detail.lines = if detail.workload {
                    detail::workload(&page)
                } else {
                    detail::process(&page)
                };
                detail.error = None;
            }
            Err(err) => detail.error = Some(err),
        }
    }

    /// Asks again for the open page (once a frame, one request at a time).
    fn refresh_detail(&mut self, to_agent: &mpsc::Sender<ToAgent>) {
        self.requests += 1;
        let id = self.requests;
        if let Some(detail) = self.detail.as_mut().filter(|d| d.waiting.is_none()) {
            if to_agent
                .try_send(ToAgent::Detail(id, detail.path.clone()))
                .is_ok()
            {
                detail.waiting = Some(id);
            }
        }
    }

    /// Opens the selected line's page.
    fn open_detail(&mut self, to_agent: &mpsc::Sender<ToAgent>) {
        let Some(line) = self.selected_index().and_then(|i| self.lines.get(i)) else {
            return;
        };
        let (title, path, workload) = match line.pid {
            Some(pid) => (
                format!(" process {pid} {} (Esc: back) ", line.name),
                format!("/api/v1/processes/{pid}"),
                false,
            ),
            None => {
                let mut url = self.base.clone();
                url.set_path("/api/v1/workloads/detail");
                url.query_pairs_mut()
                    .clear()
                    .append_pair("cgroup", &line.cgroup);
                let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
                (format!(" {} (Esc: back) ", line.name), path, true)
            }
        };
        self.detail = Some(Detail {
            title,
            path,
            workload,
            lines: Vec::new(),
            error: None,
            scroll: 0,
            waiting: None,
        });
        self.refresh_detail(to_agent);
    }

    /// Handles a key.
    fn key(&mut self, key: KeyEvent, to_agent: &mpsc::Sender<ToAgent>, args: &TopArgs) -> Flow {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Flow::Quit;
        }
        if self.typing {
            self.filter_key(key.code);
            return Flow::Continue;
        }
        if self.help {
            self.help = false;
            return Flow::Continue;
        }
        match key.code {
            KeyCode::Char('q') => return Flow::Quit,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('p' | ' ') => {
                self.paused = !self.paused;
                self.subscribe(to_agent);
            }
            KeyCode::Char('+') => self.set_interval(self.interval + 1, to_agent),
            KeyCode::Char('-') => self.set_interval(self.interval.saturating_sub(1), to_agent),
            KeyCode::Char('w') => self.write_snapshot(&args.snapshot_dir),
            KeyCode::Esc | KeyCode::Backspace if self.detail.is_some() => self.detail = None,
            _ if self.detail.is_some() => self.scroll_detail(key.code),
            _ => self.table_key(key.code, to_agent),
        }
        Flow::Continue
    }

    fn filter_key(&mut self, code: KeyCode) {
        match code {
            KeyCode::Enter => self.typing = false,
            KeyCode::Esc => {
                self.typing = false;
                self.filter.clear();
            }
            KeyCode::Backspace => {
                self.filter.pop();
            }
            KeyCode::Char(c) if self.filter.chars().count() < 64 && !c.is_control() => {
                self.filter.push(c);
            }
            _ => {}
        }
        self.rebuild();
    }

    fn table_key(&mut self, code: KeyCode, to_agent: &mpsc::Sender<ToAgent>) {
        let columns = Column::of(self.mode);
        let sorted = columns.iter().position(|&c| c == self.sort).unwrap_or(0);
        let page = 10;
        let at = self.selected_index().unwrap_or(0);
        match code {
            KeyCode::Tab => {
                self.mode = match self.mode {
                    Mode::Workloads => Mode::Processes,
                    Mode::Processes => Mode::Workloads,
                };
                if !Column::of(self.mode).contains(&self.sort) {
                    self.sort = Column::Cpu;
                }
                self.lines.clear();
                self.selected = None;
                self.subscribe(to_agent);
            }
            KeyCode::Char(c @ '1'..='9') => {
                let index = c as usize - '1' as usize;
                if let Some(&column) = columns.get(index) {
                    self.sort_by(column);
                }
            }
            KeyCode::Char('<') => self.sort_by(columns[sorted.saturating_sub(1)]),
            KeyCode::Char('>') => self.sort_by(columns[(sorted + 1).min(columns.len() - 1)]),
            KeyCode::Char('/') => self.typing = true,
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Char('t') => self.tree = !self.tree,
            KeyCode::Enter => self.open_detail(to_agent),
            KeyCode::Up => self.select(at.saturating_sub(1)),
            KeyCode::Down => self.select(at + 1),
            KeyCode::PageUp => self.select(at.saturating_sub(page)),
            KeyCode::PageDown => self.select(at + page),
            KeyCode::Home => self.select(0),
            KeyCode::End => self.select(usize::MAX),
            _ => {}
        }
        self.rebuild();
    }

    /// Sorts by `column`; by the same column again, the other way.
    fn sort_by(&mut self, column: Column) {
        if self.sort == column {
            self.descending = !self.descending;
        } else {
            self.sort = column;
            self.descending = column.descending_first();
        }
    }

    fn scroll_detail(&mut self, code: KeyCode) {
        let Some(detail) = &mut self.detail else {
            return;
        };
        let last = (detail.lines.len() as u16).saturating_sub(self.page_height.get());
        detail.scroll = match code {
            KeyCode::Up => detail.scroll.saturating_sub(1),
            KeyCode::Down => (detail.scroll + 1).min(last),
            KeyCode::PageUp => detail.scroll.saturating_sub(10),
            KeyCode::PageDown => (detail.scroll + 10).min(last),
            KeyCode::Home => 0,
            KeyCode::End => last,
            _ => detail.scroll,
        };
    }

    fn set_interval(&mut self, seconds: u64, to_agent: &mpsc::Sender<ToAgent>) {
        self.interval = seconds.clamp(1, crate::api::ui::MAX_EVERY);
        self.subscribe(to_agent);
        self.say(format!("refreshing every {} s", self.interval));
    }

    /// Writes the screen as last drawn to a file in `dir`.
    fn write_snapshot(&mut self, dir: &std::path::Path) {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = dir.join(format!("taskscope-top-{unix_ms}.txt"));
        let said = match std::fs::write(&path, &self.screen) {
            Ok(()) => format!("wrote the screen to {}", path.display()),
            Err(err) => format!("cannot write {}: {err}", path.display()),
        };
        self.say(said);
    }
}
