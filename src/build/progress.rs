//! BuildKit's status stream turned into [`BuildEvent`]s.
//!
//! The daemon sends `moby.buildkit.trace` messages: each one a protobuf `StatusResponse`
//! carrying updates to vertexes (build steps), their statuses (transfers), and their log
//! bytes. The same vertex is sent many times as it is queued, started, and completed, so this
//! module keeps one record per vertex digest, numbers vertexes in the order they first
//! appear (the `#N` of `docker build --progress=plain`), cuts log bytes into lines, and
//! remembers the last lines of each step so that a failing `RUN` can be reported with them.
//! The classic builder's plain-text stream is followed by [`ClassicProgress`].

use std::collections::{HashMap, VecDeque};

use bollard::moby::buildkit::v1::StatusResponse;

use super::BuildEvent;

/// How many output lines of a step are kept for the error message of a failing step.
pub const TAIL_LINES: usize = 10;

/// What the stream said about one vertex.
#[derive(Debug, Default)]
struct Vertex {
    number: usize,
    name: String,
    /// When the vertex started, in seconds since the epoch (daemon clock).
    started: Option<f64>,
    announced: bool,
    finished: bool,
    error: String,
    /// Log bytes after the last newline.
    partial: Vec<u8>,
    tail: VecDeque<String>,
}

/// A step that failed, as the stream described it.
#[derive(Clone, Debug, PartialEq)]
pub struct FailedStep {
    pub name: String,
    pub error: String,
    pub last_lines: Vec<String>,
}

#[derive(Debug, Default)]
pub struct BuildKitProgress {
    vertexes: HashMap<String, Vertex>,
    next_number: usize,
    failed: Option<FailedStep>,
}

fn seconds(ts: Option<&bollard::moby::buildkit::v1::Vertex>, pick: Pick) -> Option<f64> {
    let v = ts?;
    let t = match pick {
        Pick::Started => v.started.as_ref()?,
        Pick::Completed => v.completed.as_ref()?,
    };
    Some(t.seconds as f64 + f64::from(t.nanos) / 1e9)
}

#[derive(Clone, Copy)]
enum Pick {
    Started,
    Completed,
}

impl BuildKitProgress {
    /// Folds one status message into the state and reports what changed, in the order
    /// `docker build --progress=plain` shows it: steps that start, transfers, output lines,
    /// then steps that finish.
    pub fn update(&mut self, status: StatusResponse, emit: &mut dyn FnMut(BuildEvent)) {
        let mut finished_now = Vec::new();
        for v in &status.vertexes {
            let next_number = &mut self.next_number;
            let vertex = self.vertexes.entry(v.digest.clone()).or_insert_with(|| {
                *next_number += 1;
                Vertex { number: *next_number, ..Vertex::default() }
            });
            vertex.name.clone_from(&v.name);
            if let Some(started) = seconds(Some(v), Pick::Started) {
                vertex.started.get_or_insert(started);
            }
            if !vertex.announced && (v.started.is_some() || v.cached || v.completed.is_some()) {
                vertex.announced = true;
                emit(BuildEvent::StepStarted { step: vertex.number, name: vertex.name.clone() });
            }
            if !vertex.finished && (v.completed.is_some() || !v.error.is_empty()) {
                vertex.finished = true;
                finished_now.push(v.clone());
            }
        }
        for s in &status.statuses {
            if let Some(vertex) = self.vertexes.get(&s.vertex) {
                emit(BuildEvent::StepProgress {
                    step: vertex.number,
                    id: s.id.clone(),
                    current: s.current,
                    total: (s.total > 0).then_some(s.total),
                    done: s.completed.is_some(),
                });
            }
        }
        for log in &status.logs {
            let Some(vertex) = self.vertexes.get_mut(&log.vertex) else { continue };
            let at = log.timestamp.as_ref().map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9);
            let offset = match (at, vertex.started) {
                (Some(at), Some(started)) => (at - started).max(0.0),
                _ => 0.0,
            };
            vertex.partial.extend_from_slice(&log.msg);
            while let Some(newline) = vertex.partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = vertex.partial.drain(..=newline).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).trim_end_matches('\r').to_owned();
                push_tail(&mut vertex.tail, &line);
                emit(BuildEvent::StepLog { step: vertex.number, seconds: offset, line });
            }
        }
        for w in &status.warnings {
            let step = self.vertexes.get(&w.vertex).map(|v| v.number);
            emit(BuildEvent::Warning { step, message: String::from_utf8_lossy(&w.short).into_owned() });
        }
        for v in finished_now {
            let Some(vertex) = self.vertexes.get_mut(&v.digest) else { continue };
            if !vertex.partial.is_empty() {
                let line = String::from_utf8_lossy(&std::mem::take(&mut vertex.partial)).into_owned();
                push_tail(&mut vertex.tail, &line);
                emit(BuildEvent::StepLog { step: vertex.number, seconds: 0.0, line });
            }
            let step = vertex.number;
            if !v.error.is_empty() {
                vertex.error.clone_from(&v.error);
                // Steps cancelled because another one failed are not the cause.
                if self.failed.is_none() && !v.error.contains("context canceled") {
                    self.failed = Some(FailedStep {
                        name: vertex.name.clone(),
                        error: v.error.clone(),
                        last_lines: vertex.tail.iter().cloned().collect(),
                    });
                }
                emit(BuildEvent::StepFailed { step, error: v.error.clone() });
            } else if v.cached {
                emit(BuildEvent::StepCached { step });
            } else {
                let took = match (vertex.started, seconds(Some(&v), Pick::Completed)) {
                    (Some(s), Some(c)) => (c - s).max(0.0),
                    _ => 0.0,
                };
                emit(BuildEvent::StepDone { step, seconds: took });
            }
        }
    }

    /// The first step that failed, if any did.
    pub fn failed_step(&self) -> Option<&FailedStep> {
        self.failed.as_ref()
    }
}

