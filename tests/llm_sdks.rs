//! The official Python SDKs through authgate, unchanged: Anthropic's (`x-api-key`), OpenAI's
//! (`Authorization: Bearer`) and its Azure client (`api-key`), each streaming a completion from
//! a fake provider-shaped upstream. The key is accepted in the header the SDK sends, never
//! reaches the upstream, the identity headers do; a wrong key is the SDK's own authentication
//! error and nothing is forwarded.
//!
//! The SDKs are Python packages: `scripts/test.sh` installs them (`pip install anthropic
//! openai`). Without them these tests fail loudly, unless `AUTHGATE_SKIP_SDKS=1` says to skip.
mod common;

use std::time::Duration;

use common::{TestBody, TestGateway, Upstream, full_body, key_record};
use http::Response;

const ANTHROPIC_STREAM: &str = concat!(
    "event: message_start\n",
    r#"data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-test","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}"#,
    "\n\n",
    "event: content_block_start\n",
    r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    "\n\n",
    "event: content_block_delta\n",
    r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
    "\n\n",
    "event: content_block_delta\n",
    r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" through authgate"}}"#,
    "\n\n",
    "event: content_block_stop\n",
    r#"data: {"type":"content_block_stop","index":0}"#,
    "\n\n",
    "event: message_delta\n",
    r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}"#,
    "\n\n",
    "event: message_stop\n",
    r#"data: {"type":"message_stop"}"#,
    "\n\n",
);

const OPENAI_STREAM: &str = concat!(
    r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-test","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-test","choices":[{"index":0,"delta":{"content":" through authgate"},"finish_reason":"stop"}]}"#,
    "\n\n",
    "data: [DONE]\n\n",
);

/// The client side of each SDK: prints the streamed text, or `STATUS <code> <error code>` when
/// the SDK raises its API error.
const CLIENT: &str = r#"
import sys
kind, base, key = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    if kind == "anthropic":
        import anthropic
        client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=10)
        with client.messages.stream(model="claude-test", max_tokens=16,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            print("".join(stream.text_stream))
    else:
        import openai
        if kind == "openai":
            client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=10)
        else:
            client = openai.AzureOpenAI(azure_endpoint=base, api_key=key, api_version="2024-06-01",
                                        max_retries=0, timeout=10)
        stream = client.chat.completions.create(model="gpt-test", stream=True,
                                                messages=[{"role": "user", "content": "hi"}])
        print("".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))
except Exception as error:
    status = getattr(error, "status_code", None)
    body = getattr(error, "body", None)
    # One SDK keeps the whole JSON body, the other its "error" member.
    inner = body.get("error", body) if isinstance(body, dict) else {}
    code = inner.get("code") if isinstance(inner, dict) else None
    if status is None:
        raise
    print("STATUS", status, code)
"#;

