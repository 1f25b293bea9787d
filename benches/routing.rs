//! Route matching and path normalization, the two steps every request pays before auth.
//!
//! Matching is compared at 10, 100 and 1000 routes: the table probes one hash map per segment
//! boundary of the path, so the cost should stay flat as routes are added (a linear scan would
//! grow 100x). Normalization is measured on an already-normal path (the borrowed fast path,
//! no allocation) and on paths that need decoding, dot-segment removal, or are long.

use std::hint::black_box;
use std::path::Path;

use authgate::routes::normalize::normalize_path;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::Method;

/// A config with `n` routes: prefixes `/svc{i}/v1/`, a few exact paths and host-specific ones.
fn table(n: usize) -> authgate::config::Config {
    let mut text = String::new();
    for i in 0..n {
        let matcher = match i % 10 {
            0 => format!("{{ path = \"/svc{i}/health\" }}"),
            1 => format!("{{ path_prefix = \"/svc{i}/v1/\", host = \"api{i}.example.com\" }}"),
            _ => format!("{{ path_prefix = \"/svc{i}/v1/\", methods = [\"GET\", \"POST\"] }}"),
        };
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nmatch = {matcher}\nupstream = \"http://127.0.0.1:9000\"\nauth = \"none\"\n"
        ));
    }
    authgate::config::load_str(Path::new("bench.toml"), &text).expect("bench config compiles")
}

fn bench_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for n in [10usize, 100, 1000] {
        let config = table(n);
        let hit = format!("/svc{}/v1/chat/completions", n - 2);
        group.bench_with_input(BenchmarkId::new("prefix_hit", n), &hit, |b, path| {
            b.iter(|| {
                config
                    .routes
                    .find(Some("gw.example.com"), &Method::POST, black_box(path))
            });
        });
        group.bench_with_input(
            BenchmarkId::new("miss_404", n),
            &"/nothing/here/at/all",
            |b, path| {
                b.iter(|| {
                    config
                        .routes
                        .find(Some("gw.example.com"), &Method::GET, black_box(path))
                });
            },
        );
    }
    group.finish();
}

fn bench_normalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize_path");
    let long = "/segment".repeat(256);
    let cases: [(&str, &str); 4] = [
        ("already_normal", "/v1/chat/completions"),
        ("decode", "/v1/%63hat/completions"),
        ("dot_segments", "/v1/./public/../chat//completions"),
        ("long_2k", long.as_str()),
    ];
    for (name, path) in cases {
        group.bench_function(name, |b| b.iter(|| normalize_path(black_box(path))));
    }
    group.finish();
}

criterion_group!(benches, bench_matching, bench_normalize);
criterion_main!(benches);
