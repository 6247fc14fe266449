//! How a conversion (and a transfer between stores) shows on stderr while it runs, as
//! `docker pull` shows a pull: on a terminal (`tty`), a bar per layer with its bytes, and a
//! total with its rate and elapsed time; on a file or a pipe (`plain`), one line per
//! finished layer and stage, and a running total every few seconds; nothing with `quiet` or
//! `-q`. `auto` picks by what stderr is.
//!
//! The library reports stages as [`Progress`] events and counts the layers' bytes in a
//! [`LayerMeter`]; a thread here polls the meter while the layers are read.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use diskc::layer::{LayerMeter, LayerReading};
use diskc::pipeline::Progress;

use super::GlobalArgs;

/// `--progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// tty when stderr is a terminal, else plain.
    #[default]
    Auto,
    /// Lines, for logs and CI.
    Plain,
    /// Live bars (drawn only where stderr is a terminal).
    Tty,
    /// Nothing but errors and notes.
    Quiet,
}

/// What is shown, once `auto` and `-q` are settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    Plain,
    Tty,
    Quiet,
}

impl ProgressMode {
    /// `-q` wins over any mode: it asks for the result alone.
    pub fn shown(self, global: &GlobalArgs) -> Shown {
        match self {
            _ if global.quiet => Shown::Quiet,
            ProgressMode::Quiet => Shown::Quiet,
            ProgressMode::Plain => Shown::Plain,
            ProgressMode::Tty => Shown::Tty,
            ProgressMode::Auto if std::io::stderr().is_terminal() => Shown::Tty,
            ProgressMode::Auto => Shown::Plain,
        }
    }
}

/// How often the layer meter is looked at, and how often plain mode prints a running total.
const POLL: Duration = Duration::from_millis(100);
const PLAIN_TOTAL_EVERY: Duration = Duration::from_secs(5);

/// The display of one conversion.
pub struct ConvertDisplay {
    shown: Shown,
    /// The layers being read: the meter, when reading began, and the thread polling it.
    reading: Option<(Arc<LayerMeter>, Instant, Poller)>,
    /// The stages after the layers, on a terminal.
    stage: Option<ProgressBar>,
}

