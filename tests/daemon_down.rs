//! A Docker daemon that does not answer (DOCKER_HOST pointing at a socket nobody listens
//! on) is an environment failure that says how to start one. Its own test binary, because
//! it sets the process environment.

mod common;

use diskc::error::{Classify, ErrorKind};
use diskc::source::daemon::{export_stream, resolve_daemon};

#[test]
fn daemon_down_is_environment_error_with_start_hint() {
    let dir = common::tempdir();
    let socket = dir.path().join("dead.sock");
    // A socket file whose listener is gone: connecting is refused, as with a stopped dockerd.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    std::env::set_var("DOCKER_HOST", format!("unix://{}", socket.display()));

    let errors = [
        resolve_daemon(common::rt(), "diskc-test/busybox:latest").unwrap_err(),
        export_stream(common::rt(), "diskc-test/busybox:latest").map(|_| ()).unwrap_err(),
    ];
    for err in errors {
        assert_eq!(err.error_kind(), ErrorKind::Environment, "{err}");
        let text = err.to_string();
        assert!(text.contains(&socket.display().to_string()), "{text}");
        assert!(text.contains("sudo dockerd") && text.contains("systemctl start docker"), "{text}");
    }
}
