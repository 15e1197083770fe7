//! What `taskscope top` draws: the node header, the table (or a row's page, or the help) and
//! the status line, into a buffer: the terminal's, or a text snapshot's.

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line as TextLine, Span},
    widgets::{
        Block, Borders, Cell, Clear, Paragraph, Row, StatefulWidget, Table, TableState, Widget,
    },
};

use super::{
    format::{bytes, count, ns, percent, unix_time},
    table::{Column, Line, Mode},
    App,
};

/// Width of one CPU's labelled bar in the header (`  3 ██████   62%`).
const CPU_CELL: usize = 18;

/// Header lines the CPU bars may take.
const CPU_LINES: usize = 2;

/// Levels of a one-character bar.
const LEVELS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The keys, for `?`.
pub(crate) const HELP: &[&str] = &[
    "Tab        workloads / processes",
    "1-9        sort by that column (again: reverse)",
    "< >        sort by the previous / next column",
    "/          filter (every word must match; Enter keeps it, Esc clears it)",
    "t          processes as a tree",
    "Enter      the row's page: run-queue histogram, syscalls, errors, exits, slow events",
    "Esc        back",
    "Up Down PgUp PgDn Home End   move",
    "p, Space   pause (freeze the screen)",
    "+ -        refresh interval (1 to 10 s)",
    "w          write the screen to a file",
    "?          this help",
    "q, Ctrl-C  quit",
];

/// Draws the whole screen of `app` into `area` of `buf`.
pub(crate) fn render(app: &App, area: Rect, buf: &mut Buffer) {
    let header = header_lines(app, area.width as usize);
    let status_height = u16::from(!app.once);
    let [top, body, status] = Layout::vertical([
        Constraint::Length(header.len() as u16),
        Constraint::Min(2),
        Constraint::Length(status_height),
    ])
    .areas(area);
    Paragraph::new(header).render(top, buf);
    match &app.detail {
        Some(detail) => {
            let mut lines: Vec<TextLine> = Vec::new();
            if let Some(error) = &detail.error {
                lines.push(TextLine::styled(error.clone(), app.style(Color::Red)));
            }
            if detail.lines.is_empty() && detail.error.is_none() {
                lines.push(TextLine::raw("loading..."));
            }
            lines.extend(detail.lines.iter().map(|l| TextLine::raw(l.clone())));
            // Less the block's top border.
            app.page_height.set(body.height.saturating_sub(1));
            Paragraph::new(lines)
                .block(
                    Block::default()
                        .borders(Borders::TOP)
                        .title(detail.title.clone()),
                )
                .scroll((detail.scroll, 0))
                .render(body, buf);
        }
        None => table(app, body, buf),
    }
    if !app.once {
        Paragraph::new(status_line(app)).render(status, buf);
    }
    if app.help {
        help(area, buf);
    }
}

