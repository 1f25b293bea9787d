//! docs/configuration.md cannot drift from the config structs: for every documented table the
//! set of keys in the doc equals the set of fields serde accepts (read from the
//! `unknown field ..., expected one of ...` error of a probe key), and every file shipped in
//! config/ compiles.

use std::collections::BTreeSet;
use std::path::Path;

/// Doc marker -> a config snippet where `zz_probe` is the first key of that table.
const PROBES: &[(&str, &str)] = &[
    ("server", "[server]\nzz_probe = 1\n"),
    ("server.tls", "[server]\ntls = { zz_probe = 1 }\n"),
    ("admin", "[admin]\nzz_probe = 1\n"),
    ("forward_auth", "[forward_auth]\nzz_probe = 1\n"),
    ("identity", "[identity]\nzz_probe = 1\n"),
    (
        "identity.assertion",
        "[identity]\nassertion = { zz_probe = 1 }\n",
    ),
    ("api_keys", "[api_keys]\nzz_probe = 1\n"),
    ("control_plane", "[control_plane]\nzz_probe = 1\n"),
    ("jwt", "[jwt]\nzz_probe = 1\n"),
    ("jwt.issuers", "[[jwt.issuers]]\nzz_probe = 1\n"),
    ("rate_limits", "[rate_limits]\nzz_probe = 1\n"),
    ("rate", "[rate_limits]\ndefault = { zz_probe = 1 }\n"),
    ("redis", "[redis]\nzz_probe = 1\n"),
    ("revocation", "[revocation]\nzz_probe = 1\n"),
    ("database", "[database]\nzz_probe = 1\n"),
    ("key_management", "[key_management]\nzz_probe = 1\n"),
    ("log", "[log]\nzz_probe = 1\n"),
    ("routes", "[[routes]]\nzz_probe = 1\n"),
    ("routes.match", "[[routes]]\nmatch = { zz_probe = 1 }\n"),
    ("routes.usage", "[[routes]]\nusage = { zz_probe = 1 }\n"),
    ("routes.cors", "[[routes]]\ncors = { zz_probe = 1 }\n"),
];

/// The fields serde expects, from the unknown-field error.
fn accepted_fields(snippet: &str) -> BTreeSet<String> {
    let error = authgate::config::load_str(Path::new("probe.toml"), snippet)
        .map(|_| ())
        .expect_err("the probe key must be refused");
    let text = error.to_string();
    let expected = text
        .split_once("expected")
        .unwrap_or_else(|| panic!("no field list in {text:?}"))
        .1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Keys documented in the table that follows `<!-- keys: NAME -->`.
fn documented_keys(doc: &str, name: &str) -> BTreeSet<String> {
    let marker = format!("<!-- keys: {name} -->");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/configuration.md has no table for {name}"));
    doc[start + marker.len()..]
        .lines()
        .skip_while(|line| line.trim().is_empty())
        .take_while(|line| line.starts_with('|'))
        .skip(2)
        .filter_map(|line| line.split('`').nth(1).map(str::to_owned))
        .collect()
}

#[test]
fn every_documented_table_matches_the_config_structs() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    let markers = doc.matches("<!-- keys: ").count();
    assert_eq!(
        markers,
        PROBES.len(),
        "every documented table needs a probe here"
    );
    for (name, snippet) in PROBES {
        let accepted = accepted_fields(snippet);
        assert!(!accepted.is_empty(), "{name}: no fields read");
        let documented = documented_keys(&doc, name);
        assert_eq!(
            documented, accepted,
            "docs/configuration.md table `{name}` differs from the config structs"
        );
    }
}

#[test]
fn every_shipped_config_file_compiles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for folder in [dir.clone(), dir.join("examples")] {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            // Only gateway configs; key files are checked by their own loader.
            let is_gateway_config = path.extension().is_some_and(|e| e == "toml")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("keys"));
            if is_gateway_config {
                authgate::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no config file found in config/");
}
