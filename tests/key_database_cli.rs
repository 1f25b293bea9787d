//! The `authgate` binary on the key service's database: `migrate`, and `keys add|list|revoke|
//! rotate|import --database` on SQLite and PostgreSQL, read back from the tables; bad URLs and
//! flag clashes exit 1 or 2 with one line.
mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use authgate::key_service::model::KeyFilter;
use authgate::keys::{KeyHash, Timestamp};
use common::authgate_command as authgate;
use common::database::TestDatabase;
use sha2::Digest as _;

fn run(args: &[&str]) -> Output {
    authgate().args(args).output().unwrap()
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    authgate().current_dir(dir).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn ok(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(output));
    stdout(output)
}

/// Exit 1 with exactly one line on stderr; returns it.
#[track_caller]
fn one_line_failure(output: &Output) -> String {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {text}");
    assert_eq!(text.lines().count(), 1, "expected one line: {text}");
    text
}

fn sha256_hex(key: &str) -> String {
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

on_both_engines!(the_key_lifecycle_round_trips_through_the_binary);

async fn the_key_lifecycle_round_trips_through_the_binary(db: TestDatabase) {
    let url = db.url.as_str();
    let migrated = ok(&run(&["migrate", "--database", url]));
    assert!(migrated.contains("applied 1 key service"), "{migrated}");
    assert!(ok(&run(&["migrate", "--database", url])).contains("up to date"));

    // add: the key once, then its id.
    let added = ok(&run(&[
        "keys",
        "add",
        "--database",
        url,
        "--tenant",
        "acme",
        "--user",
        "alice",
        "--scope",
        "read",
        "--scope",
        "write",
        "--rps",
        "5",
        "--burst",
        "10",
        "--description",
        "ci 'quoted' key",
        "--claim",
        "plan=gold",
        "--name",
        "ci",
        "--expires",
        "2099-01-01T00:00:00Z",
    ]));
    let lines: Vec<&str> = added.lines().collect();
    assert_eq!(lines.len(), 2, "{added}");
    let (key, key_id) = (lines[0].to_owned(), lines[1].to_owned());
    assert!(key.starts_with("sgk_"));
    assert!(key_id.starts_with("key_"));

    let database = db.open_bare().await;
    let stored = database.key_by_id(&key_id).await.unwrap().unwrap();
    // What the table holds is the SHA-256 of the printed key, in lowercase hex.
    let row: String = sqlx::Row::get(
        &sqlx::query("SELECT hash FROM api_keys WHERE key_id = $1")
            .bind(key_id.as_str())
            .fetch_one(database.pool())
            .await
            .unwrap(),
        0,
    );
    assert_eq!(row, sha256_hex(&key));
    assert_eq!(stored.hash, KeyHash::of(&key));
    assert_eq!(stored.name, "ci");
    assert_eq!(stored.created_by, "cli");
    assert_eq!(stored.record.tenant_id, "acme");
    assert_eq!(stored.record.user_id.as_deref(), Some("alice"));
    assert_eq!(stored.record.scopes, ["read", "write"]);
    assert_eq!(
        stored.record.description.as_deref(),
        Some("ci 'quoted' key")
    );
    assert_eq!(stored.record.custom_claims["plan"], "gold");
    assert_eq!(stored.record.rate_limit.map(|r| r.burst), Some(10));

    // list: the key id and 8 hex characters of the hash, never more of it, never the key.
    let listed = ok(&run(&["keys", "list", "--database", url]));
    assert!(listed.contains(&key_id), "{listed}");
    assert!(listed.contains(&sha256_hex(&key)[..8]));
    assert!(!listed.contains(&sha256_hex(&key)[..9]), "{listed}");
    assert!(!listed.contains(&key));

    // rotate: a new key with the same record; the old one ends within the grace period.
    let before = Timestamp::now();
    let rotated = ok(&run(&[
        "keys",
        "rotate",
        "--database",
        url,
        "--key-id",
        &key_id,
        "--grace",
        "1h",
    ]));
    let lines: Vec<&str> = rotated.lines().collect();
    assert_eq!(lines.len(), 2, "{rotated}");
    let (new_key, new_id) = (lines[0], lines[1]);
    let new = database
        .key_by_hash(&KeyHash::of(new_key))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.key_id(), new_id);
    assert_eq!(new.rotated_from.as_deref(), Some(key_id.as_str()));
    assert_eq!(new.record.scopes, stored.record.scopes);
    let old = database.key_by_id(&key_id).await.unwrap().unwrap();
    assert_eq!(old.rotated_to.as_deref(), Some(new_id));
    let ends = old.record.expires_at.unwrap();
    assert!(
        ends.0 >= before.0 + 3600 && ends.0 <= Timestamp::now().0 + 3600,
        "{ends:?}"
    );
    // Rotating it again is refused with one line.
    one_line_failure(&run(&[
        "keys",
        "rotate",
        "--database",
        url,
        "--key-id",
        &key_id,
    ]));

    // revoke: revoked with a time; twice is fine.
    assert!(
        ok(&run(&[
            "keys",
            "revoke",
            "--database",
            url,
            "--key-id",
            new_id
        ]))
        .contains("revoked")
    );
    ok(&run(&[
        "keys",
        "revoke",
        "--database",
        url,
        "--key-id",
        new_id,
    ]));
    let revoked = database.key_by_id(new_id).await.unwrap().unwrap();
    assert!(revoked.record.revoked);
    assert!(revoked.revoked_at.is_some());
    assert!(
        ok(&run(&["keys", "list", "--database", url]))
            .lines()
            .any(|line| line.starts_with(new_id) && line.contains("revoked"))
    );
    one_line_failure(&run(&[
        "keys",
        "revoke",
        "--database",
        url,
        "--key-id",
        "key_missing",
    ]));

    // Every mutation is in the audit log, as the CLI.
    let events = database.list_audit(None, None, 100).await.unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["create", "rotate", "revoke"]);
    assert!(events.iter().all(|e| e.actor == "cli" && e.result == "ok"));

    // import: hashes only, idempotent, an existing hash skipped.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let text = format!(
        "{}{}{}",
        common::key_record(
            "sgk_imported_one_0123456789",
            "key_id = \"imp1\"\ntenant_id = \"acme\"\nscopes = [\"read\"]"
        ),
        common::key_record(
            "sgk_imported_two_0123456789",
            "key_id = \"imp2\"\ntenant_id = \"globex\"\nrevoked = true"
        ),
        // The key added above, under another id: its hash is already stored.
        common::key_record(&key, "key_id = \"imp3\"\ntenant_id = \"acme\""),
    );
    std::fs::write(&file, text).unwrap();
    let file = file.to_str().unwrap();
    let first = ok(&run(&["keys", "import", "--file", file, "--database", url]));
    assert!(first.contains("2 imported, 1 skipped"), "{first}");
    assert!(first.contains("skipped imp3"), "{first}");
    let again = ok(&run(&["keys", "import", "--file", file, "--database", url]));
    assert!(again.contains("0 imported, 3 skipped"), "{again}");
    let imported = database
        .key_by_hash(&KeyHash::of("sgk_imported_one_0123456789"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(imported.key_id(), "imp1");
    assert_eq!(imported.name, "imp1");
    assert_eq!(imported.created_by, "import");
    let gone = database.key_by_id("imp2").await.unwrap().unwrap();
    assert!(gone.record.revoked && gone.revoked_at.is_some());
    assert_eq!(
        database
            .list_keys(&KeyFilter::default(), None, 100)
            .await
            .unwrap()
            .len(),
        4
    );
    let audit = database.list_audit(None, None, 100).await.unwrap();
    assert_eq!(audit.iter().filter(|e| e.action == "import").count(), 2);
    database.close().await;
}

#[test]
fn migrate_reads_the_config_and_resolves_sqlite_paths_against_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("etc");
    std::fs::create_dir(&config_dir).unwrap();
    let config = config_dir.join("authgate.toml");
    std::fs::write(&config, "[database]\nurl = \"sqlite://keys.db\"\n").unwrap();
    let output = run_in(dir.path(), &["migrate", "-c", config.to_str().unwrap()]);
    assert!(ok(&output).contains("applied 1 key service"));
    assert!(config_dir.join("keys.db").exists());
    assert!(!dir.path().join("keys.db").exists());
    // `--database` overrides the config; relative to the current folder.
    ok(&run_in(
        dir.path(),
        &[
            "migrate",
            "-c",
            config.to_str().unwrap(),
            "--database",
            "sqlite://here.db",
        ],
    ));
    assert!(dir.path().join("here.db").exists());
    // A config without [database] url is one line, exit 1.
    std::fs::write(&config, "[server]\n").unwrap();
    let message = one_line_failure(&run(&["migrate", "-c", config.to_str().unwrap()]));
    assert!(message.contains("[database] url"), "{message}");
}

