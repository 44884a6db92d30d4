//! Progress bars: redrawn in place on a terminal, one line every few seconds in a log (CI, `nohup`,
//! a redirected stderr), where indicatif alone would print nothing.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a bar writes a line when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(15);

/// A progress bar of `len` steps drawn with an indicatif `template`.
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let target = if io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::term_like_with_hz(Box::new(LogLines::new(Box::new(io::stderr()))), 1)
    };
    ProgressBar::with_draw_target(Some(len), target).with_style(style)
}

/// A terminal stand-in that writes the bar as plain lines, at most one per [`LOG_EVERY`], and
/// the last state when the bar goes away.
struct LogLines {
    state: Mutex<LogState>,
}

struct LogState {
    sink: Box<dyn Write + Send>,
    last_written: Option<Instant>,
    pending: Option<String>,
}

impl LogLines {
    fn new(sink: Box<dyn Write + Send>) -> Self {
        Self {
            state: Mutex::new(LogState {
                sink,
                last_written: None,
                pending: None,
            }),
        }
    }

    fn record(&self, line: &str) -> io::Result<()> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(());
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.last_written.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            s.pending = Some(line.to_string());
            return Ok(());
        }
        s.pending = None;
        s.last_written = Some(Instant::now());
        writeln!(s.sink, "{line}")
    }
}

impl Drop for LogLines {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(line) = s.pending.take() {
            let _ = writeln!(s.sink, "{line}");
        }
    }
}

impl fmt::Debug for LogLines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LogLines")
    }
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        120
    }

    fn move_cursor_up(&self, _: usize) -> io::Result<()> {
        Ok(())
    }

    fn move_cursor_down(&self, _: usize) -> io::Result<()> {
        Ok(())
    }

    fn move_cursor_right(&self, _: usize) -> io::Result<()> {
        Ok(())
    }

    fn move_cursor_left(&self, _: usize) -> io::Result<()> {
        Ok(())
    }

    fn write_line(&self, s: &str) -> io::Result<()> {
        self.record(s)
    }

    fn write_str(&self, s: &str) -> io::Result<()> {
        self.record(s)
    }

    fn clear_line(&self) -> io::Result<()> {
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_lines_are_throttled_and_the_last_state_is_kept() {
        let out = Shared::default();
        let log = LogLines::new(Box::new(out.clone()));
        log.write_line("1/10").unwrap();
        log.write_line("").unwrap();
        log.write_line("2/10").unwrap();
        log.write_line("3/10").unwrap();
        drop(log);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "1/10\n3/10\n");
    }
}
