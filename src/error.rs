//! What kind of failure stopped diskc, and so which exit code the process returns.

/// The process exit codes, documented in `--help` and the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// 1: the command line is wrong.
    Usage = 1,
    /// 2: the input is bad: corrupt, missing, unsupported, or it does not fit.
    BadInput = 2,
    /// 3: the environment failed: daemon down, registry unreachable, disk full, QEMU missing.
    Environment = 3,
}

impl ErrorClass {
    pub fn exit_code(self) -> i32 {
        self as i32
    }

    /// The class of an I/O failure that is not about the input itself.
    pub fn of_io(err: &std::io::Error) -> Self {
        match err.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => ErrorClass::BadInput,
            std::io::ErrorKind::NotFound => ErrorClass::BadInput,
            _ => ErrorClass::Environment,
        }
    }
}

/// Implemented by each module's error enum; `main` finds the first classified error in the
/// chain and exits with its code.
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

/// A command line that parses but does not make sense (conflicting or invalid values).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl Classify for UsageError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Usage
    }
}