fn push_tail(tail: &mut VecDeque<String>, line: &str) {
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line.to_owned());
}

/// Follows the classic builder's text: `Step N/M : INSTRUCTION` lines and the output of
/// each step.
#[derive(Debug, Default)]
pub struct ClassicProgress {
    partial: String,
    current_step: Option<String>,
    tail: VecDeque<String>,
}

impl ClassicProgress {
    pub fn update(&mut self, text: &str, emit: &mut dyn FnMut(BuildEvent)) {
        self.partial.push_str(text);
        while let Some(newline) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=newline).collect();
            let line = line.trim_end().to_owned();
            if line.starts_with("Step ") && line.contains(" : ") {
                self.current_step = Some(line.clone());
                self.tail.clear();
            } else {
                push_tail(&mut self.tail, &line);
            }
            emit(BuildEvent::Output { line });
        }
    }

    /// The instruction of the current step, without the `Step N/M : ` prefix.
    pub fn current_instruction(&self) -> Option<&str> {
        self.current_step.as_deref().and_then(|s| s.split_once(" : ")).map(|(_, i)| i)
    }

    pub fn last_lines(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use bollard::moby::buildkit::v1::{Vertex as PbVertex, VertexLog};

    use super::*;

    fn vertex(digest: &str, name: &str) -> PbVertex {
        PbVertex { digest: digest.into(), name: name.into(), ..PbVertex::default() }
    }

    fn started(mut v: PbVertex, seconds: i64, nanos: i32) -> PbVertex {
        let t = v.started.insert(Default::default());
        (t.seconds, t.nanos) = (seconds, nanos);
        v
    }

    fn completed(mut v: PbVertex, seconds: i64, nanos: i32) -> PbVertex {
        let t = v.completed.insert(Default::default());
        (t.seconds, t.nanos) = (seconds, nanos);
        v
    }

    fn log(digest: &str, seconds: i64, msg: &str) -> VertexLog {
        let mut l = VertexLog { vertex: digest.into(), msg: msg.as_bytes().to_vec(), ..VertexLog::default() };
        l.timestamp.insert(Default::default()).seconds = seconds;
        l
    }

    fn collect(progress: &mut BuildKitProgress, status: StatusResponse) -> Vec<BuildEvent> {
        let mut events = Vec::new();
        progress.update(status, &mut |e| events.push(e));
        events
    }

    #[test]
    fn steps_are_numbered_by_first_appearance_and_announced_when_they_start() {
        let mut p = BuildKitProgress::default();
        let events = collect(
            &mut p,
            StatusResponse {
                vertexes: vec![vertex("a", "[internal] load"), started(vertex("b", "[1/2] FROM x"), 10, 0)],
                ..Default::default()
            },
        );
        assert_eq!(events, vec![BuildEvent::StepStarted { step: 2, name: "[1/2] FROM x".into() }]);
        let events = collect(
            &mut p,
            StatusResponse {
                vertexes: vec![started(vertex("a", "[internal] load"), 10, 0)],
                ..Default::default()
            },
        );
        assert_eq!(events, vec![BuildEvent::StepStarted { step: 1, name: "[internal] load".into() }]);
    }

    #[test]
    fn logs_are_cut_into_lines_and_a_failing_step_keeps_its_last_lines() {
        let mut p = BuildKitProgress::default();
        let run = started(vertex("r", "[2/2] RUN false"), 100, 0);
        let mut events = collect(
            &mut p,
            StatusResponse {
                vertexes: vec![run.clone()],
                logs: vec![log("r", 101, "one\ntw"), log("r", 102, "o\n")],
                ..Default::default()
            },
        );
        let mut failed = completed(run, 103, 500_000_000);
        failed.error = "exit code: 1".into();
        let cancelled =
            PbVertex { error: "context canceled".into(), ..started(vertex("c", "other"), 100, 0) };
        events.extend(collect(
            &mut p,
            StatusResponse {
                vertexes: vec![completed(cancelled, 103, 0), failed],
                logs: vec![log("r", 103, "last words")],
                ..Default::default()
            },
        ));
        assert_eq!(
            events,
            vec![
                BuildEvent::StepStarted { step: 1, name: "[2/2] RUN false".into() },
                BuildEvent::StepLog { step: 1, seconds: 1.0, line: "one".into() },
                BuildEvent::StepLog { step: 1, seconds: 2.0, line: "two".into() },
                BuildEvent::StepStarted { step: 2, name: "other".into() },
                BuildEvent::StepFailed { step: 2, error: "context canceled".into() },
                BuildEvent::StepLog { step: 1, seconds: 0.0, line: "last words".into() },
                BuildEvent::StepFailed { step: 1, error: "exit code: 1".into() },
            ]
        );
        assert_eq!(
            p.failed_step(),
            Some(&FailedStep {
                name: "[2/2] RUN false".into(),
                error: "exit code: 1".into(),
                last_lines: vec!["one".into(), "two".into(), "last words".into()],
            })
        );
    }

    #[test]
    fn cached_and_done_steps() {
        let mut p = BuildKitProgress::default();
        let cached = PbVertex { cached: true, ..completed(started(vertex("c", "COPY a b"), 5, 0), 5, 0) };
        let done = completed(started(vertex("d", "RUN true"), 5, 0), 5, 250_000_000);
        let events = collect(&mut p, StatusResponse { vertexes: vec![cached, done], ..Default::default() });
        assert_eq!(
            events,
            vec![
                BuildEvent::StepStarted { step: 1, name: "COPY a b".into() },
                BuildEvent::StepStarted { step: 2, name: "RUN true".into() },
                BuildEvent::StepCached { step: 1 },
                BuildEvent::StepDone { step: 2, seconds: 0.25 },
            ]
        );
        assert_eq!(p.failed_step(), None);
    }

    #[test]
    fn classic_output_tracks_the_current_step_and_its_output() {
        let mut c = ClassicProgress::default();
        let mut lines = Vec::new();
        c.update("Step 1/2 : FROM x\n ---> abc\nStep 2/2 : RUN false\n", &mut |e| lines.push(e));
        c.update(" ---> Running in 123\nfirst\nsec", &mut |e| lines.push(e));
        c.update("ond\n", &mut |e| lines.push(e));
        assert_eq!(lines.len(), 6);
        assert_eq!(c.current_instruction(), Some("RUN false"));
        assert_eq!(c.last_lines(), vec![" ---> Running in 123", "first", "second"]);
    }
}
