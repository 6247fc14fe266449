//! Runs a plan through the stages; shared by the CLI and the worker.
