//! The library's one error type, and what kind of failure it is.
//!
//! Each module keeps its own `thiserror` enum, precise about its own failures, and says what
//! kind of failure each variant is through [`Classify`]. At the library's surface every one of
//! them becomes an [`Error`], which remembers that kind: `From` exists only for types that
//! implement [`Classify`], so an error type that does not say its kind cannot reach a caller.
//! The process exit code is [`ErrorKind::exit_code`], one `match` with no fallback arm.

use std::fmt;

/// What kind of failure stopped diskc; each maps to one documented exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The command line or plan is wrong (conflicting or invalid values).
    Usage,
    /// The input is bad: a corrupt, missing or unsupported image, layer, Dockerfile or tree.
    /// Trying again with the same input fails the same way.
    BadInput,
    /// The environment failed: daemon down, registry unreachable, disk full, QEMU missing.
    /// Trying again later may succeed.
    Environment,
}

impl ErrorKind {
    /// The process exit code, as `--help` and the README document it.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Usage => 1,
            ErrorKind::BadInput => 2,
            ErrorKind::Environment => 3,
        }
    }

    /// The kind of an I/O failure that carries no better knowledge: data that is not what it
    /// should be, or a file that is not there, is the input's fault; the rest is the machine's.
    pub fn of_io(err: &std::io::Error) -> Self {
        match err.kind() {
            std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::NotFound => ErrorKind::BadInput,
            _ => ErrorKind::Environment,
        }
    }
}

/// Implemented by each module's error enum: what kind of failure each variant is.
pub trait Classify {
    fn error_kind(&self) -> ErrorKind;
}

impl Classify for std::io::Error {
    fn error_kind(&self) -> ErrorKind {
        ErrorKind::of_io(self)
    }
}

/// A plan that parses but does not make sense (conflicting or invalid values).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl Classify for UsageError {
    fn error_kind(&self) -> ErrorKind {
        ErrorKind::Usage
    }
}

/// The error every entry point of the library returns: a chain of causes, from what diskc
/// was doing down to what went wrong, and the failure's kind. It prints as one line.
pub struct Error {
    kind: ErrorKind,
    chain: anyhow::Error,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// A usage error with this message.
    pub fn usage(message: impl Into<String>) -> Self {
        UsageError(message.into()).into()
    }

    /// Says what diskc was doing when the error happened; the kind stays.
    pub fn context(self, doing: impl fmt::Display + Send + Sync + 'static) -> Self {
        Error { kind: self.kind, chain: self.chain.context(doing) }
    }

    /// The causes, outermost first.
    pub fn chain(&self) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
        self.chain.chain()
    }
}

impl<E: Classify + std::error::Error + Send + Sync + 'static> From<E> for Error {
    fn from(err: E) -> Self {
        Error { kind: err.error_kind(), chain: anyhow::Error::new(err) }
    }
}

/// The chain on one line: `converting X: layer #0: no space left on device`. Where a cause
/// repeats the part before it (`converting X` then `X: what is wrong`), X is said once.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        for cause in self.chain.chain() {
            let mut text = cause.to_string().replace('\n', " ");
            if let Some(previous) = parts.last() {
                if let Some((head, rest)) = text.split_once(": ") {
                    if previous.ends_with(head) {
                        text = rest.to_string();
                    }
                }
                if previous.contains(&text) {
                    continue;
                }
            }
            parts.push(text);
        }
        f.write_str(&parts.join(": "))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({:?})", self.chain, self.kind)
    }
}

impl std::error::Error for Error {}

/// `.context(..)` on any result whose error becomes an [`Error`].
pub trait ResultExt<T> {
    fn context(self, doing: impl fmt::Display + Send + Sync + 'static) -> Result<T, Error>;
    fn with_context<D: fmt::Display + Send + Sync + 'static>(
        self,
        doing: impl FnOnce() -> D,
    ) -> Result<T, Error>;
}

impl<T, E: Into<Error>> ResultExt<T> for Result<T, E> {
    fn context(self, doing: impl fmt::Display + Send + Sync + 'static) -> Result<T, Error> {
        self.map_err(|e| e.into().context(doing))
    }

    fn with_context<D: fmt::Display + Send + Sync + 'static>(
        self,
        doing: impl FnOnce() -> D,
    ) -> Result<T, Error> {
        self.map_err(|e| e.into().context(doing()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind has its own documented code. `exit_code` has no fallback arm, so a kind added
    /// without a code does not compile; this pins the codes the README's table documents.
    #[test]
    fn every_error_kind_has_its_exit_code() {
        let documented = [(ErrorKind::Usage, 1), (ErrorKind::BadInput, 2), (ErrorKind::Environment, 3)];
        for (kind, code) in documented {
            assert_eq!(kind.exit_code(), code, "{kind:?}");
        }
        // Every variant appears above: this match must name each of them too.
        for (kind, _) in documented {
            match kind {
                ErrorKind::Usage | ErrorKind::BadInput | ErrorKind::Environment => {}
            }
        }
    }

    #[test]
    fn the_kind_survives_context() {
        let err: Error = std::io::Error::other("No space left on device").into();
        let err = err.context("converting docker-daemon:app:1");
        assert_eq!(err.kind(), ErrorKind::Environment);
        let missing: Result<(), std::io::Error> = Err(std::io::ErrorKind::NotFound.into());
        assert_eq!(missing.context("reading x").unwrap_err().kind(), ErrorKind::BadInput);
    }

    #[test]
    fn one_line_says_the_input_once_and_skips_repeated_causes() {
        let inner: Error = std::io::Error::other("No space left on device").into();
        let err = inner
            .context("docker-daemon:app:1: layer #0: No space left on device")
            .context("converting docker-daemon:app:1");
        assert_eq!(err.to_string(), "converting docker-daemon:app:1: layer #0: No space left on device");
    }
}
