//! The `authgate` binary (SPEC §1): `check` output and located config errors, config path
//! resolution, exit codes (0 ok, 1 invalid, 2 usage), and `serve` start/stop and log streams.
mod common;
use common::authgate_command as authgate;
use common::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

// === helpers ===

fn run(command: &mut Command) -> Output {
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes `name` with `text` into `dir` and returns its path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `authgate check -c path`.
fn check(path: &Path) -> Output {
    run(authgate().arg("check").arg("-c").arg(path))
}

/// Asserts exit 1 with exactly one `FILE:LINE:COL: message` line on stderr; returns
/// (line, column, message).
fn single_error(output: &Output, path: &Path) -> (usize, usize, String) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line: {text}");
    let rest = lines[0]
        .strip_prefix(&format!("{}:", path.display()))
        .unwrap_or_else(|| panic!("error does not start with the file: {text}"));
    let (line, rest) = rest.split_once(':').unwrap();
    let (column, message) = rest.split_once(": ").unwrap();
    (
        line.parse()
            .unwrap_or_else(|_| panic!("bad line in {text}")),
        column
            .parse()
            .unwrap_or_else(|_| panic!("bad column in {text}")),
        message.to_owned(),
    )
}

const GOOD: &str = r#"[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"

[[routes]]
name = "alpha"
match = { path_prefix = "/alpha/", methods = ["GET"] }
upstream = "http://127.0.0.1:9001"
auth = "none"

[[routes]]
name = "beta"
match = { path = "/beta" }
upstream = "http://127.0.0.1:9002"
auth = "none"
"#;

// === check ===

#[test]
fn check_accepts_a_good_config_and_prints_the_route_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.toml", GOOD);
    let output = check(&path);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("2 route(s)"), "{text}");
    let alpha = text.lines().find(|l| l.contains("alpha")).unwrap();
    assert!(
        alpha.contains("/alpha/") && alpha.contains("http://127.0.0.1:9001"),
        "{text}"
    );
    let beta = text.lines().find(|l| l.contains("beta")).unwrap();
    assert!(
        beta.contains("/beta") && beta.contains("http://127.0.0.1:9002"),
        "{text}"
    );
    assert!(stderr(&output).is_empty(), "{}", stderr(&output));

    // A shadowed route is a warning on stderr, not an error.
    let shadowed = format!(
        "{GOOD}{}",
        public_route("gamma", "/alpha/", "http://127.0.0.1:9003").replace(
            "path_prefix = \"/alpha/\"",
            "path_prefix = \"/alpha/\", methods = [\"GET\"]"
        )
    );
    let path = write(dir.path(), "shadowed.toml", &shadowed);
    let output = check(&path);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let warning = stderr(&output);
    assert!(
        warning.starts_with(&path.display().to_string()) && warning.contains("gamma"),
        "{warning}"
    );
    assert!(stdout(&output).contains("3 route(s)"));
}

#[test]
fn shipped_configs_pass_check() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = repo.join("config/authgate.toml");
    let output = check(&shipped);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("route(s)"));

    let mut files = Vec::new();
    for dir in [repo.join("config"), repo.join("config/examples")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let is_toml = path.extension().is_some_and(|ext| ext == "toml");
            // Key files ([[keys]]) live next to the configs but are not configs.
            if is_toml && !std::fs::read_to_string(&path).unwrap().contains("[[keys]]") {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty(), "no config files found under config/");
    for path in files {
        let output = check(&path);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            stderr(&output)
        );
    }
}

