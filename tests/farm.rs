//! The build farm against its real parts: nats-server with JetStream (Debian's package) and
//! s3s-fs as the remote store, both installed by scripts/setup.sh and started here on free
//! loopback ports, and the Docker daemon for builds. Workers and submitters are the diskc
//! binary; what ran where is counted from the workers' `--json` logs.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::s3::{S3Server, BUCKET};
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `done` holds, for at most `seconds`.
fn wait_until(seconds: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nats-server with JetStream on a free port; its data survives a restart.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    fn start(dir: &Path) -> Nats {
        let mut nats = Nats { child: None, port: free_port(), dir: dir.join("jetstream") };
        nats.restart();
        nats
    }

    fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is required: run scripts/setup.sh");
        self.child = Some(child);
        wait_listening(self.port, "nats-server");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A worker process and its log.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    /// The worker's `--json` lines so far.
    fn lines(&self) -> Vec<Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    fn events(&self, event: &str) -> Vec<Value> {
        self.lines().into_iter().filter(|l| l["event"] == event).collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A farm: a queue, a remote store, workers, and a directory for everything else.
struct Farm {
    workers: BTreeMap<String, Worker>,
    s3: S3Server,
    nats: Nats,
    dir: tempfile::TempDir,
}

impl Farm {
    fn start() -> Farm {
        common::ensure_base_images(&["busybox"]);
        let dir = common::tempdir();
        Farm { workers: BTreeMap::new(), s3: S3Server::start(), nats: Nats::start(dir.path()), dir }
    }

    /// diskc configured for the S3 server, with a local store of the farm's own.
    fn diskc(&self) -> Command {
        let mut cmd = common::diskc();
        cmd.env("DISKC_STORE", self.dir.path().join("local"));
        self.s3.configure(&mut cmd);
        cmd
    }

    fn remote(&self) -> String {
        format!("s3://{BUCKET}/farm")
    }

    fn start_worker(&mut self, name: &str, args: &[&str]) {
        let remote = self.remote();
        self.start_worker_on(name, &remote, args);
    }

    fn start_worker_on(&mut self, name: &str, remote: &str, args: &[&str]) {
        let log = self.dir.path().join(format!("{name}.log"));
        let err = self.dir.path().join(format!("{name}.err"));
        let child = self
            .diskc()
            .args(["--json", "worker", "--nats", &self.nats.url(), "--store", remote, "--name", name])
            .arg("--cache")
            .arg(self.dir.path().join(format!("cache-{name}")))
            .args(args)
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(err).unwrap())
            .spawn()
            .unwrap();
        self.workers.insert(name.to_string(), Worker { child, log });
    }

    /// A submission: `args` plus `--farm URL`.
    fn submit(&self, args: &[&str]) -> Command {
        let mut cmd = self.diskc();
        cmd.args(args).args(["--farm", &self.nats.url()]);
        cmd
    }

    /// Every worker's events of one kind, by job.
    fn events_by_job(&self, event: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for worker in self.workers.values() {
            for line in worker.events(event) {
                *counts.entry(line["job"].as_str().unwrap().to_string()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// A build context FROM busybox whose one file says `text`.
    fn context(&self, name: &str, dockerfile: &str, text: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        fs::write(dir.join("file"), text).unwrap();
        dir
    }
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The image id a local run (no farm) gives for `args`, in a store of its own.
fn local_id(farm: &Farm, args: &[&str]) -> String {
    let store = farm.dir.path().join("reference");
    let out = common::run_ok(farm.diskc().args(args).arg("-q").arg("--store").arg(store));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn args(job: &[String]) -> Vec<&str> {
    job.iter().map(String::as_str).collect()
}

/// The fields docs/json.md lists for `key`.
fn documented(key: &str) -> Vec<String> {
    let doc = fs::read_to_string(common::repo_root().join("docs/json.md")).unwrap();
    let block = doc.split("```text\n").nth(1).unwrap().split("```").next().unwrap();
    let line = block.lines().find(|l| l.split_once(": ").is_some_and(|(k, _)| k == key));
    let line = line.unwrap_or_else(|| panic!("docs/json.md does not document {key}"));
    line.split_once(": ").unwrap().1.split(", ").map(String::from).collect()
}

fn assert_documented(key: &str, object: &Value) {
    for field in documented(key) {
        assert!(object.get(&field).is_some(), "{key}: no field {field} in {object}");
    }
}

#[test]
fn thirty_submissions_of_ten_jobs_run_each_job_once_with_the_local_id() {
    let mut farm = Farm::start();
    for name in ["w1", "w2", "w3"] {
        farm.start_worker(name, &[]);
    }
    let busybox = format!("docker-daemon:{}", common::BUSYBOX_IMAGE);
    let dockerfile = format!("FROM {}\nCOPY file /file\n", common::BUSYBOX_IMAGE);
    // Five builds (contexts that differ in one file) and five conversions (of one image,
    // with options that change its result).
    let mut jobs: Vec<Vec<String>> = Vec::new();
    for i in 0..5 {
        let context = farm.context(&format!("ctx{i}"), &dockerfile, &format!("farm job {i}\n"));
        jobs.push(vec!["build".into(), context.display().to_string()]);
    }
    for epoch in 1..=5 {
        jobs.push(vec!["convert".into(), busybox.clone(), "--source-date-epoch".into(), epoch.to_string()]);
    }
    let submissions: Vec<(usize, Child)> = (0..30)
        .map(|n| {
            let job = n % jobs.len();
            let child = farm
                .submit(&args(&jobs[job]))
                .arg("--json")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (job, child)
        })
        .collect();
    let mut results: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    for (job, child) in submissions {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{:?}: {}", jobs[job], stderr(&out));
        let result = json(&out);
        assert_documented(&format!("{} --farm", jobs[job][0]), &result);
        results.entry(job).or_default().push(result);
    }
    let mut job_ids = Vec::new();
    for (job, answers) in &results {
        let expected = local_id(&farm, &args(&jobs[*job]));
        for answer in answers {
            assert_eq!(answer["id"], expected, "{:?}: {answer}", jobs[*job]);
            assert_eq!(answer["job"], answers[0]["job"]);
            assert!(farm.workers.contains_key(answer["worker"].as_str().unwrap()), "{answer}");
        }
        let first = answers.iter().filter(|a| a["coalesced"] == false).count();
        assert_eq!(first, 1, "one submission per job queues it: {answers:?}");
        job_ids.push(answers[0]["job"].as_str().unwrap().to_string());
    }
    job_ids.sort();
    job_ids.dedup();
    assert_eq!(job_ids.len(), 10, "ten distinct jobs");
    // Each job ran once, on one worker, and nothing else ran.
    let started = farm.events_by_job("started");
    let done = farm.events_by_job("done");
    assert_eq!(started.keys().cloned().collect::<Vec<_>>(), job_ids, "{started:?}");
    assert!(started.values().all(|&n| n == 1), "a job ran twice: {started:?}");
    assert_eq!(done, started);

    // An answered key: at once, coalesced, the context not sent again; -o and -t pull it.
    let outdir = farm.dir.path().join("out");
    let out =
        common::run_ok(farm.submit(&args(&jobs[0])).args(["--json", "-t", "farmed:1", "-o"]).arg(&outdir));
    let again = json(&out);
    assert_eq!(again["coalesced"], true);
    assert_eq!(again["id"], results[&0][0]["id"]);
    assert!(stderr(&out).contains("already in the farm"), "{}", stderr(&out));
    assert!(outdir.join("rootfs.ext4").exists() && outdir.join("manifest.json").exists());
    let listed = common::run_ok(farm.diskc().args(["--json", "inspect", "farmed:1"]));
    assert_eq!(json(&listed)["images"][0]["id"], again["id"]);

    // --detach and farm wait.
    let detach = ["convert", busybox.as_str(), "--source-date-epoch", "99", "--detach", "--json"];
    let detached = json(&common::run_ok(&mut farm.submit(&detach)));
    assert_documented("convert --farm --detach", &detached);
    let job = detached["job"].as_str().unwrap();
    let waited =
        json(&common::run_ok(farm.diskc().args(["--json", "farm", "wait", job, "--nats", &farm.nats.url()])));
    assert_documented("farm-wait", &waited);
    assert_eq!(waited["id"], local_id(&farm, &["convert", &busybox, "--source-date-epoch", "99"]));

    let status =
        json(&common::run_ok(farm.diskc().args(["--json", "farm", "status", "--nats", &farm.nats.url()])));
    assert_documented("farm-status", &status);
    assert_eq!(status["workers"].as_array().unwrap().len(), 3, "{status}");
    assert_eq!(status["queued"], 0);
    for worker in status["workers"].as_array().unwrap() {
        assert_documented("farm-status.workers[]", worker);
    }
    for line in farm.workers["w1"].lines() {
        assert_documented("worker", &line);
    }
}

#[test]
fn a_job_whose_worker_is_killed_is_redelivered_and_gets_the_right_id() {
    common::ensure_base_images(&["debian"]);
    let mut farm = Farm::start();
    farm.start_worker("doomed", &["--ack-wait", "2s"]);
    let source = format!("docker-daemon:{}", common::DEBIAN_IMAGE);
    let submission = farm
        .submit(&["convert", &source, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(60, "the worker to take the job", || !farm.workers["doomed"].events("started").is_empty());
    let doomed = farm.workers.get_mut("doomed").unwrap();
    doomed.child.kill().unwrap(); // SIGKILL, mid-conversion
    doomed.child.wait().unwrap();
    assert!(doomed.events("done").is_empty(), "the conversion finished before the kill: make it longer");
    farm.start_worker("rescuer", &["--ack-wait", "2s"]);

    let out = submission.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let result = json(&out);
    assert_eq!(result["worker"], "rescuer", "{result}");
    assert_eq!(result["id"], local_id(&farm, &["convert", &source]));
    let redelivered = farm.workers["rescuer"].events("started");
    assert_eq!(redelivered.len(), 1);
    assert_eq!(redelivered[0]["attempt"], 2, "{redelivered:?}");

    // The remote store is whole: s3s-fs keeps objects as files, laid out as a store.
    let remote = farm.s3.root().join(BUCKET).join("farm");
    let verify = json(&common::run_ok(farm.diskc().args(["--json", "verify", "--store"]).arg(&remote)));
    assert_eq!(verify["clean"], true, "{verify}");
    // And what it holds pulls whole into a fresh store.
    let fresh = farm.dir.path().join("fresh");
    let id = result["id"].as_str().unwrap();
    common::run_ok(farm.diskc().args(["pull", id, &farm.remote(), "--store"]).arg(&fresh));
    let verify = json(&common::run_ok(farm.diskc().args(["--json", "verify", "--store"]).arg(&fresh)));
    assert_eq!(verify["clean"], true, "{verify}");
}

#[test]
fn sigterm_drains_a_worker_it_finishes_what_it_holds_and_takes_nothing_new() {
    common::ensure_base_images(&["debian"]);
    let mut farm = Farm::start();
    farm.start_worker("draining", &[]);
    let source = format!("docker-daemon:{}", common::DEBIAN_IMAGE);
    let held = farm
        .submit(&["convert", &source, "--source-date-epoch", "3", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(60, "the worker to take the job", || !farm.workers["draining"].events("started").is_empty());
    let pid = farm.workers["draining"].child.id().to_string();
    common::run_ok(Command::new("kill").args(["-TERM", &pid]));
    let busybox = format!("docker-daemon:{}", common::BUSYBOX_IMAGE);
    let queued = json(&common::run_ok(&mut farm.submit(&[
        "convert",
        &busybox,
        "--source-date-epoch",
        "4",
        "--detach",
        "--json",
    ])));

    let worker = farm.workers.get_mut("draining").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = worker.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker did not finish draining");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a drained worker exits 0: {status}");
    let out = held.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["worker"], "draining");
    let started: Vec<Value> = worker.events("started");
    assert_eq!(started.len(), 1, "took a job while draining: {started:?}");
    assert_eq!(worker.events("done").len(), 1);
    assert_ne!(started[0]["job"], queued["job"]);
    let status =
        json(&common::run_ok(farm.diskc().args(["--json", "farm", "status", "--nats", &farm.nats.url()])));
    assert_eq!(status["queued"], 1, "the second job waits for a worker: {status}");
}

#[test]
fn a_broken_dockerfile_exits_2_with_its_line_and_is_not_retried() {
    let mut farm = Farm::start();
    farm.start_worker("w", &["--ack-wait", "1s"]);
    let context = farm.context("broken", &format!("FROM {}\nRUNN echo hi\n", common::BUSYBOX_IMAGE), "x");
    let context = context.to_str().unwrap();
    let local = farm.diskc().args(["build", context]).output().unwrap();
    assert_eq!(local.status.code(), Some(2), "{}", stderr(&local));
    let local_error = stderr(&local).lines().last().unwrap().to_string();
    assert!(local_error.contains("line 2"), "{local_error}");

    for _ in 0..2 {
        let out = farm.submit(&["build", context]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert_eq!(stderr(&out).lines().last().unwrap(), local_error, "the farm says what a local run says");
    }
    // Well past the ack wait: still one run, and it failed.
    std::thread::sleep(Duration::from_secs(3));
    let worker = &farm.workers["w"];
    assert_eq!(worker.events("started").len(), 1, "{:?}", worker.lines());
    let failed = worker.events("failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["exit_code"], 2);
    assert!(worker.events("retry").is_empty());
}

#[test]
fn with_the_server_down_a_submitter_exits_3_and_a_worker_resumes_when_it_returns() {
    let mut farm = Farm::start();
    farm.start_worker("patient", &[]);
    wait_until(20, "the worker to connect", || {
        let status =
            farm.diskc().args(["--json", "farm", "status", "--nats", &farm.nats.url()]).output().unwrap();
        status.status.success() && json(&status)["workers"].as_array().is_some_and(|w| !w.is_empty())
    });
    farm.nats.stop();
    let source = format!("docker-daemon:{}", common::BUSYBOX_IMAGE);
    let args = ["convert", source.as_str(), "--source-date-epoch", "7"];
    let out = farm.submit(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = stderr(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(&farm.nats.url()), "{text}");

    std::thread::sleep(Duration::from_secs(2));
    farm.nats.restart();
    let out = common::run_ok(farm.submit(&args).arg("--json"));
    let result = json(&out);
    assert_eq!(result["worker"], "patient");
    assert_eq!(result["id"], local_id(&farm, &args));
}

#[test]
fn environment_failures_are_retried_then_dead_lettered_with_their_reason() {
    let mut farm = Farm::start();
    let remote_dir = farm.dir.path().join("remote");
    let remote = format!("file://{}", remote_dir.display());
    farm.start_worker_on("w", &remote, &["--max-deliver", "2"]);
    wait_until(20, "the worker to open its remote store", || remote_dir.is_dir());
    // The remote store becomes a file: every push fails, for the environment.
    fs::remove_dir_all(&remote_dir).unwrap();
    fs::write(&remote_dir, "not a directory").unwrap();
    let source = format!("docker-daemon:{}", common::BUSYBOX_IMAGE);
    let out = farm.submit(&["convert", &source, "--source-date-epoch", "11"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("gave up after 2 attempts"), "{}", stderr(&out));
    let worker = &farm.workers["w"];
    // The submitter learns of the dead letter from the job's state, which the worker writes
    // before it logs the line.
    wait_until(20, "the worker to log the dead letter", || !worker.events("dead").is_empty());
    assert_eq!(worker.events("retry").len(), 1, "{:?}", worker.lines());
    assert_eq!(worker.events("dead").len(), 1);
    let status =
        json(&common::run_ok(farm.diskc().args(["--json", "farm", "status", "--nats", &farm.nats.url()])));
    assert_eq!(status["dead_letters"], 1, "{status}");
}