#[test]
fn bad_database_urls_exit_1_with_one_line() {
    for url in [
        "mysql://h/db",
        "sqlite://",
        "not a url",
        "sqlite://k.db?mode=ro",
    ] {
        let message = one_line_failure(&run(&["keys", "list", "--database", url]));
        assert!(message.contains("database"), "{url}: {message}");
    }
    // Down: a closed port answers within a few seconds, one line, no password shown.
    let started = Instant::now();
    let message = one_line_failure(&run(&[
        "migrate",
        "--database",
        "postgres://postgres:hunter2@127.0.0.1:1/authgate",
    ]));
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(!message.contains("hunter2"), "{message}");
    // A database that does not exist yet is created and migrated, as `serve` would.
    let dir = tempfile::tempdir().unwrap();
    let fresh = format!("sqlite://{}", dir.path().join("fresh.db").display());
    ok(&run(&["keys", "list", "--database", &fresh]));
    assert!(dir.path().join("fresh.db").exists());
}

#[test]
fn file_and_database_together_or_neither_is_a_usage_error() {
    let both = run(&[
        "keys",
        "list",
        "--file",
        "keys.toml",
        "--database",
        "sqlite::memory:",
    ]);
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    let neither = run(&["keys", "revoke", "--key-id", "k1"]);
    assert_eq!(neither.status.code(), Some(2), "{}", stderr(&neither));
    let name_without_database = run(&[
        "keys",
        "add",
        "--file",
        "keys.toml",
        "--tenant",
        "t",
        "--name",
        "n",
    ]);
    assert_eq!(name_without_database.status.code(), Some(2));
}

