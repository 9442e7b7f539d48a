//! A one-line countdown on stderr while `tokenctl login` waits for the
//! browser, on a terminal only: a script reading stdout (whose first line is
//! the authorize URL) or a log of stderr gets nothing extra.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The width of the line on screen (0: none), so that it can be blanked
/// before another message is printed.
static SHOWN: Mutex<usize> = Mutex::new(0);

/// Redraws the line every second until dropped; dropping blanks it.
pub struct Countdown {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Countdown {
    /// Starts `"{what}: M:SS left (Ctrl-C to give up)"` when both stdout and
    /// stderr are terminals; otherwise does nothing.
    pub fn start(what: &str, deadline: Instant) -> Countdown {
        let idle = Countdown {
            stop: None,
            thread: None,
        };
        if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
            return idle;
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let what = what.to_string();
        let thread = std::thread::spawn(move || {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                draw(&format!("{what}: {} left (Ctrl-C to give up)", clock(left)));
                match stopped.recv_timeout(Duration::from_secs(1)) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            }
        });
        Countdown {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Countdown {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
            blank(&mut SHOWN.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

/// Prints `message` on its own line of stderr, above the countdown if one is shown.
pub fn note(message: &str) {
    let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    blank(&mut shown);
    eprintln!("{message}");
}

fn draw(line: &str) {
    let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    let pad = shown.saturating_sub(line.chars().count());
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r{line}{:pad$}", "");
    let _ = err.flush();
    *shown = line.chars().count();
}

/// Overwrites the shown line with spaces (no terminal escapes, so it works
/// on every console) and returns the cursor to the start of it.
fn blank(shown: &mut usize) {
    if *shown > 0 {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{:width$}\r", "", width = *shown);
        let _ = err.flush();
        *shown = 0;
    }
}

/// `M:SS`, or `H:MM:SS` from an hour up.
fn clock(left: Duration) -> String {
    let s = left.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_reads_minutes_and_seconds() {
        assert_eq!(clock(Duration::from_secs(300)), "5:00");
        assert_eq!(clock(Duration::from_millis(59_900)), "0:59");
        assert_eq!(clock(Duration::ZERO), "0:00");
        assert_eq!(clock(Duration::from_secs(3661)), "1:01:01");
    }
}