#[test]
fn check_reports_each_error_as_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    // (file text, expected line, expected column or 0 for "any", text the message must name)
    let cases: &[(&str, usize, usize, &str)] = &[
        (
            "[server]\nlisten = \"127.0.0.1:0\"\nbogus_field = 1\n",
            3,
            1,
            "bogus_field",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:0\"\nidle_timeout = \"5x\"\n",
            3,
            16,
            "5x",
        ),
        ("[server]\nheader_read_timeout = \"30\"\n", 2, 23, "unit"),
        (
            "[server]\nlisten = \"${AUTHGATE_TEST_SURELY_UNSET_VAR}\"\n",
            2,
            10,
            "AUTHGATE_TEST_SURELY_UNSET_VAR",
        ),
        (
            "[[routes]]\nname = \"r\"\nmatch = { path_prefix = \"/\" }\nupstream = \"${AUTHGATE_TEST_SURELY_UNSET_VAR}\"\nauth = \"none\"\n",
            4,
            12,
            "AUTHGATE_TEST_SURELY_UNSET_VAR",
        ),
        ("[server]\nlisten = \"127.0.0.1:0\n", 2, 0, ""),
        ("[server]\nlisten = 5 = 6\n", 2, 0, ""),
    ];
    for (i, (text, line, column, needle)) in cases.iter().enumerate() {
        let path = write(dir.path(), &format!("case{i}.toml"), text);
        let (got_line, got_column, message) = single_error(&check(&path), &path);
        assert_eq!(got_line, *line, "{text}: {message}");
        if *column != 0 {
            assert_eq!(got_column, *column, "{text}: {message}");
        }
        assert!(message.contains(needle), "{text}: {message}");
    }
}

#[test]
fn check_of_a_missing_file_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let (line, column, message) = single_error(&check(&path), &path);
    assert_eq!((line, column), (1, 1));
    assert!(message.contains("cannot read"), "{message}");
}

#[test]
fn environment_variables_and_defaults_are_interpolated() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[server]\nlisten = \"${AUTHGATE_TEST_LISTEN_X}\"\n\
        [[routes]]\nname = \"r\"\nmatch = { path_prefix = \"/\" }\n\
        upstream = \"${AUTHGATE_TEST_SURELY_UNSET_VAR:-http://127.0.0.1:9555}\"\nauth = \"none\"\n";
    let path = write(dir.path(), "env.toml", text);

    let output = run(authgate()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .env("AUTHGATE_TEST_LISTEN_X", "127.0.0.1:0"));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("http://127.0.0.1:9555"),
        "{}",
        stdout(&output)
    );

    // The variable's value is what gets validated.
    let output = run(authgate()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .env("AUTHGATE_TEST_LISTEN_X", "not-an-address"));
    let (line, _, message) = single_error(&output, &path);
    assert_eq!(line, 2);
    assert!(message.contains("not-an-address"), "{message}");

    // Unset: the error names the variable.
    let output = run(authgate().arg("check").arg("-c").arg(&path));
    let (line, column, message) = single_error(&output, &path);
    assert_eq!((line, column), (2, 10));
    assert!(message.contains("AUTHGATE_TEST_LISTEN_X"), "{message}");
}

#[test]
fn config_path_comes_from_authgate_config_unless_c_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.toml", GOOD);
    let bad = write(dir.path(), "bad.toml", "[server]\nbogus = 1\n");

    let output = run(authgate().arg("check").env("AUTHGATE_CONFIG", &good));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("2 route(s)"));

    let output = run(authgate().arg("check").env("AUTHGATE_CONFIG", &bad));
    let (line, _, _) = single_error(&output, &bad);
    assert_eq!(line, 2);

    // -c wins over the environment, both ways.
    let output = run(authgate()
        .arg("check")
        .arg("-c")
        .arg(&good)
        .env("AUTHGATE_CONFIG", &bad));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let output = run(authgate()
        .arg("check")
        .arg("--config")
        .arg(&bad)
        .env("AUTHGATE_CONFIG", &good));
    single_error(&output, &bad);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["bogus"][..],
        &[],
        &["check", "--nope"],
        &["serve", "--threads", "0"],
        &["serve", "--threads", "many"],
        &["serve", "--log-format", "xml"],
        &["check", "-c"],
    ] {
        let output = run(authgate().args(args));
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).is_empty(), "{args:?}");
    }
}

#[test]
fn help_lists_the_commands() {
    let output = run(authgate().arg("--help"));
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(text.contains("serve") && text.contains("check"), "{text}");
}

// === serve ===

fn serve_config(
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: &str,
    extra: &str,
) -> PathBuf {
    write(
        dir,
        "authgate.toml",
        &format!(
            "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n[log]\nformat = \"json\"\n{}{extra}",
            public_route("pub", "/pub/", upstream)
        ),
    )
}

