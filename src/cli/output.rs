//! What the commands print on stdout, in one place: lines for people, and the one versioned
//! JSON shape for machines (`docs/json.md`).
//!
//! Every write goes through [`line`]: when the reader of stdout has gone (`diskc ls | head -1`)
//! the process ends quietly with exit 0 instead of panicking, as `ls` or `docker ps` do.

use std::fmt;
use std::io::{self, Write};

use serde_json::{Map, Value};

use diskc::error::{Error, ErrorKind};

/// The version of the JSON shape every `--json` object carries as `schema_version`. It goes
/// up when a field changes meaning or disappears; new fields may appear without a bump.
pub const JSON_SCHEMA_VERSION: u64 = 1;

/// Writes one line to stdout. A closed pipe ends the process with exit 0: whoever closed it
/// has read what they wanted. Any other failure to write ends it with the environment's code.
pub fn line(text: impl fmt::Display) {
    let mut out = io::stdout().lock();
    let written = writeln!(out, "{text}").and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("diskc: error: cannot write to stdout: {e}");
            std::process::exit(i32::from(ErrorKind::Environment.exit_code()));
        }
    }
}

/// The JSON object of `command`'s result: `schema_version`, `command`, and `fields`.
pub fn json_object(command: &str, fields: Value) -> Value {
    let mut object = Map::new();
    object.insert("schema_version".into(), JSON_SCHEMA_VERSION.into());
    object.insert("command".into(), command.into());
    match fields {
        Value::Object(fields) => object.extend(fields),
        other => {
            object.insert("result".into(), other);
        }
    }
    Value::Object(object)
}

/// Prints `command`'s result as one JSON object on one line.
pub fn json(command: &str, fields: Value) {
    line(json_object(command, fields));
}

/// An error as `--json` reports it, on stderr: one object with `error` and `exit_code`.
pub fn json_error(err: &Error) -> Value {
    let causes: Vec<String> = err.chain().map(|c| c.to_string()).collect();
    serde_json::json!({
        "schema_version": JSON_SCHEMA_VERSION,
        "error": err.to_string(),
        "kind": match err.kind() {
            ErrorKind::Usage => "usage",
            ErrorKind::BadInput => "bad_input",
            ErrorKind::Environment => "environment",
        },
        "exit_code": err.kind().exit_code(),
        "causes": causes,
    })
}

/// Seconds rounded to milliseconds: timings are for people to read, not noise to diff.
pub fn round_seconds(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// `timings` with every number of seconds rounded to milliseconds.
pub fn rounded_timings(timings: impl serde::Serialize) -> Value {
    match serde_json::to_value(timings).expect("timings serialize") {
        Value::Object(fields) => Value::Object(
            fields.into_iter().map(|(k, v)| (k, v.as_f64().map_or(v, |s| round_seconds(s).into()))).collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_start_with_the_schema_version_and_command() {
        let object = json_object("ls", serde_json::json!({"images": []}));
        let keys: Vec<&String> = object.as_object().unwrap().keys().collect();
        assert_eq!(object["schema_version"], JSON_SCHEMA_VERSION);
        assert_eq!(object["command"], "ls");
        assert!(keys.contains(&&"images".to_string()), "{object}");
    }

    #[test]
    fn errors_carry_their_exit_code() {
        let err = Error::usage("--memory 16: the guest needs at least 64 MiB");
        let object = json_error(&err);
        assert_eq!(object["exit_code"], 1);
        assert_eq!(object["kind"], "usage");
        assert!(object["error"].as_str().unwrap().contains("64 MiB"));
    }

    #[test]
    fn timings_are_rounded_to_milliseconds() {
        assert_eq!(round_seconds(1.234_567), 1.235);
        assert_eq!(round_seconds(0.0004), 0.0);
    }
}