struct Poller {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Poller {
    fn end(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

impl ConvertDisplay {
    pub fn new(shown: Shown) -> Self {
        ConvertDisplay { shown, reading: None, stage: None }
    }

    pub fn show(&mut self, progress: Progress) {
        match (self.shown, progress) {
            (Shown::Quiet, _) | (_, Progress::Build(_) | Progress::Built { .. }) => {}
            (shown, Progress::Resolved { input, layers, bytes, meter }) => {
                if shown == Shown::Plain {
                    let size = bytes.map(|b| format!(", {}", HumanBytes(b))).unwrap_or_default();
                    eprintln!("{input}: {layers} layer{}{size}", plural(layers));
                }
                let stop = Arc::new(AtomicBool::new(false));
                let (polled, stopped) = (meter.clone(), stop.clone());
                let thread = std::thread::spawn(move || match shown {
                    Shown::Tty => poll_bars(&polled, &stopped),
                    _ => poll_lines(&polled, &stopped),
                });
                self.reading = Some((meter, Instant::now(), Poller { stop, thread }));
            }
            (Shown::Plain, Progress::CacheHit { id }) => eprintln!("in the store already: {}", short(&id)),
            (Shown::Plain, Progress::LayersIndexed { .. }) => {
                if let Some((meter, started, poller)) = self.reading.take() {
                    poller.end();
                    let read: u64 = meter.layers().iter().map(|l| l.read).sum();
                    eprintln!("layers read: {}", rate(read, started.elapsed()));
                }
            }
            (Shown::Plain, Progress::Flattened { entries }) => eprintln!("layers merged: {entries} entries"),
            (Shown::Plain, Progress::RootfsWritten { bytes, seconds }) => {
                eprintln!("rootfs written: {} in {seconds:.1}s; storing", HumanBytes(bytes))
            }
            (Shown::Plain, Progress::DaemonLayers(how)) => eprintln!("reading the layers from {}", how.path),
            (Shown::Plain, Progress::LayersReused { layers }) => {
                eprintln!("{layers} lower layer{} saved in the store, not read", plural(layers))
            }
            // Said before the layers are read: a stage line now would end the layer bars.
            (Shown::Tty, Progress::DaemonLayers(_) | Progress::LayersReused { .. }) => {}
            (Shown::Tty, event) => {
                if let Some((_, _, poller)) = self.reading.take() {
                    poller.end();
                }
                let message = match event {
                    Progress::CacheHit { id } => format!("in the store already: {}", short(&id)),
                    Progress::LayersIndexed { .. } => "merging layers".into(),
                    Progress::Flattened { entries } => format!("writing ext4 ({entries} entries)"),
                    Progress::RootfsWritten { .. } => "storing".into(),
                    _ => return,
                };
                self.stage.get_or_insert_with(spinner).set_message(message);
            }
        }
    }

    /// Stops the poller and clears the stage line (the layer bars stay, as docker's do).
    pub fn finish(&mut self) {
        if let Some((_, _, poller)) = self.reading.take() {
            poller.end();
        }
        if let Some(stage) = self.stage.take() {
            stage.finish_and_clear();
        }
    }
}

impl Drop for ConvertDisplay {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One bar of bytes with its rate and elapsed time, for a transfer between stores.
pub fn bytes_bar(prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(0)
        .with_style(style("{prefix:5} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec} {elapsed}"));
    bar.set_prefix(prefix.to_string());
    bar
}

fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(style("{spinner} [{elapsed}] {wide_msg}"));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// A bar per layer and a total, redrawn from the meter until `stop`.
fn poll_bars(meter: &LayerMeter, stop: &AtomicBool) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let layers = meter.layers();
    let bars: Vec<ProgressBar> = layers
        .iter()
        .map(|layer| {
            let bar = match layer.size {
                Some(size) => ProgressBar::new(size)
                    .with_style(style("{prefix:12} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}")),
                None => {
                    ProgressBar::new_spinner().with_style(style("{prefix:12} {spinner} {bytes:>10} {msg}"))
                }
            };
            multi.add(bar.with_prefix(short(&layer.digest.hex()).to_string()))
        })
        .collect();
    let total = multi.add(match layers.iter().map(|l| l.size).sum::<Option<u64>>() {
        Some(size) => ProgressBar::new(size).with_style(style(
            "{prefix:12} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec} {elapsed}",
        )),
        None => ProgressBar::new_spinner()
            .with_style(style("{prefix:12} {spinner} {bytes:>10} {bytes_per_sec} {elapsed}")),
    });
    total.set_prefix("total");
    loop {
        let last = stop.load(Ordering::Relaxed);
        let layers = meter.layers();
        for (bar, layer) in bars.iter().zip(&layers) {
            bar.set_position(layer.read);
            if layer.done && !bar.is_finished() {
                bar.finish_with_message("done");
            }
        }
        total.set_position(layers.iter().map(|l| l.read).sum());
        if layers.iter().all(|l| l.done) && !total.is_finished() {
            total.finish(); // its rate and elapsed time stay as they were at the end
        }
        if last {
            break;
        }
        bar_tick(&bars, &total);
        std::thread::sleep(POLL);
    }
    for bar in bars.iter().chain([&total]) {
        bar.abandon();
    }
}

/// Spinners of unknown-size layers turn only when ticked.
fn bar_tick(bars: &[ProgressBar], total: &ProgressBar) {
    for bar in bars.iter().chain([total]).filter(|b| b.length().is_none() && !b.is_finished()) {
        bar.tick();
    }
}

/// A line per finished layer and a running total every few seconds, until `stop`.
fn poll_lines(meter: &LayerMeter, stop: &AtomicBool) {
    let started = Instant::now();
    let mut reported = vec![false; meter.layers().len()];
    let mut last_total = started;
    loop {
        let last = stop.load(Ordering::Relaxed);
        let layers = meter.layers();
        for (i, layer) in layers.iter().enumerate() {
            if layer.done && !reported[i] {
                reported[i] = true;
                eprintln!("{}", layer_line(i, layers.len(), layer));
            }
        }
        if last {
            break;
        }
        if last_total.elapsed() >= PLAIN_TOTAL_EVERY {
            last_total = Instant::now();
            let read: u64 = layers.iter().map(|l| l.read).sum();
            let of =
                layers.iter().map(|l| l.size).sum::<Option<u64>>().map(|s| format!(" of {}", HumanBytes(s)));
            eprintln!(
                "reading: {}{} ({:.0}s)",
                HumanBytes(read),
                of.unwrap_or_default(),
                started.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// `layer 2/3 sha256:0123456789ab: 2.50 MiB done`.
fn layer_line(i: usize, count: usize, layer: &LayerReading) -> String {
    format!("layer {}/{count} sha256:{}: {} done", i + 1, short(&layer.digest.hex()), HumanBytes(layer.read))
}

/// `12.30 MiB in 4.2s (2.93 MiB/s)`.
fn rate(bytes: u64, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    let per_second = if seconds > 0.0 { (bytes as f64 / seconds) as u64 } else { bytes };
    format!("{} in {seconds:.1}s ({}/s)", HumanBytes(bytes), HumanBytes(per_second))
}

/// The first 12 characters, as docker shows ids.
fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..12.min(id.len())]
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diskc::digest::Digest;

    #[test]
    fn plain_lines_name_the_layer_its_bytes_and_the_rate() {
        let digest = Digest::of(b"layer");
        let layer = LayerReading { digest, size: Some(2621440), read: 2621440, done: true };
        assert_eq!(
            layer_line(1, 3, &layer),
            format!("layer 2/3 sha256:{}: 2.50 MiB done", &digest.hex()[..12])
        );
        assert_eq!(rate(3 << 20, Duration::from_secs(2)), "3.00 MiB in 2.0s (1.50 MiB/s)");
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
    }

    #[test]
    fn quiet_wins_and_auto_follows_stderr() {
        let global = |quiet| GlobalArgs { json: false, quiet, verbose: 0, store: None };
        assert_eq!(ProgressMode::Tty.shown(&global(true)), Shown::Quiet);
        assert_eq!(ProgressMode::Plain.shown(&global(false)), Shown::Plain);
        let expected = if std::io::stderr().is_terminal() { Shown::Tty } else { Shown::Plain };
        assert_eq!(ProgressMode::Auto.shown(&global(false)), expected);
    }
}