fn header_lines(app: &App, width: usize) -> Vec<TextLine<'static>> {
    let mut lines = Vec::new();
    let frame = app.frame.as_ref();
    let title = format!(
        "taskscope top  {}  agent {}  {}{}",
        app.url,
        app.agent_version,
        frame.map_or_else(
            || "waiting for the first frame".to_string(),
            |f| format!(
                "frame #{} at {} UTC",
                f.seq,
                unix_time(Some(f.unix_ms * 1_000_000))
            )
        ),
        if app.paused { "  PAUSED" } else { "" }
    );
    lines.push(match app.quiet_for() {
        Some(seconds) => TextLine::styled(
            format!("{title}  NO FRAME FOR {seconds} s"),
            app.style(Color::Red).add_modifier(Modifier::BOLD),
        ),
        None => TextLine::styled(title, Style::default().add_modifier(Modifier::BOLD)),
    });
    let Some(frame) = frame else {
        return lines;
    };
    if let Some(node) = &frame.node {
        lines.extend(cpu_bars(app, &node.cpu_busy, width));
        let memory = match (node.memory_total_bytes, node.memory_available_bytes) {
            (Some(total), Some(available)) => format!(
                "{}/{} used",
                bytes(Some(total.saturating_sub(available) as f64)),
                bytes(Some(total as f64))
            ),
            _ => "-".into(),
        };
        lines.push(TextLine::raw(format!(
            "CPU {:.2}/{} busy, idle frag {}   MEM {memory}, frag {}",
            node.busy_cpus,
            node.cpu_busy.len(),
            percent(node.idle_fragmented_share),
            percent(node.memory_fragmented_share)
        )));
        let pressure: Vec<String> = node
            .pressure
            .iter()
            .map(|p| format!("{} {}", p.resource, percent(p.some)))
            .collect();
        lines.push(TextLine::raw(format!(
            "PSI {}   PROCS {} run, {}/s start, {}/s fail",
            if pressure.is_empty() {
                "-".into()
            } else {
                pressure.join(" ")
            },
            node.processes.running,
            count(node.processes.started_per_s),
            count(node.processes.failed_per_s)
        )));
    }
    if let Some(agent) = &frame.agent {
        let (status, message) = agent
            .health
            .as_ref()
            .map_or(("-", ""), |h| (h.status.as_str(), h.message.as_str()));
        let color = match status {
            "healthy" => Color::Green,
            "degraded" => Color::Yellow,
            _ => Color::Red,
        };
        let why = if status == "healthy" {
            String::new()
        } else {
            format!(" ({message})")
        };
        lines.push(TextLine::from(vec![
            Span::raw("AGENT "),
            Span::styled(status.to_string(), app.style(color)),
            Span::raw(format!(
                "  cpu {}  rss {}  lost {}  frames missed {}{why}",
                percent(agent.cpu),
                bytes(agent.rss_bytes.map(|b| b as f64)),
                agent.lost_total,
                app.frames_missed
            )),
        ]));
    }
    lines
}

/// Each CPU's busy share: labelled bars when they fit in [`CPU_LINES`] lines, else one
/// character a CPU (groups of CPUs averaged when even that does not fit).
fn cpu_bars(app: &App, busy: &[Option<f64>], width: usize) -> Vec<TextLine<'static>> {
    let per_line = (width / CPU_CELL).max(1);
    if busy.len() <= per_line * CPU_LINES {
        return busy
            .chunks(per_line)
            .enumerate()
            .map(|(line, cpus)| {
                let spans: Vec<Span> = cpus
                    .iter()
                    .enumerate()
                    .flat_map(|(i, share)| {
                        let share = share.unwrap_or(0.0).clamp(0.0, 1.0);
                        let filled = (share * 8.0).round() as usize;
                        let bar = format!("{:<8}", "█".repeat(filled));
                        [
                            Span::raw(format!("{:>3} ", line * per_line + i)),
                            Span::styled(bar, app.style(level_color(share))),
                            Span::raw(format!(" {:>3.0}%  ", share * 100.0)),
                        ]
                    })
                    .collect();
                TextLine::from(spans)
            })
            .collect();
    }
    let room = width.saturating_sub(12).max(8) * CPU_LINES;
    let group = busy.len().div_ceil(room);
    let shares: Vec<f64> = busy
        .chunks(group)
        .map(|g| g.iter().map(|s| s.unwrap_or(0.0)).sum::<f64>() / g.len() as f64)
        .collect();
    let per_line = shares.len().div_ceil(CPU_LINES);
    shares
        .chunks(per_line.max(1))
        .enumerate()
        .map(|(line, chunk)| {
            let first = line * per_line * group;
            let mut spans = vec![Span::raw(format!("cpu {first:>5}+ "))];
            spans.extend(chunk.iter().map(|&share| {
                let level = (share.clamp(0.0, 1.0) * 8.0).round() as usize;
                Span::styled(LEVELS[level].to_string(), app.style(level_color(share)))
            }));
            TextLine::from(spans)
        })
        .collect()
}

fn level_color(share: f64) -> Color {
    if share >= 0.9 {
        Color::Red
    } else if share >= 0.6 {
        Color::Yellow
    } else {
        Color::Green
    }
}

