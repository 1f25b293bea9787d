//! What goes over the connection: keep-alive and pipelining, `Connection: close`, HTTP/1.0,
//! `Expect: 100-continue`, bodies read or left unread (lingering close), the upgrade
//! hand-off, the drain, refused heads and response framing.

use super::*;

#[tokio::test(start_paused = true)]
async fn pipelined_requests_in_one_write_get_their_responses_in_order_and_the_connection_stays() {
    let mut client = Client::with_timeouts().await;
    client
        .send(format!(
            "{}{}{}",
            get("/first"),
            get("/stream"),
            get("/401")
        ))
        .await;
    let expected = [
        ok_bytes("hello", ""),
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
            .to_owned(),
        error_bytes(&GatewayError::AuthMissing, REQUEST_ID, ""),
    ]
    .concat();
    assert_eq!(client.output().await, expected);
    assert_eq!(
        client.seen(),
        ["GET /first", "GET /stream", "GET /401"],
        "in order"
    );
    // Kept alive: a later request on the same connection is answered too.
    client.send(get("/again")).await;
    assert_eq!(client.output().await, ok_bytes("hello", ""));
    client.assert_quiet("kept alive").await;
}

#[tokio::test(start_paused = true)]
async fn connection_close_is_answered_with_close_and_later_requests_are_not_read() {
    let mut client = Client::with_timeouts().await;
    let last = "GET /last HTTP/1.1\r\nHost: h1.test\r\nConnection: close\r\n\r\n";
    client.send(format!("{last}{}", get("/never"))).await;
    assert_eq!(
        client.output().await,
        ok_bytes("hello", "connection: close\r\n")
    );
    assert!(client.closed);
    assert_eq!(client.seen(), ["GET /last"]);
}

#[tokio::test(start_paused = true)]
async fn http10_keeps_the_connection_only_when_asked_and_says_so() {
    let mut client = Client::with_timeouts().await;
    client.send("GET /a HTTP/1.0\r\n\r\n").await;
    assert_eq!(
        client.output().await,
        ok_bytes("hello", "connection: close\r\n")
    );
    assert!(client.closed, "HTTP/1.0 without keep-alive");

    let mut client = Client::with_timeouts().await;
    let keep = "GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    for round in 0..2 {
        client.send(keep).await;
        let expected = ok_bytes("hello", "connection: keep-alive\r\n");
        assert_eq!(client.output().await, expected, "round {round}");
    }
    // An answer authgate gives itself keeps it too.
    client
        .send("GET /401 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let expected = error_bytes(
        &GatewayError::AuthMissing,
        REQUEST_ID,
        "connection: keep-alive\r\n",
    );
    assert_eq!(client.output().await, expected);
    client.assert_quiet("HTTP/1.0 keep-alive").await;
    // The last request without keep-alive ends it.
    client.send("GET /c HTTP/1.0\r\n\r\n").await;
    assert_eq!(
        client.output().await,
        ok_bytes("hello", "connection: close\r\n")
    );
    assert!(client.closed);
}

// =============================================================================================
// Request bodies: Expect: 100-continue, bodies left unread
// =============================================================================================

