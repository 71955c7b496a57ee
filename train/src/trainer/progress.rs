//! Progress display: a bar with loss and throughput on a terminal, plain log lines
//! otherwise (CI logs, files).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// Reports training progress.
pub enum Progress {
    /// An interactive bar on stderr.
    Bar(ProgressBar),
    /// One line per log step on stderr.
    Lines {
        /// Total steps.
        total: u64,
    },
    /// Nothing (tests).
    Quiet,
}

impl Progress {
    /// A bar when stderr is a terminal, else log lines; nothing when `quiet`.
    pub fn new(start: u64, total: u64, quiet: bool) -> Self {
        if quiet {
            return Progress::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return Progress::Lines { total };
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}")
                .expect("valid template"),
        );
        bar.set_position(start);
        Progress::Bar(bar)
    }

    /// Reports a completed step with its summary message.
    pub fn step(&self, step: u64, msg: &str) {
        match self {
            Progress::Bar(b) => {
                b.set_position(step);
                b.set_message(msg.to_string());
            }
            Progress::Lines { total } => eprintln!("step {step}/{total} {msg}"),
            Progress::Quiet => {}
        }
    }

    /// Prints a line that is not a step (eval results, checkpoints).
    pub fn note(&self, msg: &str) {
        match self {
            Progress::Bar(b) => b.println(msg),
            Progress::Lines { .. } => eprintln!("{msg}"),
            Progress::Quiet => {}
        }
    }

    /// Finishes the bar.
    pub fn finish(&self) {
        if let Progress::Bar(b) = self {
            b.finish();
        }
    }
}