#[tokio::test]
async fn serve_with_flags_starts_logs_access_lines_as_json_on_stdout_and_stops_on_sigterm() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = free_addrs();
    // A shadowed route makes a warning: a diagnostic that passes --log-level warn.
    let shadowed = public_route("shadowed", "/pub/", &upstream.url());
    let config = serve_config(dir.path(), listen, admin, &upstream.url(), &shadowed);
    let mut gateway =
        AuthgateProcess::spawn(authgate().arg("serve").arg("-c").arg(&config).args([
            "--log-format",
            "pretty",
            "--log-level",
            "warn",
            "--threads",
            "1",
        ]));
    gateway.wait_ready(admin).await;

    for path in ["/pub/a", "/nowhere"] {
        let response = client()
            .get(format!("http://{listen}{path}"))
            .send()
            .await
            .unwrap();
        response.text().await.unwrap();
    }
    // The access log is written by its own thread: wait for both lines before stopping.
    for _ in 0..500 {
        if gateway.stdout().lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.signal("TERM");
    let status = gateway.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "stderr: {}", gateway.stderr());

    let stdout = gateway.stdout();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line:?}")))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines.iter().all(serde_json::Value::is_object));
    assert_eq!(lines[0]["path"], "/pub/a");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["route"], "pub");
    assert_eq!(lines[1]["path"], "/nowhere");
    assert_eq!(lines[1]["status"], 404);
    // Diagnostics never go to stdout; access lines never go to stderr.
    let stderr = gateway.stderr();
    assert!(!stderr.contains("/pub/a"), "{stderr}");
    // --log-level warn: the warning, no info diagnostics; --log-format pretty: not JSON.
    assert!(stderr.contains("shadowed"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(
        stderr.lines().all(|line| !line.starts_with('{')),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_with_the_port_in_use_exits_1_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap();
    let (_, admin) = free_addrs();
    let dir = tempfile::tempdir().unwrap();
    let config = serve_config(dir.path(), listen, admin, "http://127.0.0.1:9", "");
    let mut gateway = AuthgateProcess::spawn(authgate().arg("serve").arg("-c").arg(&config));
    let status = gateway.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(1), "stderr: {}", gateway.stderr());
    let stderr = gateway.stderr();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    // The line says which listener failed.
    assert!(
        stderr.contains(&format!("server.listen {listen}")),
        "{stderr}"
    );
    assert!(stderr.to_lowercase().contains("in use"), "{stderr}");
    drop(taken);
}

#[tokio::test]
async fn serve_with_an_invalid_config_exits_1_without_listening() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.toml", "[server]\nidle_timeout = \"30\"\n");
    let mut gateway = AuthgateProcess::spawn(authgate().arg("serve").arg("-c").arg(&path));
    let status = gateway.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(1));
    let stderr = gateway.stderr();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}:2:16: ", path.display())),
        "{stderr}"
    );
}

#[test]
fn check_lists_every_mistake_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    // Seven mistakes: two the reader meets (a bad duration, an unknown field in a route), five
    // that only compiling the parts that read cleanly finds.
    let text = r#"[server]
idle_timeout = "5x"

[api_keys]
min_length = 4000

[[routes]]
name = "a"
match = { path_prefix = "/a/" }
upstream = "ftp://nowhere"
auth = ["api_key"]

[[routes]]
name = "a"
match = { path_prefix = "b/" }
upstream = "http://127.0.0.1:9000"
auth = ["magic"]

[[routes]]
name = "c"
match = { path_prefix = "/c/" }
upstream = "http://127.0.0.1:9000"
auth = "none"
retries = 3
"#;
    let path = write(dir.path(), "six.toml", text);
    let output = check(&path);
    let errors = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{errors}");
    let lines: Vec<&str> = errors.lines().collect();
    let prefix = path.display().to_string();
    let expected = [
        ("2:16:", "5x"),
        ("5:14:", "min_length"),
        ("10:12:", "ftp://nowhere"),
        ("13:1:", "used twice"),
        ("15:9:", "b/"),
        ("17:8:", "magic"),
        ("24:1:", "retries"),
    ];
    assert_eq!(lines.len(), expected.len(), "{errors}");
    for (line, (place, names)) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(&format!("{prefix}:{place}")) && line.contains(names),
            "{line} (expected {place} naming {names})"
        );
    }
    assert!(stdout(&output).is_empty());
}
