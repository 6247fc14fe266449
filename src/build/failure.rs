//! Why a build failed, read from the daemon's error text and the step that failed.
//!
//! The daemon reports a failed build as one string (BuildKit: `failed to solve with frontend
//! dockerfile.v0: ...`, `executor failed running [...]: exit code: N`; the classic builder:
//! `The command '...' returned a non-zero code: N`). The user is better served by a typed
//! error that says which of the usual mistakes it is, so this module recognises the
//! common ones and keeps everything else as the daemon's own words.

use super::progress::FailedStep;
use super::BuildError;

/// What the build stream knew when the daemon reported `message`.
pub struct FailureContext<'a> {
    /// The Dockerfile as the user named it.
    pub dockerfile: &'a str,
    /// The step that failed (BuildKit's failing vertex, or the classic builder's current
    /// step with its recent output).
    pub step: Option<FailedStep>,
}

pub fn explain(message: &str, context: FailureContext<'_>) -> BuildError {
    let message = message.trim();
    if let Some((line, detail)) = parse_error_line(message) {
        return BuildError::DockerfileSyntax { dockerfile: context.dockerfile.to_owned(), line, detail };
    }
    if let Some(image) = missing_base_image(message, context.step.as_ref()) {
        return BuildError::MissingBaseImage { image };
    }
    if let Some(code) = exit_code(message) {
        let (step, last_lines) = match context.step {
            Some(step) => (step.name, step.last_lines),
            None => (String::from("a RUN step"), Vec::new()),
        };
        return BuildError::RunFailed { step, code, last_lines };
    }
    BuildError::Failed { message: message.to_owned() }
}

/// `dockerfile parse error line 3: unknown instruction: FOO` (BuildKit writes a lowercase
/// `dockerfile`, the classic builder `Dockerfile`).
fn parse_error_line(message: &str) -> Option<(u32, String)> {
    const MARK: &str = "ockerfile parse error line ";
    let at = message.find(MARK)? + MARK.len();
    let rest = &message[at..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let line = rest[..digits].parse().ok()?;
    let detail = rest[digits..].trim_start_matches(':').trim().to_owned();
    Some((line, detail))
}

/// BuildKit: `... exit code: 3`; classic: `... returned a non-zero code: 3`.
fn exit_code(message: &str) -> Option<i64> {
    ["exit code: ", "returned a non-zero code: "].iter().find_map(|mark| {
        let at = message.rfind(mark)? + mark.len();
        let rest = &message[at..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        rest[..digits].parse().ok()
    })
}

/// The base image the daemon could not find locally and then failed to pull (there is no
/// registry to pull from, and diskc never asks for a pull).
fn missing_base_image(message: &str, step: Option<&FailedStep>) -> Option<String> {
    // BuildKit resolves each FROM in a vertex named after the image.
    if let Some(step) = step {
        if let Some(image) = step.name.strip_prefix("[internal] load metadata for ") {
            return Some(image.trim().to_owned());
        }
    }
    // The classic builder: its current step is the FROM it could not satisfy.
    let from = step.and_then(|s| {
        let instruction = s.name.trim();
        let rest = instruction.strip_prefix("FROM ").or_else(|| instruction.strip_prefix("from "))?;
        rest.split_whitespace().next().map(str::to_owned)
    });
    let pull_failed =
        ["pull access denied", "repository does not exist", "manifest unknown", "not found: manifest"]
            .iter()
            .any(|m| message.contains(m))
            || (message.contains("registry") && message.contains("dial tcp"));
    if pull_failed {
        return from.or_else(|| {
            let after = message.split("pull access denied for ").nth(1)?;
            after.split([',', ' ']).next().map(str::to_owned)
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explain_with(message: &str, step: Option<FailedStep>) -> BuildError {
        explain(message, FailureContext { dockerfile: "ctx/Dockerfile", step })
    }

    fn step(name: &str, lines: &[&str]) -> Option<FailedStep> {
        Some(FailedStep {
            name: name.into(),
            error: String::new(),
            last_lines: lines.iter().map(|l| l.to_string()).collect(),
        })
    }

    #[test]
    fn syntax_errors_carry_their_line() {
        let e = explain_with(
            "failed to solve with frontend dockerfile.v0: failed to create LLB definition: \
             dockerfile parse error line 3: unknown instruction: FOO",
            None,
        );
        assert!(
            matches!(&e, BuildError::DockerfileSyntax { line: 3, detail, .. } if detail == "unknown instruction: FOO")
        );
        let e =
            explain_with("Dockerfile parse error line 12: FROM requires either one or three arguments", None);
        assert!(matches!(e, BuildError::DockerfileSyntax { line: 12, .. }));
    }

    #[test]
    fn failing_run_steps_carry_their_exit_code_and_output() {
        let e = explain_with(
            "executor failed running [/bin/sh -c exit 3]: exit code: 3",
            step("[2/2] RUN exit 3", &["hello"]),
        );
        match e {
            BuildError::RunFailed { step, code, last_lines } => {
                assert_eq!(
                    (step.as_str(), code, last_lines),
                    ("[2/2] RUN exit 3", 3, vec!["hello".to_string()])
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = explain_with(
            "The command '/bin/sh -c false' returned a non-zero code: 1",
            step("RUN false", &[]),
        );
        assert!(matches!(e, BuildError::RunFailed { code: 1, .. }));
    }

    #[test]
    fn unknown_base_images_are_named() {
        let e = explain_with(
            "failed to solve with frontend dockerfile.v0: failed to create LLB definition: failed to do request: \
             Head \"https://registry-1.docker.io/v2/x/y/manifests/1\": dial tcp: lookup registry-1.docker.io: no such host",
            step("[internal] load metadata for docker.io/x/y:1", &[]),
        );
        assert!(matches!(&e, BuildError::MissingBaseImage { image } if image == "docker.io/x/y:1"));
        let e = explain_with(
            "pull access denied for nothere, repository does not exist or may require 'docker login'",
            step("FROM nothere:1 AS base", &[]),
        );
        assert!(matches!(&e, BuildError::MissingBaseImage { image } if image == "nothere:1"));
    }

    #[test]
    fn anything_else_keeps_the_daemons_words() {
        let e = explain_with("failed to create LLB definition: target stage nope could not be found", None);
        assert!(matches!(&e, BuildError::Failed { message } if message.contains("target stage nope")));
    }
}