fn table(app: &App, area: Rect, buf: &mut Buffer) {
    let columns = Column::of(app.mode);
    let header = Row::new(columns.iter().map(|&column| {
        let mark = if column == app.sort {
            if app.descending {
                "▼"
            } else {
                "▲"
            }
        } else {
            ""
        };
        Cell::from(format!("{}{mark}", column.title(app.mode)))
    }))
    .style(Style::default().add_modifier(Modifier::REVERSED));
    let rows = app.lines.iter().map(|line| {
        Row::new(columns.iter().map(|&column| {
            let text = cell(line, column, app.tree);
            let style = match column {
                Column::Name if !line.states.is_empty() => app.style(Color::Red),
                Column::Errors if line.rates.syscall_errors_per_s.unwrap_or(0.0) > 0.0 => {
                    app.style(Color::Yellow)
                }
                Column::Failed if line.failed_per_s.unwrap_or(0.0) > 0.0 => app.style(Color::Red),
                _ => Style::default(),
            };
            Cell::from(text).style(style)
        }))
    });
    let widths: Vec<Constraint> = columns
        .iter()
        .map(|column| match column {
            Column::Name => Constraint::Fill(2),
            Column::Workload => Constraint::Fill(1),
            Column::Pid => Constraint::Length(7),
            Column::Cpu => Constraint::Length(5),
            Column::Count => Constraint::Length(6),
            Column::Syscalls | Column::Errors | Column::Failed => Constraint::Length(6),
            _ => Constraint::Length(7),
        })
        .collect();
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default()
        .with_selected(app.selected_index())
        .with_offset(app.offset);
    StatefulWidget::render(table, area, buf, &mut state);
}

/// The text of a line's cell.
fn cell(line: &Line, column: Column, tree: bool) -> String {
    let r = &line.rates;
    match column {
        Column::Pid => line.pid.map_or_else(String::new, |p| p.to_string()),
        Column::Name => {
            let indent = if tree && line.depth > 0 {
                format!("{}└ ", "  ".repeat(line.depth - 1))
            } else {
                String::new()
            };
            let states = if line.states.is_empty() {
                String::new()
            } else {
                format!(" [{}]", line.states.join(","))
            };
            format!("{indent}{}{states}", line.name)
        }
        Column::Cpu => r.cpu.map_or_else(|| "-".into(), |c| format!("{c:.2}")),
        Column::RunqueueP99 => ns(r.runqueue_p99_ns),
        Column::Involuntary => count(r.involuntary_switches_per_s),
        Column::Syscalls => count(r.syscalls_per_s),
        Column::Errors => count(r.syscall_errors_per_s),
        Column::Io => bytes(r.io_bytes_per_s),
        Column::Failed => count(line.failed_per_s),
        Column::Count => line.count.to_string(),
        Column::Workload => line.workload.clone(),
    }
}

fn status_line(app: &App) -> TextLine<'static> {
    if app.typing {
        return TextLine::raw(format!(
            "filter: {}▏ (Enter keeps it, Esc clears it)",
            app.filter
        ));
    }
    if let Some(message) = &app.message {
        return TextLine::styled(message.clone(), app.style(Color::Yellow));
    }
    let (shown, total) = app.counts();
    let what = match app.mode {
        Mode::Workloads => "workloads",
        Mode::Processes => "processes",
    };
    let filter = if app.filter.is_empty() {
        String::new()
    } else {
        format!(" filter \"{}\"", app.filter)
    };
    TextLine::raw(format!(
        "{shown}/{total} {what}{filter}  {} s{}  ?:help q:quit Tab:{} /:filter Enter:page p:pause",
        app.interval,
        if app.tree { "  tree" } else { "" },
        match app.mode {
            Mode::Workloads => "processes",
            Mode::Processes => "workloads",
        }
    ))
}

fn help(area: Rect, buf: &mut Buffer) {
    let width = (HELP.iter().map(|l| l.len()).max().unwrap_or(40) as u16 + 4).min(area.width);
    let height = (HELP.len() as u16 + 2).min(area.height);
    let x = area.x + (area.width - width) / 2;
    let y = area.y + (area.height - height) / 2;
    let popup = Rect::new(x, y, width, height);
    Clear.render(popup, buf);
    Paragraph::new(HELP.iter().map(|l| TextLine::raw(*l)).collect::<Vec<_>>())
        .block(Block::default().borders(Borders::ALL).title(" keys "))
        .render(popup, buf);
}

/// The text of a buffer, one line per row, without trailing blanks.
pub(crate) fn text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        for x in area.left()..area.right() {
            if let Some(cell) = buf.cell((x, y)) {
                line.push_str(cell.symbol());
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}
