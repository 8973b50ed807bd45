//! `raftkv serve`'s settings as a user meets them: the real binary, run with a cleared
//! environment of its own (no test mutates this process's environment, so they run in parallel).
//!
//! Each configuration here is deliberately inconsistent (`--initial-cluster` lacks the member),
//! so the binary resolves every layer, reports which name won, and exits 2 without binding a
//! port.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `raftkv serve` with only `env` in its environment.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_raftkv"));
    command.arg("serve").args(args).env_clear();
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run raftkv")
}

/// The one-line error and the exit status.
fn failure(output: &Output) -> (i32, String) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().next().unwrap_or_default().to_string();
    (output.status.code().expect("exit status"), first)
}

/// A config that cannot start: the cluster names only `other`.
const NO_SUCH_MEMBER: &str = "other=http://127.0.0.1:1";

fn write_file(dir: &Path, text: &str) -> String {
    let path = dir.join("raftkv.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        &format!("name = \"from-file\"\ninitial-cluster = \"{NO_SUCH_MEMBER}\"\n"),
    );
    let no_member =
        |name: &str| format!("error: --initial-cluster has no member named {name:?} (--name)");

    // Default alone.
    let out = serve(&["--initial-cluster", NO_SUCH_MEMBER], &[]);
    assert_eq!(failure(&out), (2, no_member("default")));
    // The file beats the default.
    let out = serve(&["--config-file", &file], &[]);
    assert_eq!(failure(&out), (2, no_member("from-file")));
    // The file can be named by the environment too.
    let out = serve(&[], &[("RAFTKV_CONFIG_FILE", &file)]);
    assert_eq!(failure(&out), (2, no_member("from-file")));
    // The environment beats the file.
    let out = serve(&["--config-file", &file], &[("RAFTKV_NAME", "from-env")]);
    assert_eq!(failure(&out), (2, no_member("from-env")));
    // A flag beats the environment.
    let out = serve(
        &["--config-file", &file, "--name", "from-flag"],
        &[("RAFTKV_NAME", "from-env")],
    );
    assert_eq!(failure(&out), (2, no_member("from-flag")));
}

#[test]
fn a_flag_hides_a_bad_env_value() {
    let env = [("RAFTKV_INITIAL_CLUSTER_STATE", "bogus")];
    let (code, line) = failure(&serve(&[], &env));
    assert_eq!(code, 2);
    assert!(
        line.contains("'bogus'") && line.contains("--initial-cluster-state"),
        "{line}"
    );

    let args = [
        "--initial-cluster-state",
        "new",
        "--initial-cluster",
        NO_SUCH_MEMBER,
    ];
    let (code, line) = failure(&serve(&args, &env));
    assert_eq!(code, 2);
    assert!(line.contains("no member named \"default\""), "{line}");
}

/// Asserts that `raftkv serve` refuses `args` and `env` with exit status 2 and one clap-style
/// line containing `expected`, and no panic.
fn refuses(args: &[&str], env: &[(&str, &str)], expected: &str) {
    let out = serve(args, env);
    let (code, line) = failure(&out);
    assert_eq!(code, 2, "{args:?} {env:?}: {line}");
    assert!(line.starts_with("error: "), "{line}");
    assert!(line.contains(expected), "{args:?} {env:?}: {line}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_values_exit_2_with_one_line() {
    refuses(
        &["--listen-peer-urls", "http://localhost"],
        &[],
        "bad URL \"http://localhost\"",
    );
    refuses(
        &[],
        &[("RAFTKV_HEARTBEAT_INTERVAL", "fast")],
        "--heartbeat-interval",
    );
    refuses(&[], &[("RAFTKV_LOG", "info,==")], "--log-level");
    refuses(
        &["--election-timeout", "200"],
        &[],
        "--election-timeout (200 ms) must be at least 5 x --heartbeat-interval",
    );
    refuses(
        &["--config-file", "/nonexistent/raftkv.toml"],
        &[],
        "config file /nonexistent/raftkv.toml: ",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "data_dir = \"x\"\n");
    refuses(
        &["--config-file", &file],
        &[],
        "unknown key \"data_dir\" (did you mean \"data-dir\"?)",
    );
}