/// Runs the SDK client; `None` when the SDKs are missing and skipping was asked for.
async fn sdk(kind: &str, base: &str, key: &str) -> Option<String> {
    let probe = tokio::process::Command::new("python3")
        .args(["-c", "import anthropic, openai"])
        .output()
        .await;
    if !probe.is_ok_and(|output| output.status.success()) {
        if std::env::var("AUTHGATE_SKIP_SDKS").is_ok_and(|value| value == "1") {
            eprintln!(
                "!!!!! SKIPPED: the anthropic and openai Python packages are missing and \
                 AUTHGATE_SKIP_SDKS=1 !!!!!"
            );
            return None;
        }
        panic!(
            "the anthropic and openai Python packages are missing: `python3 -m pip install \
             anthropic openai` (scripts/test.sh does), or AUTHGATE_SKIP_SDKS=1"
        );
    }
    let run = tokio::process::Command::new("python3")
        .args(["-c", CLIENT, kind, base, key])
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("ANTHROPIC_BASE_URL")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the SDK client did not finish within 60 s")
        .unwrap();
    assert!(
        output.status.success(),
        "{kind}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn stream_response(body: &'static str) -> Response<TestBody> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(full_body(body))
        .unwrap()
}

/// A provider-shaped upstream: Anthropic's messages, OpenAI's and Azure's chat completions.
async fn provider() -> Upstream {
    Upstream::with_handler(|request| async move {
        if request.uri.path() == "/v1/messages" {
            stream_response(ANTHROPIC_STREAM)
        } else {
            stream_response(OPENAI_STREAM)
        }
    })
    .await
}

async fn gateway(upstream: &Upstream, key: &str) -> TestGateway {
    let config = format!(
        r#"
[log]
access_log = false
[api_keys]
file = "keys.toml"
headers = ["authorization", "x-api-key", "api-key"]

[[routes]]
name = "anthropic-and-openai"
match = {{ path_prefix = "/v1/" }}
upstream = "{upstream}"
auth = ["api_key"]
scopes = ["inference:write"]

[[routes]]
name = "azure-openai"
match = {{ path_prefix = "/openai/deployments/" }}
upstream = "{upstream}"
auth = ["api_key"]
scopes = ["inference:write"]
"#,
        upstream = upstream.url()
    );
    let keys = key_record(
        key,
        "key_id = \"sdk-key\"\ntenant_id = \"acme\"\nscopes = [\"inference:write\"]",
    );
    TestGateway::start_with_files(&config, &[("keys.toml", keys.as_bytes())]).await
}

#[tokio::test]
async fn each_sdk_streams_with_its_own_key_header_and_the_key_stays_at_the_gateway() {
    let upstream = provider().await;
    let key = authgate::keys::generate_key("sgk_").unwrap();
    let gw = gateway(&upstream, &key).await;
    let base = gw.url("");
    // (SDK, the header it sends the key in, the path the upstream sees)
    for (kind, header, path) in [
        ("anthropic", "x-api-key", "/v1/messages"),
        ("openai", "authorization", "/v1/chat/completions"),
        (
            "azure",
            "api-key",
            "/openai/deployments/gpt-test/chat/completions",
        ),
    ] {
        let Some(text) = sdk(kind, &base, &key).await else {
            return;
        };
        assert_eq!(text, "Hello through authgate", "{kind}");
        let seen = upstream.last();
        assert_eq!(seen.uri.path(), path, "{kind}");
        assert_eq!(seen.method, http::Method::POST, "{kind}");
        for credential in ["x-api-key", "api-key", "authorization"] {
            assert!(
                seen.headers.get(credential).is_none(),
                "{kind}: {credential} reached the upstream"
            );
        }
        let everything = format!("{:?}{:?}", seen.headers, seen.body);
        assert!(
            !everything.contains(&key),
            "{kind}: the key reached the upstream"
        );
        assert_eq!(seen.header("x-auth-key-id").as_deref(), Some("sdk-key"));
        assert_eq!(seen.header("x-auth-tenant-id").as_deref(), Some("acme"));
        assert!(
            seen.header("x-request-id").is_some(),
            "{kind}: no request id"
        );
        // The SDK's own headers pass through (the key's header is the only one taken out).
        let sdk_header = if kind == "anthropic" {
            "anthropic-version"
        } else {
            "x-stainless-lang"
        };
        assert!(seen.headers.get(sdk_header).is_some(), "{kind}: {header}");
    }
    assert_eq!(upstream.recorded().len(), 3);
}

#[tokio::test]
async fn a_wrong_key_is_the_sdks_authentication_error_and_nothing_is_forwarded() {
    let upstream = provider().await;
    let key = authgate::keys::generate_key("sgk_").unwrap();
    let gw = gateway(&upstream, &key).await;
    let base = gw.url("");
    let wrong = authgate::keys::generate_key("sgk_").unwrap();
    for kind in ["anthropic", "openai", "azure"] {
        let Some(text) = sdk(kind, &base, &wrong).await else {
            return;
        };
        assert_eq!(text, "STATUS 401 AUTH_INVALID_KEY", "{kind}");
    }
    assert!(upstream.recorded().is_empty());
}
