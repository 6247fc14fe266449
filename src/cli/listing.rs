//! `diskc ls` options: which images (`--filter`), and how each is shown (`--format`, `-q`);
//! also the durations `prune --until` and `--filter since=` take.
//!
//! `--format` takes `table`, `json`, or a comma-separated list of fields, printed
//! tab-separated without a header (for scripts: `diskc ls --format id,names`). A list of
//! fields rather than a Go-like template: it covers what scripts need and cannot fail at
//! run time.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use diskc::error::Error;
use diskc::store::{ImageSummary, Store};

use super::output;

/// The fields `--format` can name, in the order of `table`.
pub const FIELDS: [&str; 6] = ["id", "short_id", "names", "size", "stored_size", "created"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Fields(Vec<String>),
}

pub fn parse_format(text: &str) -> Result<Format, String> {
    match text {
        "table" => Ok(Format::Table),
        "json" => Ok(Format::Json),
        fields => {
            let fields: Vec<String> = fields.split(',').map(|f| f.trim().to_string()).collect();
            match fields.iter().find(|f| !FIELDS.contains(&f.as_str())) {
                Some(bad) => Err(format!(
                    "unknown field {bad:?}: use table, json, or a comma-separated list of {}",
                    FIELDS.join(", ")
                )),
                None => Ok(Format::Fields(fields)),
            }
        }
    }
}

/// One `--filter`: `name=PATTERN` (`*` matches any run of characters; a name without a tag
/// matches as NAME:latest), `since=DURATION` (created less than DURATION ago), or
/// `since=IMAGE` (created after that image), `dangling=true|false` (without a name or not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    Name(String),
    SinceAgo(u64),
    SinceImage(String),
    Dangling(bool),
}

pub fn parse_filter(text: &str) -> Result<Vec<Filter>, String> {
    let mut filters = Vec::new();
    for part in text.split(',') {
        let filter = match part.split_once('=') {
            Some(("name" | "reference", pattern)) if !pattern.is_empty() => Filter::Name(pattern.to_string()),
            Some(("since", since)) if !since.is_empty() => match parse_duration(since) {
                Ok(seconds) => Filter::SinceAgo(seconds),
                Err(_) => Filter::SinceImage(since.to_string()),
            },
            Some(("dangling", "true")) => Filter::Dangling(true),
            Some(("dangling", "false")) => Filter::Dangling(false),
            _ => {
                return Err(format!(
                    "{part:?}: expected name=PATTERN, since=DURATION|IMAGE or dangling=true|false"
                ))
            }
        };
        filters.push(filter);
    }
    Ok(filters)
}

/// `90s`, `15m`, `24h`, `7d`, `2w`: seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration like 90s, 15m, 24h, 7d or 2w");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else { return false };
            (0..=tail.len()).filter(|&i| tail.is_char_boundary(i)).any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// The images every filter keeps.
pub fn apply(
    store: &Store,
    images: Vec<ImageSummary>,
    filters: &[Filter],
) -> Result<Vec<ImageSummary>, Error> {
    let now = now();
    let mut after = Vec::new();
    for filter in filters {
        if let Filter::SinceImage(reference) = filter {
            let id = store.resolve(reference)?;
            let created = images.iter().find(|i| i.id == id).map_or(0, |i| i.created);
            after.push((id, created));
        }
    }
    Ok(images
        .into_iter()
        .filter(|image| {
            filters.iter().all(|filter| match filter {
                Filter::Name(pattern) => {
                    let pattern = if pattern.contains('*') {
                        pattern.clone()
                    } else {
                        diskc::source::reference::with_default_tag(pattern)
                    };
                    image.names.iter().any(|n| glob(&pattern, n))
                }
                Filter::SinceAgo(seconds) => image.created + seconds >= now,
                Filter::SinceImage(_) => {
                    after.iter().all(|(id, created)| image.id != *id && image.created >= *created)
                }
                Filter::Dangling(dangling) => image.names.is_empty() == *dangling,
            })
        })
        .collect())
}

fn field(image: &ImageSummary, name: &str) -> Value {
    match name {
        "id" => json!(image.id),
        "short_id" => json!(image.id.short()),
        "names" => json!(image.names),
        "size" => json!(image.size),
        "stored_size" => json!(image.stored_size),
        _ => json!(rfc3339(image.created)),
    }
}

/// Prints the images in `format` (`quiet`: ids only, one per line).
pub fn print(images: &[ImageSummary], format: &Format, quiet: bool) {
    if quiet {
        for image in images {
            output::line(image.id);
        }
        return;
    }
    match format {
        Format::Json => {
            let rows: Vec<Value> = images
                .iter()
                .map(|i| Value::Object(FIELDS.iter().map(|f| (f.to_string(), field(i, f))).collect()))
                .collect();
            output::json("ls", json!({ "images": rows }));
        }
        Format::Fields(fields) => {
            for image in images {
                let values: Vec<String> = fields
                    .iter()
                    .map(|f| match field(image, f) {
                        Value::String(s) => s,
                        Value::Array(names) => {
                            names.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
                        }
                        other => other.to_string(),
                    })
                    .collect();
                output::line(values.join("\t"));
            }
        }
        Format::Table => {
            output::line(format!("{:<12}  {:<24}  {:>10}  {:>10}  CREATED", "ID", "NAME", "SIZE", "STORED"));
            for image in images {
                let names = if image.names.is_empty() { "-".to_string() } else { image.names.join(",") };
                output::line(format!(
                    "{:<12}  {:<24}  {:>10}  {:>10}  {}",
                    image.id.short(),
                    names,
                    human_bytes(image.size),
                    human_bytes(image.stored_size),
                    rfc3339(image.created)
                ));
            }
        }
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Seconds since the epoch as an RFC 3339 UTC time (days to civil date after H. Hinnant's
/// published algorithm).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn formats_and_filters_parse() {
        assert_eq!(parse_format("table"), Ok(Format::Table));
        assert_eq!(parse_format("id,names"), Ok(Format::Fields(vec!["id".into(), "names".into()])));
        assert!(parse_format("{{.ID}}").unwrap_err().contains("short_id"));
        assert_eq!(
            parse_filter("name=app*,since=24h,since=abc").unwrap(),
            [Filter::Name("app*".into()), Filter::SinceAgo(86_400), Filter::SinceImage("abc".into())]
        );
        assert!(parse_filter("colour=red").is_err());
        assert_eq!(parse_duration("2w"), Ok(14 * 86_400));
        assert!(parse_duration("10").is_err());
    }

    #[test]
    fn glob_matches_stars() {
        assert!(glob("app*", "app:latest"));
        assert!(glob("*:v1", "team/app:v1"));
        assert!(!glob("app", "app:latest"));
        assert!(glob("a*p*t", "app:latest"));
    }
}