#[tokio::test(start_paused = true)]
async fn continue_is_written_when_the_handler_reads_the_body_and_not_before() {
    let mut client = Client::with_timeouts().await;
    client
        .send("POST /echo HTTP/1.1\r\nHost: h1.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await;
    // The body has not been sent: all that may come is the interim response.
    assert_eq!(client.output().await, "HTTP/1.1 100 Continue\r\n\r\n");
    client.send("hello").await;
    assert_eq!(client.output().await, ok_bytes("hello", ""));
    // Still usable, and no second interim response.
    client.send(get("/next")).await;
    assert_eq!(client.output().await, ok_bytes("hello", ""));
    assert!(!client.closed);
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_never_makes_the_client_send_its_body() {
    let mut client = Client::with_timeouts().await;
    client
        .send("POST /401 HTTP/1.1\r\nHost: h1.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await;
    // No `100 Continue`; the body that may still come closes the connection.
    let expected = error_bytes(
        &GatewayError::AuthMissing,
        REQUEST_ID,
        "connection: close\r\n",
    );
    assert_eq!(client.output().await, expected);
    // The write side is shut; the read side lingers for a body that may still come.
    tokio::time::advance(LINGER_TIME).await;
    settle().await;
    assert!(client.task.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_body_read_to_its_end_keeps_the_connection_for_the_next_request() {
    let mut client = Client::with_timeouts().await;
    let chunked = "POST /echo HTTP/1.1\r\nHost: h1.test\r\nTransfer-Encoding: chunked\r\n\r\n\
                   3\r\nabc\r\n0\r\n\r\n";
    let sized = "POST /echo HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 2\r\n\r\nxy";
    client.send(format!("{chunked}{sized}{}", get("/ok"))).await;
    let expected = [
        ok_bytes("abc", ""),
        ok_bytes("xy", ""),
        ok_bytes("hello", ""),
    ]
    .concat();
    assert_eq!(client.output().await, expected);
    assert!(!client.closed);
}

#[tokio::test(start_paused = true)]
async fn an_unread_body_closes_after_the_response_and_the_lingering_drain_is_bounded_in_time() {
    let mut client = Client::with_timeouts().await;
    // 1000 of the 100000 announced bytes; the rest is held back.
    let head = "POST /ignore HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 100000\r\n\r\n";
    client.send(format!("{head}{}", "p".repeat(1000))).await;
    assert_eq!(
        client.output().await,
        ok_bytes("ignored", "connection: close\r\n")
    );
    assert!(client.closed, "the write side is shut after the response");
    // What the client still sends is read and discarded (no reset) for LINGER_TIME.
    client.send("p".repeat(1000)).await;
    tokio::time::advance(LINGER_TIME - MS).await;
    settle().await;
    assert!(!client.task.is_finished(), "still draining");
    tokio::time::advance(MS).await;
    settle().await;
    assert!(client.task.is_finished(), "lingered past LINGER_TIME");
    assert_eq!(client.seen(), ["POST /ignore"]);
}

#[tokio::test(start_paused = true)]
async fn the_lingering_drain_is_bounded_in_bytes() {
    let mut client = Client::with_timeouts().await;
    let head = format!(
        "POST /ignore HTTP/1.1\r\nHost: h1.test\r\nContent-Length: {}\r\n\r\n",
        LINGER_BYTES * 4
    );
    client.send(head).await;
    assert_eq!(
        client.output().await,
        ok_bytes("ignored", "connection: close\r\n")
    );
    // No time passes: past LINGER_BYTES the connection stops reading and ends.
    let piece = vec![b'p'; 64 * 1024];
    for _ in 0..(LINGER_BYTES / piece.len() + 1) {
        client.send(&piece).await;
    }
    settle().await;
    assert!(
        client.task.is_finished(),
        "still draining past LINGER_BYTES"
    );
}

// =============================================================================================
// Upgrade, drain, refused heads, response framing
// =============================================================================================

#[tokio::test(start_paused = true)]
async fn an_upgrade_hands_over_the_connection_with_the_bytes_already_read() {
    let mut client = Client::with_timeouts().await;
    let head = "GET /upgrade HTTP/1.1\r\nHost: h1.test\r\nConnection: upgrade\r\n\
                Upgrade: websocket\r\n\r\n";
    // Bytes for the upgraded protocol in the same write as the head.
    client.send(format!("{head}early")).await;
    assert_eq!(
        client.output().await,
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    );
    let upgraded = client.script.upgraded.lock().unwrap().take();
    let mut upgraded = upgraded.unwrap().await.unwrap().unwrap();
    client.send("late").await;
    let mut received = [0; 9];
    upgraded.read_exact(&mut received).await.unwrap();
    assert_eq!(&received, b"earlylate");
    upgraded.write_all(b"from the tunnel").await.unwrap();
    upgraded.flush().await.unwrap();
    assert_eq!(client.output().await, "from the tunnel");
    assert!(!client.closed);
}

#[tokio::test(start_paused = true)]
async fn the_drain_closes_an_idle_connection_at_once() {
    let mut client = Client::with_timeouts().await;
    for path in ["/one", "/two"] {
        client.send(get(path)).await;
        assert_eq!(client.output().await, ok_bytes("hello", ""));
    }
    client.shut_down();
    client.assert_closed_silently("idle during the drain").await;
}

/// A long pipelined burst, already read when the loop starts, spends the connection task's
/// cooperative budget before its first wait for a head; the shutdown signal must still reach
/// that wait (it was missed once: the connection stayed open for the whole grace period).
/// Where the budget runs out depends on the burst's length, so a range of them is tried.
#[tokio::test(start_paused = true)]
async fn the_drain_closes_a_connection_idle_after_a_pipelined_burst() {
    for length in 1..=200 {
        let burst: String = (0..length).map(|i| get(&format!("/burst/{i}"))).collect();
        let limits = settings(HEADER_TIMEOUT, IDLE_TIMEOUT);
        let mut client = Client::start_with(limits, &burst).await;
        let expected = ok_bytes("hello", "").repeat(length);
        assert_eq!(client.output().await, expected, "burst of {length}");
        client.shut_down();
        client
            .assert_closed_silently(&format!("idle after a burst of {length}"))
            .await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_drain_lets_a_request_in_flight_finish_with_close() {
    let mut client = Client::with_timeouts().await;
    client.send(get("/wait")).await;
    client.assert_quiet("in flight").await;
    client.shut_down();
    client.assert_quiet("still in flight").await;
    client.script.release.notify_one();
    assert_eq!(
        client.output().await,
        ok_bytes("waited", "connection: close\r\n")
    );
    assert!(client.closed);
}

#[tokio::test(start_paused = true)]
async fn unusable_heads_are_refused_with_json_and_the_connection_closes() {
    let mut client = Client::with_timeouts().await;
    client.send("GARBAGE\r\n\r\n").await;
    let response = client.output().await;
    let error = GatewayError::BadRequest("malformed request head");
    let expected = error_bytes(&error, id_of(&response), "connection: close\r\n");
    assert_eq!(response, expected);
    assert!(client.closed);

    let limits = RequestLimits {
        max_head_bytes: 1024,
        ..RequestLimits::default()
    };
    let mut client = Client::start(Settings {
        limits,
        ..settings(HEADER_TIMEOUT, IDLE_TIMEOUT)
    })
    .await;
    let pad = "a".repeat(2000);
    client
        .send(format!(
            "GET / HTTP/1.1\r\nHost: h1.test\r\nx-pad: {pad}\r\n\r\n"
        ))
        .await;
    let response = client.output().await;
    let error = GatewayError::HeadersTooLarge;
    let expected = error_bytes(&error, id_of(&response), "connection: close\r\n");
    assert_eq!(response, expected);
    assert!(client.closed);
    assert!(client.seen().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_204_carries_no_content_length_and_no_body() {
    let mut client = Client::with_timeouts().await;
    client.send(format!("{}{}", get("/204"), get("/ok"))).await;
    let expected = format!("HTTP/1.1 204 No Content\r\n\r\n{}", ok_bytes("hello", ""));
    assert_eq!(client.output().await, expected);
}

#[tokio::test(start_paused = true)]
async fn an_allowed_check_is_its_identity_fields_then_its_own_and_keeps_the_connection() {
    let mut client = Client::with_timeouts().await;
    let head = "HEAD /allowed HTTP/1.1\r\nHost: h1.test\r\n\r\n";
    client
        .send(format!("{}{head}{}", get("/allowed"), get("/ok")))
        .await;
    let answer = format!(
        "HTTP/1.1 200 OK\r\nx-auth-method: api_key\r\nx-auth-user-id: \r\nx-request-id: {REQUEST_ID}\r\ncontent-length: 0\r\n\r\n"
    );
    // HEAD: the same head (no body either way).
    let expected = format!("{answer}{answer}{}", ok_bytes("hello", ""));
    assert_eq!(client.output().await, expected);
    client.assert_quiet("kept alive").await;
}

/// A stream waiting for its next frame gives its buffers back; the bytes around the wait, and
/// a request pipelined behind the stream (still in the read buffer), come through intact.
#[tokio::test(start_paused = true)]
async fn a_waiting_stream_continues_intact_with_or_without_a_pipelined_request() {
    for pipelined in [false, true] {
        let mut client = Client::with_timeouts().await;
        let next = if pipelined { get("/ok") } else { String::new() };
        client.send(format!("{}{next}", get("/slow-stream"))).await;
        assert_eq!(
            client.output().await,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n",
            "pipelined {pipelined}: the first frame goes out before the wait"
        );
        client.script.stream_gate.notify_one();
        let rest = "3\r\ntwo\r\n0\r\n\r\n";
        if pipelined {
            assert_eq!(
                client.output().await,
                format!("{rest}{}", ok_bytes("hello", ""))
            );
        } else {
            assert_eq!(client.output().await, rest);
            client.send(get("/ok")).await;
            assert_eq!(client.output().await, ok_bytes("hello", ""));
        }
        client.assert_quiet("kept alive").await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_head_response_has_the_length_and_no_body_and_the_connection_stays() {
    let mut client = Client::with_timeouts().await;
    let head = "HEAD /ok HTTP/1.1\r\nHost: h1.test\r\n\r\n";
    client.send(format!("{head}{}", get("/ok"))).await;
    let expected = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{}",
        ok_bytes("hello", "")
    );
    assert_eq!(client.output().await, expected);
    client.assert_quiet("kept alive").await;
}