#[test]
fn invalid_input_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    ok(&run(&["migrate", "--database", &url]));
    for bad in [
        vec!["--tenant", ""],
        vec!["--tenant", "t", "--scope", "has space"],
        vec!["--tenant", "t", "--claim", "novalue"],
        vec!["--tenant", "t", "--expires", "tomorrow"],
        vec!["--tenant", "t", "--rps=-1", "--burst", "1"],
    ] {
        let mut args = vec!["keys", "add", "--database", url.as_str()];
        args.extend(bad.iter().copied());
        one_line_failure(&run(&args));
    }
    let long = "x".repeat(2000);
    one_line_failure(&run(&[
        "keys",
        "add",
        "--database",
        &url,
        "--tenant",
        "t",
        "--name",
        &long,
    ]));
    let listed = ok(&run(&["keys", "list", "--database", &url]));
    assert_eq!(listed.lines().count(), 1, "{listed}");
}

/// `serve` on a database whose schema is newer than (or different from) this version's: the
/// start is refused with a clear error and exit 1, before any listener is bound.
#[tokio::test]
async fn serve_refuses_a_database_whose_migrations_it_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("authgate.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [api_keys]\nsource = \"database\"\n[database]\nurl = \"sqlite://keys.db\"\n\
         [[routes]]\nname = \"api\"\nmatch = { path_prefix = \"/\" }\n\
         upstream = \"http://127.0.0.1:9\"\nauth = [\"api_key\"]\n",
    )
    .unwrap();
    ok(&run(&["migrate", "-c", config.to_str().unwrap()]));
    // A later version's migration, recorded as applied.
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) \
         VALUES (9999, 'from the future', '2030-01-01 00:00:00', 1, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let mut command = tokio::process::Command::from(authgate());
    command
        .args(["serve", "-c", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("serve kept running on a database it cannot migrate")
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(text.contains("migration"), "{text}");
}
